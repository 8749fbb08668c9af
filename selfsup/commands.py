"""The ``frontalize`` and ``deocclude`` commands (CFR-GAN inference, seed paper ``cfr_gan_swap_rr.txt``
§3.3 "testing stage" and Fig. 3).

``python cli.py frontalize IMG -o OUT.png`` / ``python cli.py deocclude IMG -o OUT.png``:

1. detect the face and its 68 landmarks, align the photo to the S² crop by the five-point
   similarity (:mod:`face3d.align`), fit the 3DMM to the landmarks in the aligned camera and
   refine light and albedo photometrically (the reconstruct pipeline's stages:
   :class:`face3d.pipeline.Reconstructor`'s detector and fitter, :func:`face3d.rotate_render.fit_appearance`);
2. render R_p and R_e (:func:`face3d.rotate_render.render_views`) at the target pose — frontal
   (yaw = pitch = roll = 0, centred) for ``frontalize``, the input pose for ``deocclude`` — and the
   coarse occlusion mask M of eq. 5 (:func:`selfsup.swap_rr.occlusion_mask`) at the input pose,
   carried to the target pose like R_p;
3. repair: with generator weights (``--weights``), :func:`face3d.generator.load_generator` and
   one forward pass (image (+ renders) in → image + mask out, ``--generator`` names or checks
   the kind). Without weights the **classical path** runs: M and the self-occluded holes are
   filled from R_e by seamless (Poisson) cloning (:func:`face3d.filters.poisson_blend`) and the
   face is composited over the crop. The command prints which path ran.

``deocclude`` writes the photo with the repaired face pasted back (feathered) unless ``--crop``;
``frontalize`` writes the frontal aligned crop. ``--json`` records the pose before / after, the
mask area and the path; ``--overlay`` writes input | R_p | R_e | M | output.

The inference M is more conservative than Swap-R&R's training masks (``--mask-threshold``, default
1 standard deviation of the eq.-5 score instead of the paper's 0; eyes and mouth excluded; an
opening of 1 px): on the classical path a false positive replaces real skin with the model's flat
albedo.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.errors import OutputError, UsageError

__all__ = ["add_arguments", "run", "AlignedFit", "fit_aligned", "RepairResult", "repair", "COMMANDS"]

COMMANDS = ("frontalize", "deocclude")


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Arguments of ``frontalize`` / ``deocclude`` (called by :func:`face3d.cli.build_parser`)."""
    parser.add_argument("input", metavar="IMG", help="photo with a face")
    parser.add_argument("-o", "--output", required=True, help="output image (.png / .jpg)")
    parser.add_argument("--generator", help="registered generator name (default: the one the --weights file holds)")
    parser.add_argument("--weights", help="generator weights (file or training run folder); none = classical path")
    parser.add_argument("--json", help="write pose before/after, mask area and the path taken to this JSON file")
    parser.add_argument("--overlay", help="write input | R_p | R_e | M | output as one PNG")
    parser.add_argument("--model", help="morphable model: auto (default), ict, sfm, bfm, anny, or a .npz path")
    parser.add_argument("--landmarks", choices=["auto", "cascade", "dlib", "dlib-cnn", "fan", "fan3d", "file"],
                        help="landmark detector (default auto)")
    parser.add_argument("--device", help="torch device (default cpu)")
    parser.add_argument("--size", type=int, default=224, help="side of the aligned crop in pixels (default 224)")
    parser.add_argument("--mask-threshold", type=float, default=1.0,
                        help="eq.-5 score (in standard deviations) above which a pixel is occluded (default 1)")
    parser.add_argument("--iterations", type=int, default=30, help="photometric refinement steps (default 30)")
    if name == "deocclude":
        parser.add_argument("--crop", action="store_true", help="write the aligned crop instead of the full photo")


