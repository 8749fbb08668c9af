"""Swap-R&R: self-supervised training pairs for joint de-occlusion and rotation (CFR-GAN §3.2).

Seed paper ``cfr_gan_swap_rr.txt`` (Ju et al., CFR-GAN), §3.2, eqs. 5-6, Fig. 2. From an aligned
photo crop I and its 3DMM fit, :mod:`face3d.rotate_render` gives R_e (model albedo under the
fitted light, occlusion-free) and R_p (the photo projected on the fitted shape, occluders
included). Then:

1. **Coarse occlusion mask, eq. 5** (:func:`occlusion_mask`):
   ``M = z_t·z_s + z_t + α·z_s``, α = 0.4, where z_t is the z-score of the textural difference
   d_t = ‖Lab(R_p) − Lab(R_e)‖₂ (CIE-Lab, per pixel) and z_s the z-score of the structural
   difference d_s = 1 − c·s, the SSIM contrast × structure product (no luminance term).
   z-scores are taken over the face pixels where both renders are defined. M is normalised
   again with its mean and standard deviation, and pixels with M > 0 are occluded. The eyes are
   removed through the landmarks (the paper does it with BiSeNet; the face parser of
   :mod:`selfsup.parsing`, when given, adds glasses and hair and removes its eyes too).
   Then M is dilated and blurred "to synthesise naturally around the occlusion area".
2. **Swap, eq. 6** (:func:`swap`): ``R_ps = (1 − M) R_p + M R_e`` and ``R_es = (1 − M) R_e + M R_p``;
   R_es is then blurred "to avoid referring to the texture of the rendered R_es as it is".
3. **Two rotate-and-render passes** (:func:`damage`): R_ps turned by a random yaw, then back
   to the input pose, gives the damaged R_psr (holes where the intermediate view did not see
   the surface). A training sample is (R_psr, R_es) → I with M.

Where the paper is silent we chose (one line each):

* yaw of the first pass: |Δyaw| uniform in 15…60° with a random sign (Rotate-and-Render
  rotates to random poses; below 15° the passes damage almost nothing, beyond 60° a frontal
  face loses half of itself); the turned yaw is kept within ±90°.
* dilation 3 px and blur σ = 2 px for M at 224² (scaled with the crop), blur σ = 1.5 px for R_es:
  enough to hide the seam of a swap, small against a 150-px face.
* SSIM window 11, σ = 1.5 (Wang et al.'s defaults), on the channel mean of c·s.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from face3d.coefficients import ALIGNED_SIZE, FaceParams
from face3d.color import srgb_to_lab
from face3d.filters import blur_masked, dilate, opening
from face3d.morphable_model import MorphableModel
from face3d.photometric import PhotometricSettings
from face3d.rotate_render import (ClosedMesh, FaceRenders, PhotoRender, ProjectionSettings, closed_mesh,
                                  fit_appearance, render_views, rotate_and_render)
from face3d.training.data import PhotoDatasetConfig

__all__ = ["SwapRRConfig", "OcclusionMask", "SwapRRSample", "zscore", "eq5_score", "texture_difference",
           "structure_difference", "landmark_region_mask", "occlusion_mask", "swap", "damage", "swap_rr",
           "sample_yaw", "SwapRRDataset", "EYE_GROUPS", "MOUTH_GROUPS"]

#: iBUG-68 eye contours (viewer's left eye, right eye)
EYE_GROUPS: tuple[tuple[int, ...], ...] = (tuple(range(36, 42)), tuple(range(42, 48)))
#: iBUG-68 inner mouth contour
MOUTH_GROUPS: tuple[tuple[int, ...], ...] = (tuple(range(60, 68)),)


@dataclass
class SwapRRConfig:
    """Settings of Swap-R&R (paper numbers where it gives them, module doc for the rest).

    * ``image_size``: crop side S (CFR-GAN: 224).
    * ``alpha``: α of eq. 5 (0.4).
    * ``threshold``: M > threshold (in units of M's standard deviation) is occluded; the paper's 0.
    * ``opening_px``: radius of a morphological opening of the thresholded M, removing specks
      and thin lines (wrinkles, edges) before dilation; 0 (off) in the paper.
    * ``dilate_px`` / ``blur_sigma``: dilation radius and Gaussian σ applied to M (at 224²; scaled
      with S). ``es_blur_sigma``: σ of the blur of R_es (at 224²).
    * ``exclude``: landmark regions never called occluded: ``eyes`` (paper), ``mouth``.
    * ``ssim_window`` / ``ssim_sigma``: SSIM window.
    * ``yaw_range``: (min, max) |Δyaw| of the first rotate-and-render pass, degrees.
    * ``max_yaw``: the turned face's |yaw| is clamped to this.
    * ``seed``: random yaw per item = f(seed, index) (reproducible).
    * ``parser``: path of face-parser weights (:mod:`selfsup.parsing`), or None.
    * ``photometric_iterations``: Adam steps of the light/albedo fit per face (results cached).
    * ``photos``: the :class:`~face3d.training.data.PhotoDatasetConfig` of the photo folder
      (its ``size`` follows ``image_size``).
    * ``cache_dir``: detections, fits and lighting (None: ``$FACE3D_HOME/cache/photos``).
    * ``projection``: :class:`~face3d.rotate_render.ProjectionSettings`.
    """

    image_size: int = ALIGNED_SIZE
    alpha: float = 0.4
    threshold: float = 0.0
    opening_px: float = 0.0
    dilate_px: float = 3.0
    blur_sigma: float = 2.0
    es_blur_sigma: float = 1.5
    exclude: tuple[str, ...] = ("eyes",)
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    yaw_range: tuple[float, float] = (15.0, 60.0)
    max_yaw: float = 90.0
    seed: int = 0
    parser: Optional[str] = None
    photometric_iterations: int = 30
    photos: PhotoDatasetConfig = field(default_factory=PhotoDatasetConfig)
    cache_dir: Optional[str] = None
    projection: ProjectionSettings = field(default_factory=ProjectionSettings)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        lo, hi = self.yaw_range
        if not 0 <= lo <= hi <= 180:
            raise ValueError(f"yaw_range must be 0 <= min <= max <= 180, got {self.yaw_range}")
        if self.dilate_px < 0 or self.blur_sigma < 0 or self.es_blur_sigma < 0:
            raise ValueError("dilate_px, blur_sigma and es_blur_sigma must be >= 0")
        bad = set(self.exclude) - {"eyes", "mouth"}
        if bad:
            raise ValueError(f"exclude takes 'eyes' and/or 'mouth', got {sorted(bad)}")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd and >= 3, got {self.ssim_window}")

    def scale(self) -> float:
        """Pixel sizes are given for 224²; this is the factor for ``image_size``."""
        return self.image_size / ALIGNED_SIZE


@dataclass
class OcclusionMask:
    """:func:`occlusion_mask`'s result, all (B, 1, S, S).

    * ``mask``: M after thresholding, exclusions, dilation and blur, in [0, 1] (1 = occluded).
    * ``binary``: M > threshold before dilation and blur, {0, 1}.
    * ``score``: the renormalised eq.-5 score (0 off the region).
    * ``z_t``, ``z_s``: the z-scores of the textural and structural differences.
    * ``region``: pixels where the statistics were taken (face, both renders defined).
    """

    mask: Tensor
    binary: Tensor
    score: Tensor
    z_t: Tensor
    z_s: Tensor
    region: Tensor


@dataclass
class SwapRRSample:
    """One Swap-R&R batch (B, ·, S, S): ``image`` I, ``render_psr`` R_psr, ``render_es`` R_es,
    ``mask`` M, ``face_mask``; plus ``render_p``, ``render_e``, ``render_ps``, ``holes`` (of R_psr)
    and ``yaw`` (B,) the first pass's Δyaw in degrees."""

    image: Tensor
    render_psr: Tensor
    render_es: Tensor
    mask: Tensor
    face_mask: Tensor
    render_p: Tensor
    render_e: Tensor
    render_ps: Tensor
    holes: Tensor
    yaw: Tensor


# -- eq. 5 --------------------------------------------------------------------------------------
def zscore(x: Tensor, region: Tensor, eps: float = 1e-6) -> Tensor:
    """(x − mean) / std over ``region`` (B, 1, H, W) {0,1}, per item; 0 off the region.

    The population standard deviation is used; an item with a constant x gets 0."""
    w = region.to(x.dtype)
    n = w.sum((1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * w).sum((1, 2, 3), keepdim=True) / n
    var = (((x - mean) ** 2) * w).sum((1, 2, 3), keepdim=True) / n
    return (x - mean) / (var.sqrt() + eps) * w


def eq5_score(z_t: Tensor, z_s: Tensor, alpha: float = 0.4) -> Tensor:
    """CFR-GAN eq. 5: M = z_t·z_s + z_t + α·z_s (before renormalisation)."""
    return z_t * z_s + z_t + alpha * z_s


def texture_difference(render_p: Tensor, render_e: Tensor) -> Tensor:
    """d_t (B, 1, H, W): Euclidean distance of R_p and R_e in CIE-Lab (sRGB inputs in [0, 1])."""
    return (srgb_to_lab(render_p) - srgb_to_lab(render_e)).pow(2).sum(1, keepdim=True).clamp_min(1e-12).sqrt()


def structure_difference(render_p: Tensor, render_e: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """d_s (B, 1, H, W) = 1 − c·s: SSIM's contrast × structure (no luminance), channel mean."""
    from face3d.metrics import ssim_components

    _, c, s = ssim_components(render_p, render_e, window=window, sigma=sigma)
    return 1.0 - (c * s).mean(1, keepdim=True)


def landmark_region_mask(landmarks: Tensor, size: int, groups: Sequence[Sequence[int]], grow: float = 0.0
                         ) -> Tensor:
    """(B, 1, S, S) {0, 1}: the polygons of the given landmark index groups (e.g. :data:`EYE_GROUPS`),
    grown by ``grow`` pixels. ``landmarks`` (B, 68, 2) crop pixels."""
    from PIL import Image, ImageDraw

    out = []
    for pts in landmarks.detach().cpu().numpy():
        im = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(im)
        for g in groups:
            poly = [tuple(map(float, pts[j])) for j in g]
            draw.polygon(poly, fill=255)
            if grow > 0:
                draw.line(poly + [poly[0]], fill=255, width=max(1, int(round(2 * grow))))
        out.append(torch.from_numpy(np.array(im, dtype=np.float32) / 255.0))
    return torch.stack(out)[:, None].to(landmarks.device)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return x
    return blur_masked(x, torch.ones_like(x[:, :1]), sigma)


def occlusion_mask(render_p: Tensor, render_e: Tensor, face_mask: Tensor, valid: Optional[Tensor] = None,
                   landmarks: Optional[Tensor] = None, config: Optional[SwapRRConfig] = None,
                   parsing: Optional[Tensor] = None) -> OcclusionMask:
    """CFR-GAN's coarse occlusion mask (eq. 5; module doc).

    Args:
        render_p, render_e: (B, 3, S, S) R_p and R_e, sRGB in [0, 1].
        face_mask: (B, 1, S, S) where the model covers the crop.
        valid: (B, 1, S, S) where R_p is defined (default: the face mask).
        landmarks: (B, 68, 2) crop pixels; the ``config.exclude`` regions are never occluded.
        parsing: (B, 1, S, S) optional face-parser label map (:class:`selfsup.parsing.FaceParser`):
            its glasses and hair classes are added, its eyes removed.
    """
    cfg = config or SwapRRConfig(image_size=render_p.shape[-1])
    k = render_p.shape[-1] / ALIGNED_SIZE
    region = face_mask if valid is None else face_mask * valid
    region = (region > 0.5).to(render_p.dtype)
    d_t = texture_difference(render_p, render_e)
    d_s = structure_difference(render_p, render_e, cfg.ssim_window, cfg.ssim_sigma)
    z_t, z_s = zscore(d_t, region), zscore(d_s, region)
    score = zscore(eq5_score(z_t, z_s, cfg.alpha), region)
    binary = ((score > cfg.threshold) & (region > 0)).to(render_p.dtype)
    keep = torch.zeros_like(binary)
    if landmarks is not None and cfg.exclude:
        groups = (EYE_GROUPS if "eyes" in cfg.exclude else ()) + (MOUTH_GROUPS if "mouth" in cfg.exclude else ())
        keep = landmark_region_mask(landmarks, render_p.shape[-1], groups).to(binary)
    if parsing is not None:
        from selfsup.parsing import EYE_CLASSES, OCCLUDER_CLASSES

        lab = parsing.long()
        add = torch.zeros_like(binary, dtype=torch.bool)
        for c in OCCLUDER_CLASSES:
            add |= lab == c
        binary = torch.maximum(binary, (add & (face_mask > 0.5)).to(binary))
        for c in EYE_CLASSES:
            keep = torch.maximum(keep, (lab == c).to(keep))
    binary = binary * (1.0 - keep)
    if cfg.opening_px > 0:
        binary = opening(binary, max(1, int(round(cfg.opening_px * k))))
    m = dilate(binary, int(round(cfg.dilate_px * k)))
    m = _gaussian_blur(m, cfg.blur_sigma * k).clamp(0.0, 1.0) * (face_mask > 0.5).to(m)
    return OcclusionMask(mask=m, binary=binary, score=score, z_t=z_t, z_s=z_s, region=region)


# -- eq. 6 and the passes -------------------------------------------------------------------------
def swap(render_p: Tensor, render_e: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """CFR-GAN eq. 6: (R_ps, R_es) = ((1 − M) R_p + M R_e, (1 − M) R_e + M R_p); all (B, ·, S, S)."""
    return (1.0 - mask) * render_p + mask * render_e, (1.0 - mask) * render_e + mask * render_p


def sample_yaw(current_yaw_deg: Tensor, config: SwapRRConfig, generator: Optional[torch.Generator] = None
               ) -> Tensor:
    """Δyaw (B,) degrees for the first pass: |Δ| uniform in ``yaw_range`` with a random sign,
    such that |yaw + Δ| ≤ ``max_yaw`` (the sign is flipped, then Δ clipped, when it would not be)."""
    b = current_yaw_deg.shape[0]
    lo, hi = config.yaw_range
    mag = lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(b, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    cur = current_yaw_deg.detach().cpu().to(torch.float64)
    d = sign * mag
    flip = (cur + d).abs() > config.max_yaw
    d = torch.where(flip, -d, d)
    d = (cur + d).clamp(-config.max_yaw, config.max_yaw) - cur
    return d.to(current_yaw_deg.dtype)


def damage(render_ps: Tensor, params: FaceParams, model: MorphableModel, yaw_deg: Tensor,
           settings: Optional[ProjectionSettings] = None, mesh: Optional[ClosedMesh] = None
           ) -> tuple[PhotoRender, PhotoRender]:
    """Two rotate-and-render passes: R_ps turned by ``yaw_deg`` (B,), then back to ``params``' pose.

    Returns (first pass, second pass); the second's ``image`` is R_psr, 0 in its holes."""
    mesh = mesh or closed_mesh(model)
    first = rotate_and_render(render_ps, params, model, yaw_deg, settings=settings, mesh=mesh)
    back = rotate_and_render(first.image, first.params, model, -yaw_deg, valid=first.valid, settings=settings,
                             mesh=mesh)
    return first, back


def swap_rr(image: Tensor, params: FaceParams, model: MorphableModel, albedo: Optional[Tensor] = None,
            landmarks: Optional[Tensor] = None, config: Optional[SwapRRConfig] = None,
            yaw_deg: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
            parsing: Optional[Tensor] = None, mesh: Optional[ClosedMesh] = None) -> SwapRRSample:
    """The whole Swap-R&R synthesis for a batch of aligned crops and their fits (with light).

    Args:
        image: (B, 3, S, S) crops I, sRGB in [0, 1].
        params: fits in the aligned camera, ``sh`` set (:func:`face3d.rotate_render.fit_appearance`).
        albedo: (B, N, 3) linear per-vertex albedo for R_e (default the model's).
        landmarks: (B, 68, 2) detected landmarks in crop pixels (eye exclusion); default the fit's.
        yaw_deg: (B,) first-pass Δyaw; default :func:`sample_yaw` with ``generator``.
    """
    cfg = config or SwapRRConfig(image_size=image.shape[-1])
    mesh = mesh or closed_mesh(model)
    k = image.shape[-1] / ALIGNED_SIZE
    views: FaceRenders = render_views(image, params, model, albedo=albedo, settings=cfg.projection, mesh=mesh)
    lm = views.landmarks if landmarks is None else landmarks
    occ = occlusion_mask(views.render_p, views.render_e, views.face_mask, views.valid, lm, cfg, parsing)
    m = occ.mask
    r_ps, r_es = swap(views.render_p, views.render_e, m)
    r_es = blur_masked(r_es, views.face_mask, cfg.es_blur_sigma * k) * views.face_mask
    if yaw_deg is None:
        yaw_deg = sample_yaw(params.angles[:, 0] * (180.0 / math.pi), cfg, generator)
    _, back = damage(r_ps, views.params, model, yaw_deg.to(image.dtype), cfg.projection, mesh)
    return SwapRRSample(image=image, render_psr=back.image, render_es=r_es, mask=m, face_mask=views.face_mask,
                        render_p=views.render_p, render_e=views.render_e, render_ps=r_ps, holes=back.holes,
                        yaw=yaw_deg)


# -- dataset ----------------------------------------------------------------------------------------
class SwapRRDataset(Dataset):
    """Swap-R&R training samples from a folder of face photos (CFR-GAN trains on CelebA / FFHQ).

    Built on :class:`face3d.training.data.PhotoFolderDataset` (aligned crops, landmarks and
    landmark fits, cached); the light and albedo gain of each face
    (:func:`face3d.rotate_render.fit_appearance`) are cached next to them. Item ``i`` is a dict of
    float32 tensors:

    * ``image``: I (3, S, S), the aligned photo crop, sRGB [0, 1];
    * ``render_psr``: R_psr (3, S, S), 0 in the holes the two passes left;
    * ``render_es``: R_es (3, S, S) (blurred), 0 off the face;
    * ``mask``: M (1, S, S) in [0, 1], 1 = occluded;
    * ``face_mask``: (1, S, S) {0, 1}, where the fitted model covers the crop;

    plus ``index``. The first pass's yaw is drawn from ``config.seed`` and ``i`` (reproducible).

    Args:
        folder: photos; ``config``: :class:`SwapRRConfig`; ``model``: the 3DMM (default
            ``load_model(config.photos.model)``); ``detector``: optional landmark detector.
    """

    def __init__(self, folder: Union[str, Path], config: Optional[SwapRRConfig] = None, *, model=None,
                 detector=None, progress: bool = False) -> None:
        from face3d.model_zoo import face3d_home
        from face3d.training.data import PhotoFolderDataset

        self.config = cfg = config or SwapRRConfig()
        pcfg = replace(cfg.photos, size=cfg.image_size)
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else face3d_home() / "cache" / "photos"
        self._model = model
        self.photos = PhotoFolderDataset(folder, self.cache_dir, pcfg, model=model, detector=detector,
                                         progress=progress)
        self._mesh: Optional[ClosedMesh] = None
        self._parser = None

    @property
    def model(self) -> MorphableModel:
        if self._model is None:
            from face3d.model_zoo import load_model

            self._model = load_model(self.config.photos.model, device="cpu")
        return self._model

    def prepare(self) -> "SwapRRDataset":
        self.photos.prepare()
        return self

    def __len__(self) -> int:
        return len(self.photos)

    def _appearance(self, index: int, image: Tensor, params: FaceParams, landmarks: Tensor
                    ) -> tuple[FaceParams, Tensor]:
        """Light and albedo of item ``index``, from the cache or fitted (and cached)."""
        from face3d.training.data import _save_npz

        _, faces_file, j = self.photos.items[index]
        h = hashlib.sha256(json.dumps({"v": 1, "it": self.config.photometric_iterations}).encode())
        h.update(params.join().detach().cpu().to(torch.float32).numpy().tobytes())
        key = h.hexdigest()[:12]
        file = self.cache_dir / "appearance" / f"{faces_file.stem}-{j}-{key}.npz"
        model = self.model
        if file.is_file():
            with np.load(file, allow_pickle=False) as z:
                sh = torch.from_numpy(z["sh"]).to(model.dtype)
                gain = torch.from_numpy(z["gain"]).to(model.dtype)
            return replace(params, sh=sh[None]), model.albedo(params.delta.to(model.dtype), batch=1) * gain
        p2, albedo = fit_appearance(image[None], params, model, landmarks[None],
                                    PhotometricSettings(iterations=self.config.photometric_iterations))
        # the fitted albedo is the model's times a per-channel gain (δ is zero for these fits)
        base = model.albedo(params.delta.to(model.dtype), batch=1)
        gain = ((albedo * base).sum(1) / (base * base).sum(1).clamp_min(1e-12))[:, None, :]
        _save_npz(file, sh=p2.sh[0].detach().cpu().numpy(), gain=gain.detach().cpu().numpy())
        return p2, (base * gain).clamp(0.0, 1.0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        cfg = self.config
        item = self.photos[index]
        index = int(item["index"])
        model = self.model
        if self._mesh is None:
            self._mesh = closed_mesh(model)
        image = item["image"].to(model.dtype)
        params = FaceParams.split(item["params"][None].to(model.dtype), model)
        params, albedo = self._appearance(index, image, params, item["landmarks"])
        parsing = None
        if cfg.parser:
            from selfsup.parsing import load_face_parser

            if self._parser is None:
                self._parser = load_face_parser(cfg.parser)
            parsing = self._parser.parse(image[None].float()).to(image.dtype)
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + index) % (2 ** 63))
        s = swap_rr(image[None], params, model, albedo=albedo, landmarks=item["landmarks"][None].to(model.dtype),
                    config=cfg, generator=g, parsing=parsing, mesh=self._mesh)
        f = torch.float32
        return {"image": s.image[0].to(f), "render_psr": s.render_psr[0].to(f), "render_es": s.render_es[0].to(f),
                "mask": s.mask[0].to(f), "face_mask": s.face_mask[0].to(f), "index": index}
