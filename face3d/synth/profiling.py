"""Face profiling: real photos turned to new yaws, with exact labels (Zhu et al., CVPR 2016).

300W-LP was made this way ("3D Dense Face Alignment", §5 "face profiling"): fit a 3DMM to a
frontal or near-frontal photo, rotate the fitted face with the photo's pixels on it to new yaws
up to ±90°, and use the rotated fit's parameters as the view's exact label. A regressor trained
on such views sees real skin, real lighting and real backgrounds at every pose, which the
rendered synthetic faces of :mod:`face3d.synth.faces` cannot give it.

Here, per view (everything in the aligned crop of :mod:`face3d.coefficients`, S² pixels):

1. the face turns about the centroid of its 68 landmark vertices (not the model origin), so
   the landmarks stay framed as in the source crop; a small random shift, depth and roll
   jitter keeps the framing as varied as the synthetic faces';
2. the turned face is rendered with the photo's own pixels (:func:`face3d.rotate_render.project_photo`:
   every target pixel looks its surface point up in the source view);
3. the background is the source crop with the source face (dilated) removed and filled from
   around it by push-pull interpolation, so no second face shows behind the turned one (a
   simpler stand-in for 300W-LP's 2-D anchor warp of the background; hair and ears outside the
   model stay where they were, blurred where the face used to be);
4. face pixels the source never saw (self-occlusion, grazing angles) are filled the same way,
   and so is whatever the aligned crop took from past the photo's edge (tight face chips such
   as UTKFace's): it would otherwise turn into a black cap on the forehead.

Labels: the target :class:`~face3d.coefficients.FaceParams` (identity and expression of the
fit, the new pose; albedo and light are not known: zero) and the model's 68 landmark vertices
projected (:attr:`ProfiledFaces.landmarks`; the hidden jaw where it lies in 3-D, the
AFLW2000-3D convention).

:func:`build_profiled_set` turns a folder of photos (:class:`~face3d.training.data.PhotoFolderDataset`
crops and fits) into shards of views on disk; :class:`ProfiledFaceDataset` reads them back in
the regressor's item layout. Command line::

    python -m face3d.synth.profiling --data DIR [--data DIR ...] --out CACHE --size 112 --views 2
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from face3d.coefficients import ALIGNED_DISTANCE_MM, ALIGNED_SIZE, FaceParams, aligned_camera
from face3d.filters import dilate, push_pull_fill
from face3d.morphable_model import MorphableModel

__all__ = ["ProfilingConfig", "ProfiledFaces", "turn_about_landmarks", "crop_validity", "profile_faces",
           "sample_target_poses",
           "build_profiled_set", "ProfiledFaceDataset"]


@dataclass
class ProfilingConfig:
    """How the views of a source photo are drawn.

    * ``yaw_deg``: |target yaw| range, degrees; the sign follows the side the source already
      shows with probability ``same_side_prob`` (turning further that way needs less of what
      the photo never saw).
    * ``pitch_jitter_deg``, ``roll_deg``: the target pitch is the source's ± the jitter; the
      target roll is drawn from the range.
    * ``shift_px`` (for S = 224, scaled with S), ``depth_mm``: framing jitter of the landmark
      centroid, as :class:`~face3d.synth.faces.SyntheticFaceConfig` draws it.
    * ``max_source_yaw_deg``, ``max_fit_error_px``: sources used (near-frontal, well fitted;
      the error is in the 224-px crop's pixels, scaled with S).
    * ``dilate_px``: the source face's mask grows by this much before the background is filled.
    """

    yaw_deg: tuple[float, float] = (0.0, 90.0)
    same_side_prob: float = 0.75
    pitch_jitter_deg: float = 10.0
    roll_deg: tuple[float, float] = (-15.0, 15.0)
    shift_px: float = 8.0
    depth_mm: tuple[float, float] = (-60.0, 60.0)
    max_source_yaw_deg: float = 40.0
    max_fit_error_px: float = 6.0
    dilate_px: int = 3

    def __post_init__(self) -> None:
        lo, hi = self.yaw_deg
        if not 0.0 <= lo <= hi <= 90.0:
            raise ValueError(f"yaw_deg must satisfy 0 <= low <= high <= 90, got {self.yaw_deg}")
        if not 0.0 <= self.same_side_prob <= 1.0:
            raise ValueError(f"same_side_prob must be within 0..1, got {self.same_side_prob}")


@dataclass
class ProfiledFaces:
    """B turned views: ``image`` (B, 3, S, S) sRGB [0, 1]; ``params`` their labels;
    ``landmarks`` (B, 68, 2) crop px; ``face_mask`` (B, 1, S, S) where the turned model covers;
    ``filled`` (B, 1, S, S) face pixels the source never saw (filled by interpolation)."""

    image: Tensor
    params: FaceParams
    landmarks: Tensor
    face_mask: Tensor
    filled: Tensor


def turn_about_landmarks(params: FaceParams, model: MorphableModel, yaw_deg: Tensor, pitch_deg: Tensor,
                         roll_deg: Tensor, shift_mm: Optional[Tensor] = None) -> FaceParams:
    """``params`` at the absolute pose (yaw, pitch, roll) (B,) degrees, turned about the centroid
    p of the face's 68 landmark vertices: ``R' p + t' = R p + t (+ shift_mm)``, so the landmarks'
    centroid stays where the camera saw it."""
    dev, dt = params.alpha.device, params.alpha.dtype
    lm3 = model.landmarks(model.shape(params.alpha.to(model.device, model.dtype),
                                      params.beta.to(model.device, model.dtype))).to(dev, dt)
    pivot = lm3.mean(1)                                                               # (B, 3) model frame
    angles = torch.stack([yaw_deg, pitch_deg, roll_deg], -1).to(dev, dt) * (math.pi / 180.0)
    target = replace(params, angles=angles)
    R, R2 = params.rotation(), target.rotation()
    t = params.camera_translation() + (R @ pivot[..., None])[..., 0] - (R2 @ pivot[..., None])[..., 0]
    if shift_mm is not None:
        t = t + shift_mm.to(t)
    return replace(target, translation=t - t.new_tensor([0.0, 0.0, ALIGNED_DISTANCE_MM]))


def crop_validity(transform: Tensor, photo_size: tuple[int, int], size: int) -> Tensor:
    """(1, 1, S, S) 1 where the crop pixel comes from inside the photo, 0 where the aligned crop
    ``transform`` (2, 3) (photo px → crop px) reaches past the photo's edge (``photo_size`` (W, H))."""
    from face3d.align import invert_similarity, transform_points

    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    p = transform_points(invert_similarity(transform.double().reshape(1, 2, 3)), grid)[0]
    w, h = photo_size
    inside = (p[:, 0] >= -0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= h - 0.5)
    return inside.reshape(1, 1, size, size).float()


@torch.no_grad()
def profile_faces(crop: Tensor, source: FaceParams, target: FaceParams, model: MorphableModel,
                  dilate_px: int = 3, mesh=None, source_valid: Optional[Tensor] = None) -> ProfiledFaces:
    """Render the photo crop(s) ``crop`` (B, 3, S, S), fitted by ``source``, at ``target``'s pose
    (module doc, steps 2-4). ``target``'s shape is taken from ``source``. ``source_valid``
    (B, 1, S, S): where ``crop`` holds photo pixels (:func:`crop_validity`; aligned crops of
    tight photos reach past their edges): the rest is filled like the unseen face, never
    carried onto the turned face as black."""
    from face3d.camera import project, transform
    from face3d.rotate_render import closed_mesh, project_photo

    mesh = mesh or closed_mesh(model)
    size = int(crop.shape[-1])
    src_view = project_photo(crop, source, model, source, mesh=mesh)
    view = project_photo(crop, source, model, target, mesh=mesh,
                         valid=None if source_valid is None else source_valid.to(crop))
    r = max(1, round(dilate_px * size / ALIGNED_SIZE))
    old_face = dilate(src_view.face_mask.to(crop), r).clamp(0, 1)
    keep = 1.0 - old_face if source_valid is None else (1.0 - old_face) * source_valid.to(crop)
    background = push_pull_fill(crop, keep)
    background = crop * keep + background * (1.0 - keep)
    face = view.face_mask.to(crop)
    known = view.valid.to(crop)
    composite = background * (1.0 - face) + view.image.to(crop) * known
    ok = (1.0 - face) + known
    filled = push_pull_fill(composite, ok.clamp(0, 1))
    image = composite * ok.clamp(0, 1) + filled * (1.0 - ok.clamp(0, 1))
    tgt = replace(target, alpha=source.alpha, beta=source.beta)
    K = aligned_camera(tgt.batch, size, model.dtype, model.device)
    p = tgt.to(model.device, model.dtype)
    lm = project(model.landmarks(transform(model.shape(p.alpha, p.beta), p.rotation(), p.camera_translation())), K)
    return ProfiledFaces(image=image.clamp(0, 1), params=tgt, landmarks=lm.to(crop), face_mask=face,
                         filled=face * (1.0 - known))


def sample_target_poses(source: FaceParams, config: ProfilingConfig, size: int, rng: np.random.Generator
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(yaw, pitch, roll) (B,) degrees and shift (B, 3) mm of B new views (config doc)."""
    B = source.batch
    src_yaw = source.angles[:, 0].detach().cpu().numpy() * 180.0 / math.pi
    mag = rng.uniform(*config.yaw_deg, size=B)
    side = np.where(np.abs(src_yaw) < 1e-6, rng.choice([-1.0, 1.0], size=B), np.sign(src_yaw))
    side = np.where(rng.random(B) < config.same_side_prob, side, -side)
    yaw = mag * side
    pitch = source.angles[:, 1].detach().cpu().numpy() * 180.0 / math.pi + \
        rng.uniform(-config.pitch_jitter_deg, config.pitch_jitter_deg, size=B)
    roll = rng.uniform(*config.roll_deg, size=B)
    # crop pixels → mm at the face's distance: a pixel spans z / f mm
    z = source.camera_translation()[:, 2].detach().cpu().numpy()
    f = float(aligned_camera(1, size).focal[0, 0])
    shift_px = config.shift_px * size / ALIGNED_SIZE
    shift = np.stack([rng.uniform(-shift_px, shift_px, B) * z / f, rng.uniform(-shift_px, shift_px, B) * z / f,
                      rng.uniform(*config.depth_mm, size=B)], -1)
    as_t = lambda a: torch.as_tensor(a, dtype=source.alpha.dtype)  # noqa: E731
    return as_t(yaw), as_t(pitch), as_t(roll), as_t(shift)


SHARD_SIZE = 256


def build_profiled_set(folders: Sequence[str], out_dir: str, model: MorphableModel, size: int = 112,
                       views: int = 2, config: Optional[ProfilingConfig] = None, seed: int = 0,
                       cache_dir: Optional[str] = None, batch_size: int = 16, progress: bool = True,
                       folder_filter: Optional[Any] = None) -> int:
    """Profile every usable face of ``folders`` ``views`` times into ``out_dir/shard_NNNN.npz``
    (``images`` (N, S, S, 3) uint8, ``params`` (N, P) float32, ``landmarks`` (N, 68, 2), ``source``
    (N,) item names). Existing shards are kept (a rerun resumes). Returns the number of views."""
    from PIL import Image
    from tqdm import tqdm

    from face3d.io_utils import atomic_write
    from face3d.model_zoo import face3d_home
    from face3d.rotate_render import closed_mesh
    from face3d.training.data import PhotoDatasetConfig, PhotoFolderDataset

    config = config or ProfilingConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else face3d_home() / "cache" / "photos"
    items: list[tuple[PhotoFolderDataset, int, str]] = []
    for folder in folders:
        # near-frontal sources: dlib HOG frames them as its 68-point predictor expects
        pcfg = PhotoDatasetConfig(size=size, model=model.name, template="model", landmarks="dlib", recursive=True)
        ds = PhotoFolderDataset(folder, cache, pcfg, model=model, progress=progress)
        if folder_filter is not None:  # before prepare(): excluded photos are never even detected
            ds.files = [f for f in ds.files if folder_filter(f)]
            if not ds.files:
                continue
        ds.prepare()
        for i, (path, _, j) in enumerate(ds.items):
            items.append((ds, i, f"{path}#{j}"))
    mesh = closed_mesh(model)
    max_err = config.max_fit_error_px * size / ALIGNED_SIZE
    total, shard = 0, []
    written = sorted(out.glob("shard_*.npz"))
    done_views = len(written) * SHARD_SIZE
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    bar = tqdm(total=len(items) * views, desc="profiling", unit="view", disable=not progress)

    def flush(force: bool = False) -> None:
        nonlocal shard
        while len(shard) >= SHARD_SIZE or (force and shard):
            part, shard = shard[:SHARD_SIZE], shard[SHARD_SIZE:]
            path = out / f"shard_{len(written):04d}.npz"
            with atomic_write(path, suffix=".npz") as tmp:
                np.savez(tmp, images=np.stack([p[0] for p in part]), params=np.stack([p[1] for p in part]),
                         landmarks=np.stack([p[2] for p in part]), source=np.array([p[3] for p in part]))
            written.append(path)

    pending: list[dict[str, Any]] = []

    def run_batch() -> None:
        nonlocal total
        crops = torch.stack([p["image"] for p in pending]).to(model.dtype)
        valid = torch.cat([p["valid"] for p in pending]).to(model.dtype)
        src = FaceParams.split(torch.stack([p["params"] for p in pending]).to(model.dtype), model)
        yaw, pitch, roll, shift = sample_target_poses(src, config, size, rng)
        tgt = turn_about_landmarks(src, model, yaw, pitch, roll, shift)
        res = profile_faces(crops, src, tgt, model, config.dilate_px, mesh=mesh, source_valid=valid)
        imgs = (res.image.permute(0, 2, 3, 1).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        prm = res.params.join().float().numpy()
        lms = res.landmarks.float().numpy()
        for k, p in enumerate(pending):
            total += 1
            if total > done_views:
                shard.append((imgs[k], prm[k], lms[k], p["name"]))
        pending.clear()
        flush()
        bar.update(len(imgs))

    for idx in order:
        ds, i, name = items[idx]
        it = ds[i]
        P = FaceParams.split(it["params"][None].to(model.dtype), model)
        if abs(float(P.angles[0, 0]) * 180 / math.pi) > config.max_source_yaw_deg or \
                float(it["fit_error"]) > max_err:
            bar.update(views)
            continue
        with Image.open(ds.items[i][0]) as im:  # the header only: where the crop has photo pixels
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF-rotated by a quarter turn on load
                w, h = h, w
        valid = crop_validity(it["transform"], (w, h), size)
        for _ in range(views):
            pending.append({"image": it["image"], "params": it["params"], "name": name, "valid": valid})
            if len(pending) >= batch_size:
                run_batch()
    if pending:
        run_batch()
    flush(force=True)
    bar.close()
    return total


class ProfiledFaceDataset(torch.utils.data.Dataset):
    """The views of :func:`build_profiled_set` in the regressor's item layout
    (:func:`face3d.regressor.train.build_regressor_dataset`): exact geometry labels, photo
    appearance (``exact`` 1, ``needs_occluder`` 1 so occluders are pasted in the step,
    ``geometry_only`` 1: albedo and light are unknown and left out of the coefficient loss)."""

    def __init__(self, folder: str, limit: Optional[int] = None) -> None:
        shards = sorted(Path(folder).glob("shard_*.npz"))
        if not shards:
            from face3d.errors import MissingInputError

            raise MissingInputError(f"{folder}: no profiled views (shard_*.npz; build them with "
                                    "python -m face3d.synth.profiling)")
        imgs, prms, lms = [], [], []
        for s in shards:
            with np.load(s, allow_pickle=False) as z:
                imgs.append(z["images"])
                prms.append(z["params"])
                lms.append(z["landmarks"])
        self.images = np.concatenate(imgs)[:limit]
        self.params = np.concatenate(prms)[:limit]
        self.landmarks = np.concatenate(lms)[:limit]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0
        return {"image": image, "input": image, "landmarks": torch.from_numpy(self.landmarks[i]).float(),
                "coefficients": torch.from_numpy(self.params[i]).float(), "exact": torch.tensor(1.0),
                "needs_occluder": torch.tensor(1.0), "geometry_only": torch.tensor(1.0)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m face3d.synth.profiling", description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True, help="folder of photos (recursive; repeatable)")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--model", default="auto")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--views", type=int, default=2, help="views per source face")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", action="append", default=[],
                   help="skip source photos whose path matches this regular expression (repeatable), "
                        "e.g. held-out people")
    args = p.parse_args(argv)
    from face3d.model_zoo import load_model

    model = load_model(args.model)
    import re

    patterns = [re.compile(e) for e in args.exclude]
    keep = (lambda path: not any(p.search(str(path)) for p in patterns)) if patterns else None
    n = build_profiled_set(args.data, args.out, model, args.size, args.views, seed=args.seed, folder_filter=keep)
    print(f"{n} views in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