# -- fitting -----------------------------------------------------------------------------------------
@dataclass
class AlignedFit:
    """A face fitted in its aligned crop (batch 1).

    * ``crop`` (1, 3, S, S) sRGB; ``transform`` (1, 2, 3) photo → crop similarity;
    * ``landmarks`` (1, 68, 2) detected landmarks in crop pixels;
    * ``params``: :class:`~face3d.coefficients.FaceParams` in the aligned camera, light set;
    * ``albedo`` (1, N, 3) linear per-vertex albedo; ``fit_error_px`` mean landmark residual.
    """

    crop: Tensor
    transform: Tensor
    landmarks: Tensor
    params: Any
    albedo: Tensor
    fit_error_px: float

    def pose_degrees(self) -> dict[str, float]:
        return _pose(self.params)


def _pose(params) -> dict[str, float]:
    yaw, pitch, roll = (float(a) * 180.0 / math.pi for a in params.angles[0])
    return {"yaw": round(yaw, 3), "pitch": round(pitch, 3), "roll": round(roll, 3)}


def fit_aligned(image, reconstructor, size: int = 224, iterations: int = 30) -> AlignedFit:
    """Detect the largest face of ``image`` (:class:`face3d.imageio.LoadedImage`), align it to a
    ``size``² crop and fit it with ``reconstructor``'s detector, landmark fitter and the photometric
    refinement. Raises :class:`face3d.errors.NoFaceError` when there is no face."""
    from face3d.align import five_point_template, five_points, similarity_to_template, transform_points, \
        warp_to_aligned
    from face3d.coefficients import FaceParams, aligned_camera
    from face3d.fitting import LandmarkFitter
    from face3d.imageio import image_to_tensor
    from face3d.photometric import PhotometricSettings
    from face3d.rotate_render import fit_appearance

    faces, _ = reconstructor.detect(image)
    face = faces[0]
    model = reconstructor.model
    dev, dt = model.device, model.dtype
    # load_image was called without max_side: landmarks are in the pixels of image.rgb
    lm = torch.as_tensor(face.landmarks, dtype=torch.float64)[None]
    A = similarity_to_template(five_points(lm), five_point_template(size))
    photo = image_to_tensor(image.rgb).to(dev)
    crop = warp_to_aligned(photo, A.to(photo.dtype), size)
    lm_crop = transform_points(A, lm).to(dev, dt)
    fitter = LandmarkFitter(model, reconstructor.config.fit, device=dev)
    fit = fitter.fit(lm_crop, aligned_camera(1, size, dt, dev))
    params = FaceParams.from_pose(fit.alpha.to(dt), fit.beta.to(dt), fit.R.to(dt), fit.t.to(dt),
                                  delta=torch.zeros(1, model.n_albedo, dtype=dt, device=dev))
    settings = replace(reconstructor.config.photometric, iterations=iterations) \
        if isinstance(reconstructor.config.photometric, PhotometricSettings) else None
    params, albedo = fit_appearance(crop.to(dt), params, model, lm_crop, settings)
    return AlignedFit(crop=crop.to(dt), transform=A, landmarks=lm_crop, params=params, albedo=albedo,
                      fit_error_px=float(fit.mean_error()[0]))


# -- repair ----------------------------------------------------------------------------------------
@dataclass
class RepairResult:
    """What a command computed (all batch 1, S² crops at the target pose).

    * ``output`` (1, 3, S, S): the repaired crop; ``out_mask`` (1, 1, S, S) what was replaced.
    * ``render_p``, ``render_e``, ``face_mask``, ``holes``: the renders at the target pose.
    * ``mask`` (1, 1, S, S): M carried to the target pose; ``mask_input``: M at the input pose.
    * ``target``: the target pose's FaceParams; ``path``: "classical" or "generator:<name>".
    """

    output: Tensor
    out_mask: Tensor
    render_p: Tensor
    render_e: Tensor
    face_mask: Tensor
    holes: Tensor
    mask: Tensor
    mask_input: Tensor
    face_mask_input: Tensor
    target: Any
    path: str


def _frontal_target(params):
    from face3d.rotate_render import with_pose

    t = params.translation.clone()
    t[:, :2] = 0.0  # centred as the aligned template's mean face
    return with_pose(params, 0.0, 0.0, 0.0, translation=t)


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def repair(fit: AlignedFit, model, frontal: bool, generator=None, mask_threshold: float = 1.0) -> RepairResult:
    """Render, mask and repair one fitted face (module doc). ``generator``: a loaded
    :class:`face3d.generator.Generator` or None for the classical path."""
    from face3d.filters import blur_masked, dilate, poisson_blend
    from face3d.rotate_render import closed_mesh, project_photo, render_views
    from selfsup.swap_rr import SwapRRConfig, occlusion_mask

    size = fit.crop.shape[-1]
    k = size / 224.0
    mesh = closed_mesh(model)
    src = render_views(fit.crop, fit.params, model, albedo=fit.albedo, mesh=mesh)
    # inference is conservative (module doc): eyes and mouth kept (the model has neither eyeballs
    # nor teeth), specks and thin lines opened away
    cfg = SwapRRConfig(image_size=size, threshold=mask_threshold, exclude=("eyes", "mouth"), opening_px=1.0,
                       dilate_px=2.0, blur_sigma=1.0)
    occ = occlusion_mask(src.render_p, src.render_e, src.face_mask, src.valid, fit.landmarks, cfg)
    target = _frontal_target(fit.params) if frontal else fit.params
    if frontal:
        views = render_views(fit.crop, fit.params, model, target=target, albedo=fit.albedo, mesh=mesh)
        mask = project_photo(occ.mask, fit.params, model, target, mesh=mesh).image
    else:
        views, mask = src, occ.mask
    holes = views.holes
    if generator is not None:
        from face3d.generator import GeneratorInput

        s = generator.image_size
        dev = next(iter(generator.parameters()), torch.empty(0)).device
        base = views.render_p if frontal else fit.crop
        inp = GeneratorInput(image=_resize(base, s), render_e=_resize(views.render_e, s),
                             render_p=_resize(views.render_p, s), face_mask=_resize(views.face_mask, s),
                             mask=_resize(torch.maximum(mask, holes), s)).to(dev, torch.float32)
        generator.check_input(inp)
        with torch.no_grad():
            out = generator(inp)
        output = _resize(out.image.to(fit.crop), size).clamp(0, 1)
        out_mask = _resize(out.mask.to(fit.crop), size).clamp(0, 1)
        path = f"generator:{generator.name}"
    else:
        face = (views.face_mask > 0.5).to(fit.crop)
        fill = ((torch.maximum(mask, holes) > 0.5).to(face)) * face
        blended = poisson_blend(views.render_p, views.render_e, fill, region=face)
        face_img = blended * face
        if frontal:
            # background: the input crop away from the input face; where the input face was, a wide
            # normalised blur of what surrounds it (the frontal face covers most of that area)
            known = 1.0 - dilate((src.face_mask > 0.5).to(face), max(1, int(round(4 * k))))
            background = blur_masked(fit.crop, known, 12.0 * k)
            background = known * fit.crop + (1.0 - known) * background
        else:
            background = fit.crop
        soft = blur_masked(face, torch.ones_like(face), 1.0 * k).clamp(0, 1) * face
        output = (soft * face_img + (1.0 - soft) * background).clamp(0, 1)
        out_mask = fill
        path = "classical"
    return RepairResult(output=output, out_mask=out_mask, render_p=views.render_p, render_e=views.render_e,
                        face_mask=views.face_mask, holes=holes, mask=mask, mask_input=occ.binary,
                        face_mask_input=src.face_mask, target=views.params, path=path)


def _paste_back(photo: Tensor, crop: Tensor, weight: Tensor, transform: Tensor) -> Tensor:
    """Paste ``crop`` (1, C, S, S) into ``photo`` (1, C, H, W) through the photo → crop similarity,
    blended by ``weight`` (1, 1, S, S) carried the same way."""
    h, w = photo.shape[-2:]
    s = crop.shape[-1]
    A = transform.to(torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    from face3d.align import transform_points

    c = transform_points(A, pts).reshape(1, h, w, 2)
    grid = torch.stack([(2 * c[..., 0] + 1) / s - 1, (2 * c[..., 1] + 1) / s - 1], -1).to(photo)
    stack = torch.cat([crop, weight], 1).to(photo)
    warped = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = warped[:, -1:].clamp(0, 1)
    return warped[:, :-1] * a + photo * (1 - a)


def _overlay(fit: AlignedFit, res: RepairResult) -> np.ndarray:
    panels = [fit.crop, res.render_p, res.render_e, res.mask.expand(-1, 3, -1, -1), res.output]
    row = torch.cat([p[0].detach().float().cpu().clamp(0, 1) for p in panels], 2)
    return (row.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _check_output(path: Path, what: str) -> None:
    if path.exists() and path.is_dir():
        raise OutputError(f"{path}: is a folder, not an {what} file")
    if not path.parent.exists():
        raise OutputError(f"{path.parent}: no such folder for the {what}")
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff") and what != "JSON":
        raise UsageError(f"{path}: unknown image format (use .png or .jpg)")


def run(name: str, args: argparse.Namespace) -> int:
    """Run ``frontalize`` / ``deocclude``; returns the exit code (errors raise face3d.errors types)."""
    from face3d.imageio import load_image, save_image_atomic
    from face3d.io_utils import atomic_write
    from face3d.pipeline import Reconstructor, ReconstructConfig

    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}")
    if args.size < 64:
        raise UsageError(f"--size must be at least 64 pixels, got {args.size}")
    if args.generator and not args.weights:
        raise UsageError(f"--generator {args.generator} needs its trained weights: give --weights PATH "
                         "(without weights the classical path runs)")
    out = Path(args.output)
    _check_output(out, "output image")
    if args.overlay:
        _check_output(Path(args.overlay), "overlay image")
    if args.json:
        _check_output(Path(args.json), "JSON")
    flat: dict[str, Any] = {}
    for key in ("model", "landmarks", "device"):
        if getattr(args, key, None) is not None:
            flat[key] = getattr(args, key)
    cfg = replace(ReconstructConfig(), **flat)
    recon = Reconstructor(cfg)
    generator = None
    if args.weights:
        from face3d.generator import load_generator

        generator = load_generator(args.weights, device=cfg.device, name=args.generator)
    image = load_image(args.input)
    fit = fit_aligned(image, recon, size=args.size, iterations=args.iterations)
    model = recon.model
    res = repair(fit, model, frontal=name == "frontalize", generator=generator, mask_threshold=args.mask_threshold)

    crop_only = name == "frontalize" or getattr(args, "crop", False)
    if crop_only:
        result = res.output
    else:
        from face3d.filters import blur_masked, dilate
        from face3d.imageio import image_to_tensor

        k = args.size / 224.0
        weight = dilate(res.out_mask if res.path == "classical" else res.face_mask, max(1, int(round(2 * k))))
        weight = blur_masked(weight, torch.ones_like(weight), 2.0 * k).clamp(0, 1)
        photo = image_to_tensor(image.rgb).to(res.output)
        result = _paste_back(photo, res.output, weight, fit.transform)
    try:
        save_image_atomic(out, result[0].detach().float().cpu().clamp(0, 1))
        if args.overlay:
            save_image_atomic(Path(args.overlay), _overlay(fit, res))
        if args.json:
            face_px = float(res.face_mask_input.sum())
            doc = {
                "image": str(args.input), "command": name, "output": str(out),
                "path": "generator" if generator is not None else "classical",
                "generator": generator.name if generator is not None else None,
                "model": model.name, "crop_size": args.size,
                "pose_before": fit.pose_degrees(), "pose_after": _pose(res.target),
                "fit_error_px": round(fit.fit_error_px, 3),
                "mask_area": round(float(res.mask_input.sum()) / max(face_px, 1.0), 4),
                "mask_pixels": int(res.mask_input.sum()),
                "hole_fraction": round(float(res.holes.sum()) / max(float(res.face_mask.sum()), 1.0), 4),
                "replaced_fraction": round(float(res.out_mask.sum()) / max(float(res.face_mask.sum()), 1.0), 4),
            }
            with atomic_write(Path(args.json)) as tmp:
                Path(tmp).write_text(json.dumps(doc, indent=1))
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    how = (f"generator {generator.name} ({args.weights})" if generator is not None
           else "classical path (no generator weights: M and self-occluded holes filled from R_e, Poisson blending)")
    print(f"{name}: {how}; wrote {out}")
    return 0
