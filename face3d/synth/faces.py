"""Synthetic supervision: faces rendered from the 3DMM with known parameters.

Every sample is a random face of the model (identity α, expression β, albedo δ), posed
(yaw up to ±90°, pitch, roll), lit by second-order SH light γ and placed in the aligned
224² camera of :func:`face3d.coefficients.aligned_camera` (f = 1015 px, the model
origin at ``ALIGNED_DISTANCE_MM`` + t_z), composited over a procedural or photo
background. The returned :class:`~face3d.coefficients.FaceParams` reproduce the rendered
face exactly: re-rendering them with :meth:`SyntheticFaces.render_params` gives the same
pixels inside the face mask. That is why the random skin-tone gain is not applied to the
albedo but folded into γ (per channel, albedo · g_c · E_c(γ) = albedo · E_c(γ'), with
γ'_c = g_c (γ_c + a e₀) − a e₀ and a Deng's +0.8 ambient) — the albedo/light ambiguity
the regressor has to live with anyway. The only option that breaks exactness is
``skin_variation`` (a per-vertex albedo field outside the model's span), off by default;
the albedo actually rendered is always returned in :attr:`SyntheticBatch.albedo`.

Light (see :func:`directional_sh`): an ambient term plus a distant Lambertian key light,
whose clamped cosine is projected on the SH basis with the Ramamoorthi–Hanrahan kernel
(Â₀ = π, Â₁ = 2π/3, Â₂ = π/4) and rewritten in Deng et al.'s constants
(γ_k = I Â_l H_k(l) / a_l², since H_k = ±a_l Y_lm).

Landmarks follow the rule the landmark fitter uses (:meth:`face3d.fitting.LandmarkFitter.project`):
inner points 17–67 are the model's landmark vertices; jaw points 0–16 slide to the
silhouette on the side turned away from the camera. ``visibility`` says whether the vertex
a landmark uses is seen by the camera (depth test on the render) and inside the crop.

Sampling is deterministic: :meth:`SyntheticFaces.sample` draws everything from the given
``torch.Generator``; :meth:`SyntheticFaces.sample_indices` and
:class:`SyntheticFaceDataset` seed one generator per sample index, so sample *i* does not
depend on which batch it is drawn in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from face3d.camera import transform
from face3d.coefficients import ALIGNED_DISTANCE_MM, FaceParams, aligned_camera
from face3d.color import linear_to_srgb, srgb_to_linear
from face3d.imageio import IMAGE_SUFFIXES
from face3d.fitting.lm import LandmarkFitter, LMFitConfig
from face3d.lighting import DENG_AMBIENT, SH_CONSTANTS, sh_basis
from face3d.morphable_model import ModelArrays, MorphableModel
from face3d.render import Renderer, RenderSettings, vertex_visibility

__all__ = ["SyntheticFaceConfig", "SyntheticBatch", "SyntheticFaces", "SyntheticFaceDataset", "fold_gain_into_sh",
           "BackgroundSource", "directional_sh", "sample_seed"]



@dataclass
class SyntheticFaceConfig:
    """What :class:`SyntheticFaces` draws. Ranges are (low, high), drawn uniformly.

    Geometry
        * ``image_size``: crop side S in pixels (the aligned camera scales its focal length with it).
        * ``yaw_deg``, ``pitch_deg``, ``roll_deg``: head pose ranges, degrees (face3d.camera conventions).
        * ``shift_px``: the landmark centroid lands uniformly within ± this many pixels of the
          crop centre (given for S = 224; scaled with S), so the face stays framed.
        * ``depth_mm``: range of t_z, mm added to ALIGNED_DISTANCE_MM (±60 mm ≈ ±6 % scale).
        * ``identity_scale``: α = z · ξ_id · scale with z ~ N(0, 1) clipped to ±``identity_clip``.
        * ``expression_prob``: probability that a face has an expression (else β = 0).
        * ``expression_scale``: PCA expression models: β = z ξ_exp · scale (z clipped like α);
          blendshape models: ``expression_active`` random blendshapes get weights
          U(0.2, 1) · scale, clipped to [0, 1].
    Appearance
        * ``albedo_scale``: δ = z ξ_t · scale when the model has an albedo basis.
        * ``melanin``: range of a skin-tone parameter m; the albedo gain per channel is
          exp(−m · (0.9, 1.25, 1.5)) (darker skin is darker and redder), times
          1 + U(±``albedo_jitter``) per channel. Folded into γ (module doc).
        * ``skin_variation``: amplitude of a low-frequency multiplicative albedo field
          (relative, e.g. 0.1); 0 (default) keeps the FaceParams exact.
        * ``ambient``: range of the ambient irradiance (shading of a surface the key light
          misses; 1 = the model albedo itself).
        * ``key_light``: range of the key light's intensity (irradiance added at normal incidence).
        * ``key_elevation_deg``, ``key_azimuth_deg``: key-light direction ranges, relative
          to the camera's view direction (elevation > 0: from above; azimuth > 0: from the
          viewer's right).
        * ``light_tint``: per-channel relative colour jitter of ambient and key light.
    Rendering
        * ``background``: "procedural", "photos" or "mixed" (half each); ``photo_dir``:
          a folder searched recursively for photos (needed for "photos"/"mixed").
        * ``supersample``: render at k·S and average k×k blocks (anti-aliased silhouette;
          the mask becomes fractional coverage). 1 renders exactly what a 224² renderer sees.
        * ``backend``: rasterizer (see :func:`face3d.render.get_rasterizer`).
    """

    image_size: int = 224
    yaw_deg: tuple[float, float] = (-90.0, 90.0)
    pitch_deg: tuple[float, float] = (-30.0, 30.0)
    roll_deg: tuple[float, float] = (-20.0, 20.0)
    shift_px: float = 8.0
    depth_mm: tuple[float, float] = (-60.0, 60.0)
    identity_scale: float = 1.0
    identity_clip: float = 2.5
    expression_prob: float = 0.7
    expression_scale: float = 1.0
    expression_active: tuple[int, int] = (1, 4)
    albedo_scale: float = 1.0
    melanin: tuple[float, float] = (0.0, 1.4)
    albedo_jitter: float = 0.06
    skin_variation: float = 0.0
    ambient: tuple[float, float] = (0.35, 0.8)
    key_light: tuple[float, float] = (0.3, 0.9)
    key_elevation_deg: tuple[float, float] = (-15.0, 60.0)
    key_azimuth_deg: tuple[float, float] = (-70.0, 70.0)
    light_tint: float = 0.06
    background: str = "procedural"
    photo_dir: Optional[str] = None
    supersample: int = 1
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if self.background not in ("procedural", "photos", "mixed"):
            raise ValueError(f"background must be 'procedural', 'photos' or 'mixed', got {self.background!r}")
        if self.background != "procedural" and self.photo_dir is None:
            raise ValueError(f"background={self.background!r} needs photo_dir")
        if self.supersample < 1:
            raise ValueError(f"supersample must be at least 1, got {self.supersample}")
        if not 0.0 <= self.expression_prob <= 1.0:
            raise ValueError(f"expression_prob must be in [0, 1], got {self.expression_prob}")
        for name in ("yaw_deg", "pitch_deg", "roll_deg", "depth_mm", "melanin", "ambient", "key_light",
                     "key_elevation_deg", "key_azimuth_deg", "expression_active"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")


@dataclass
class SyntheticBatch:
    """One batch of :meth:`SyntheticFaces.sample`.

    * ``image`` (B, 3, S, S): sRGB in [0, 1], the face composited over the background.
    * ``mask`` (B, 1, S, S): face coverage in [0, 1] (binary unless ``supersample`` > 1).
    * ``params``: the exact :class:`FaceParams` (angles in radians).
    * ``landmarks`` (B, 68, 2): iBUG-68 points in crop pixels (pixel-centre convention of
      face3d.camera), jaw on the silhouette as the fitter places it.
    * ``visibility`` (B, 68) bool: the landmark's vertex is seen and inside the crop.
    * ``landmark_ids`` (B, 68): the vertex each landmark uses (jaw: the most-weighted candidate).
    * ``albedo`` (B, N, 3): the linear per-vertex albedo rendered (= model.albedo(δ) unless
      ``skin_variation`` > 0).
    * ``background`` (B, 3, S, S): the sRGB image the face was composited over: the
      background with eyes and mouth interior painted where the model has holes there.
    """

    image: Tensor
    mask: Tensor
    params: FaceParams
    landmarks: Tensor
    visibility: Tensor
    landmark_ids: Tensor
    albedo: Tensor
    background: Tensor

    @property
    def batch(self) -> int:
        return int(self.image.shape[0])


# -- lighting ----------------------------------------------------------------------------------

#: Lambertian (clamped-cosine) kernel per SH band (Ramamoorthi & Hanrahan 2001).
_LAMBERT = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)
_BAND = (0, 1, 1, 1, 2, 2, 2, 2, 2)


def directional_sh(direction: Tensor, intensity: Tensor, ambient: Tensor,
                   deng_ambient: float = DENG_AMBIENT) -> Tensor:
    """SH coefficients γ (B, 27) of an ambient light plus a distant Lambertian light.

    Args:
        direction: (B, 3) unit vectors toward the light in the **view frame** of
            :mod:`face3d.lighting` (x right, y up, z toward the camera).
        intensity: (B, 3) per-channel irradiance the light adds at normal incidence.
        ambient: (B, 3) per-channel irradiance of every surface from the ambient term.
        deng_ambient: the renderer's offset added to γ_0 (subtracted here so that the
            rendered irradiance is as asked).

    The irradiance is ≈ ambient + intensity · max(0, n·l) (the 2nd-order SH approximation of
    the clamped cosine, accurate to a few percent).
    """
    a = (SH_CONSTANTS[0], SH_CONSTANTS[1], SH_CONSTANTS[2])
    H = sh_basis(direction, frame="view")  # (B, 9)
    k = direction.new_tensor([_LAMBERT[b] / a[b] ** 2 for b in _BAND])
    g = intensity[:, :, None] * (H * k)[:, None, :]  # (B, 3, 9)
    h0 = SH_CONSTANTS[0] * SH_CONSTANTS[3]  # H_0, the constant basis function
    g[:, :, 0] = g[:, :, 0] + ambient / h0 - deng_ambient
    return g.reshape(-1, 27)


def fold_gain_into_sh(sh: Tensor, gain: Tensor, deng_ambient: float = DENG_AMBIENT) -> Tensor:
    """γ' (B, 27) such that shading albedo · gain with γ equals shading albedo with γ'.

    ``gain`` (B, 3) per channel; exact because the irradiance is linear in (γ + a e₀).
    """
    g = sh.view(-1, 3, 9).clone()
    g[:, :, 0] = g[:, :, 0] + deng_ambient
    g = g * gain[:, :, None]
    g[:, :, 0] = g[:, :, 0] - deng_ambient
    return g.reshape(-1, 27)


# -- backgrounds -------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """(size, size, channels) smooth noise in about [-1, 1]: a cells² random grid, bicubic-upsampled."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells, channels)).astype(np.float32)
    out = np.empty((size, size, channels), np.float32)
    for c in range(channels):
        im = Image.fromarray(grid[..., c], mode="F").resize((size, size), Image.BICUBIC)
        out[..., c] = np.asarray(im)
    return out


def procedural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random (size, size, 3) sRGB float32 background: a two-colour gradient, low-frequency
    colour noise and a few soft blobs (walls, out-of-focus rooms, sky)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    c0, c1 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    if rng.random() < 0.5:  # desaturate: many real backgrounds are greyish
        g = rng.uniform(0.15, 0.9)
        c0, c1 = 0.35 * c0 + 0.65 * g, 0.35 * c1 + 0.65 * rng.uniform(0.15, 0.9)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) * rng.uniform(0.5, 1.6) + 0.5
    ramp = np.clip(ramp, 0.0, 1.0)[..., None]
    img = c0 * (1.0 - ramp) + c1 * ramp
    img = img + _smooth_noise(rng, size, int(rng.integers(3, 9)), 3) * rng.uniform(0.02, 0.12)
    for _ in range(int(rng.integers(0, 6))):
        cx, cy = rng.uniform(-0.2, 1.2, 2)
        rx, ry = rng.uniform(0.05, 0.45, 2)
        soft = rng.uniform(0.05, 0.6)
        d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
        w = np.clip((1.0 - d) / soft, 0.0, 1.0)[..., None] * rng.uniform(0.3, 1.0)
        img = img * (1.0 - w) + rng.uniform(0.0, 1.0, 3) * w
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.02), img.shape)  # sensor grain
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class BackgroundSource:
    """Backgrounds of side ``size``: procedural, or random crops of photos in a folder.

    ``photo_dir`` is searched recursively (sorted, so draws are reproducible); photos are
    opened on demand. ``mode``: "procedural", "photos" or "mixed".
    """

    def __init__(self, size: int, mode: str = "procedural", photo_dir: Optional[str | Path] = None) -> None:
        self.size, self.mode = int(size), mode
        self.photos: list[Path] = []
        if mode != "procedural":
            root = Path(photo_dir) if photo_dir is not None else None
            if root is None or not root.is_dir():
                raise FileNotFoundError(f"background photo folder not found: {root}")
            self.photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.photos:
                raise FileNotFoundError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) under {root}")

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """(size, size, 3) float32 sRGB in [0, 1]."""
        use_photo = self.mode == "photos" or (self.mode == "mixed" and rng.random() < 0.5)
        if not use_photo:
            return procedural_background(rng, self.size)
        path = self.photos[int(rng.integers(len(self.photos)))]
        with Image.open(path) as im:
            im.draft("RGB", (self.size * 2, self.size * 2))  # JPEG: decode at reduced size
            im = im.convert("RGB")
            w, h = im.size
            side = max(8, int(min(w, h) * rng.uniform(0.3, 1.0)))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((self.size, self.size), Image.BILINEAR)
        out = np.asarray(crop, np.float32) / 255.0
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def _landmark_visibility(out: Any, ids: Tensor, triangles: Tensor, supersample: int,
                         tolerance_mm: float = 3.0) -> Tensor:
    """(B, 68) bool: is the vertex ``ids`` of each landmark seen by the camera?

    :func:`face3d.render.vertex_visibility` (depth and incident-triangle tests at the four
    pixels around the vertex), or-ed with a test made for vertices on the rim of a hole
    (eye lids, inner lips), whose neighbouring pixels are background: within ±2 crop pixels,
    no covered pixel may lie in front of the vertex by more than ``tolerance_mm`` unless
    some covered pixel sees the surface at the vertex's own depth.
    """
    frags = out.fragments
    seen = vertex_visibility(out.screen_vertices, frags.depth, frags.mask, tolerance=2.0 / supersample,
                             tri_id=frags.tri_id, triangles=triangles)
    vis = torch.gather(seen, 1, ids)
    b, h, w = frags.depth.shape
    sv = torch.gather(out.screen_vertices.detach(), 1, ids[..., None].expand(-1, -1, 3))  # (B, 68, 3)
    r = 2 * supersample
    off = torch.arange(-r, r + 1, device=ids.device)
    px = (sv[..., 0].round().long()[..., None, None] + off[None, None, None, :]).clamp(0, w - 1)
    py = (sv[..., 1].round().long()[..., None, None] + off[None, None, :, None]).clamp(0, h - 1)
    flat = (py * w + px).reshape(b, -1)
    depth = torch.gather(frags.depth.detach().reshape(b, -1), 1, flat).view(b, 68, -1)
    cov = torch.gather(frags.mask.reshape(b, -1), 1, flat).view(b, 68, -1)
    z = sv[..., 2:3]
    same = (cov & ((depth - z).abs() <= tolerance_mm)).any(-1)
    front = (cov & (depth < z - tolerance_mm)).any(-1)
    return vis | same | ~front


#: sRGB iris colours (brown, hazel, green, blue, grey, dark brown).
_IRIS_COLOURS = np.array([[0.36, 0.22, 0.12], [0.45, 0.35, 0.18], [0.30, 0.38, 0.22], [0.30, 0.42, 0.55],
                          [0.42, 0.45, 0.47], [0.18, 0.11, 0.07]], np.float32)


def _fill_holes(background: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, iris: np.ndarray,
                light: float, supersample: int = 4) -> np.ndarray:
    """Paint eyes and the mouth interior into the background (S, S, 3) sRGB.

    Most face models have holes at the eyes and the mouth; without this the background
    shows through them. The paint lies *under* the face, so only hole pixels (mask 0) show
    it and the face pixels — and the exactness of the parameters — are untouched. Regions
    whose landmarks are mostly hidden are skipped (at profile views the far eye's polygon
    would spill past the silhouette). ``light`` scales the colours (≈ the ambient level).
    """
    size = background.shape[0]
    k = supersample
    layer = Image.new("RGB", (size * k, size * k))
    alpha = Image.new("L", (size * k, size * k))
    draw, adraw = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    shade = float(np.clip(0.55 * light, 0.25, 1.0))

    def pts(ids: range) -> list[tuple[float, float]]:
        return [((x + 0.5) * k - 0.5, (y + 0.5) * k - 0.5) for x, y in landmarks[list(ids)]]

    def rgb(c: np.ndarray) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(np.asarray(c) * shade * 255.0, 0, 255))

    for ids in (range(36, 42), range(42, 48)):
        if visible[list(ids)].sum() < 3:
            continue
        e = np.asarray(pts(ids))
        # grown by 25 %: models' eye holes are often wider than their lid landmarks
        poly = [tuple(q) for q in e.mean(0) + 1.25 * (e - e.mean(0))]
        draw.polygon(poly, fill=rgb(np.array([0.78, 0.74, 0.70])))
        adraw.polygon(poly, fill=255)
        c = e.mean(0)
        r = 0.5 * float(np.linalg.norm(e[3] - e[0])) * 0.42  # iris ≈ 40 % of the eye width
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=rgb(iris))
        draw.ellipse([c[0] - 0.4 * r, c[1] - 0.4 * r, c[0] + 0.4 * r, c[1] + 0.4 * r], fill=rgb(iris * 0.15))
    if visible[60:68].sum() >= 6:
        poly = pts(range(60, 68))
        draw.polygon(poly, fill=rgb(np.array([0.28, 0.09, 0.08])))
        adraw.polygon(poly, fill=255)
    a = np.asarray(alpha.reduce(k), np.float32)[..., None] / 255.0
    if not a.any():
        return background
    col = np.asarray(layer.reduce(k), np.float32) / 255.0
    # the colour was averaged together with black outside the polygons: un-premultiply
    col = np.where(a > 0, col / np.maximum(a, 1e-6), 0.0)
    return (background * (1.0 - a) + np.clip(col, 0, 1) * a).astype(np.float32)


# -- the generator -----------------------------------------------------------------------------


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded ``seed`` (stable across platforms)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


@dataclass
class _Scene:
    """Everything drawn for one sample (internal)."""

    alpha: Tensor
    beta: Tensor
    delta: Tensor
    angles: Tensor
    shift: Tensor
    tz: Tensor
    sh: Tensor
    skin_field: Optional[Tensor]
    background_seed: int


class SyntheticFaces:
    """Random faces of ``model`` rendered in the aligned camera; see the module doc.

    Example::

        gen = SyntheticFaces(model, SyntheticFaceConfig(), seed=0)
        batch = gen.sample(16)                       # uses the generator seeded with ``seed``
        batch = gen.sample_indices(range(100, 116))  # sample i is always the same
    """

    def __init__(self, model: MorphableModel | ModelArrays, config: Optional[SyntheticFaceConfig] = None,
                 seed: int = 0, device: torch.device | str | None = None) -> None:
        if isinstance(model, ModelArrays):
            model = MorphableModel(model, device=device)
        self.model = model if device is None else model.to(device)
        self.config = cfg = config or SyntheticFaceConfig()
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        k = cfg.supersample
        self.renderer = Renderer(RenderSettings(image_size=cfg.image_size * k, backend=cfg.backend,
                                                sh_ambient=DENG_AMBIENT))
        # every identity mode counts for the landmarks, not only the fitter's default 80
        self.fitter = LandmarkFitter(self.model, LMFitConfig(n_id=self.model.n_id, n_exp=self.model.n_exp),
                                     device=self.model.device)
        self.backgrounds = BackgroundSource(cfg.image_size, cfg.background, cfg.photo_dir)
        self.blendshapes = self.model.meta.get("expression_kind") == "blendshapes"
        lm_mean = self.model.landmarks(self.model.mean_shape[None])[0]
        span = (lm_mean.max(0).values - lm_mean.min(0).values).norm()
        self._bump_scale = float(span) * 0.25  # skin-variation bump size, mm

    # -- drawing -------------------------------------------------------------------------------
    def _uniform(self, g: torch.Generator, lo_hi: tuple[float, float], n: int = 1) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    def _clipped_normal(self, g: torch.Generator, n: int, clip: float) -> Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64).clamp(-clip, clip)

    def _draw(self, g: torch.Generator) -> _Scene:
        """Draw one sample's scene from ``g`` (CPU generator); the order of draws is fixed."""
        cfg, m = self.config, self.model
        dt = m.dtype
        alpha = self._clipped_normal(g, m.n_id, cfg.identity_clip) * m.id_std.double().cpu() * cfg.identity_scale
        has_exp = bool(torch.rand(1, generator=g) < cfg.expression_prob)
        if self.blendshapes:
            lo, hi = cfg.expression_active
            count = int(torch.randint(lo, hi + 1, (1,), generator=g))
            pick = torch.randperm(m.n_exp, generator=g)[: min(count, m.n_exp)]
            w = self._uniform(g, (0.2, 1.0), m.n_exp) * cfg.expression_scale
            beta = torch.zeros(m.n_exp, dtype=torch.float64)
            beta[pick] = w[pick].clamp(0.0, 1.0)
        else:
            beta = self._clipped_normal(g, m.n_exp, cfg.identity_clip) * m.exp_std.double().cpu() * cfg.expression_scale
        if not has_exp:
            beta = torch.zeros_like(beta)
        delta = self._clipped_normal(g, m.n_albedo, cfg.identity_clip) * m.albedo_std.double().cpu() * cfg.albedo_scale
        angles = torch.cat([self._uniform(g, cfg.yaw_deg), self._uniform(g, cfg.pitch_deg),
                            self._uniform(g, cfg.roll_deg)]).deg2rad()
        shift = (torch.rand(2, generator=g, dtype=torch.float64) * 2 - 1) * cfg.shift_px * cfg.image_size / 224.0
        tz = self._uniform(g, cfg.depth_mm)[0]
        # light: ambient + key light, both slightly tinted; skin tone as a per-channel gain
        tint = lambda: 1.0 + (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * cfg.light_tint  # noqa: E731
        amb = self._uniform(g, cfg.ambient) * tint()
        key = self._uniform(g, cfg.key_light) * tint()
        el = math.radians(float(self._uniform(g, cfg.key_elevation_deg)))
        az = math.radians(float(self._uniform(g, cfg.key_azimuth_deg)))
        direction = torch.tensor([[math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]],
                                 dtype=torch.float64)
        sh = directional_sh(direction, key[None], amb[None])
        mel = float(self._uniform(g, cfg.melanin))
        gain = torch.exp(-mel * torch.tensor([0.9, 1.25, 1.5], dtype=torch.float64)) * (
            1.0 + (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * cfg.albedo_jitter)
        sh = fold_gain_into_sh(sh, gain[None])[0]
        bg_seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
        skin = None
        if cfg.skin_variation > 0:
            centres = torch.randint(0, m.n_vertices, (6,), generator=g)
            amps = torch.randn(6, 3, generator=g, dtype=torch.float64) * cfg.skin_variation
            skin = self._skin_field(centres, amps)
        return _Scene(alpha.to(dt), beta.to(dt), delta.to(dt), angles.to(dt), shift.to(dt), tz.to(dt), sh.to(dt),
                      skin, bg_seed)

    def _skin_field(self, centres: Tensor, amps: Tensor) -> Tensor:
        """(N, 3) multiplicative albedo field 1 + Σ amp · Gaussian bump around model vertices."""
        v = self.model.mean_shape.double().cpu()
        d2 = ((v[:, None, :] - v[centres][None]) ** 2).sum(-1)  # (N, 6)
        w = torch.exp(-d2 / (2 * self._bump_scale ** 2))
        return (1.0 + w @ amps).clamp(0.5, 1.5).to(self.model.dtype)

    # -- rendering -----------------------------------------------------------------------------
    def _translation(self, vertices: Tensor, R: Tensor, shift: Tensor, tz: Tensor) -> Tensor:
        """t offsets (B, 3) that put the landmark centroid at the crop centre + ``shift`` px."""
        f = aligned_camera(1, self.config.image_size).focal[0, 0].item()
        c = self.model.landmarks(vertices).mean(1)  # (B, 3)
        p = (R @ c[..., None]).squeeze(-1)
        z = p[:, 2] + ALIGNED_DISTANCE_MM + tz
        txy = shift * z[:, None] / f - p[:, :2]
        return torch.cat([txy, tz[:, None]], 1)

    def render_params(self, params: FaceParams, albedo: Optional[Tensor] = None
                      ) -> tuple[Tensor, Tensor, Any]:
        """Render ``params`` as the generator does: (linear image (B, 3, S, S) premultiplied by
        coverage, mask (B, 1, S, S), raw high-resolution :class:`~face3d.render.RenderOutput`).

        ``albedo`` (B, N, 3) overrides ``model.albedo(params.delta)``.
        """
        m, k = self.model, self.config.supersample
        params = params.to(m.device, m.dtype)
        verts = m.shape(params.alpha, params.beta)
        if albedo is None:
            albedo = m.albedo(params.delta)
        cam = transform(verts, params.rotation(), params.camera_translation())
        intr = aligned_camera(params.batch, self.config.image_size * k, dtype=m.dtype, device=m.device)
        out = self.renderer.render(cam, m.triangles, intr, albedo=albedo.to(m.device, m.dtype), sh=params.sh)
        image, mask = out.image, out.mask
        if k > 1:
            image, mask = F.avg_pool2d(image, k), F.avg_pool2d(mask, k)
        return image, mask, out

    def _render(self, scenes: Sequence[_Scene]) -> SyntheticBatch:
        m, cfg = self.model, self.config
        dev, dt = m.device, m.dtype
        params = self._params(scenes)
        alpha, beta, delta, sh = params.alpha, params.beta, params.delta, params.sh
        albedo = m.albedo(delta)
        if any(s.skin_field is not None for s in scenes):
            field_ = torch.stack([s.skin_field if s.skin_field is not None else torch.ones_like(albedo[0])
                                  for s in scenes]).to(dev)
            albedo = (albedo * field_).clamp(0.0, 1.0)
        lin, mask, out = self.render_params(params, albedo)
        # landmarks by the fitter's rule; visibility from the (high-resolution) depth buffer
        R, t = params.rotation(), params.camera_translation()
        intr = aligned_camera(len(scenes), cfg.image_size, dtype=dt, device=dev)
        lms, ids = self.fitter.project(alpha, beta, R, t, intr)
        lms = lms.to(dev, dt)
        vis = _landmark_visibility(out, ids.to(dev), m.triangles, cfg.supersample)
        s = cfg.image_size
        vis = vis & (lms >= -0.5).all(-1) & (lms <= s - 0.5).all(-1)
        backs = []
        for i, sc in enumerate(scenes):
            rng = np.random.default_rng(sc.background_seed)
            back = self.backgrounds(rng)
            iris = _IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))] * rng.uniform(0.7, 1.2)
            backs.append(_fill_holes(back, lms[i].detach().cpu().numpy(), vis[i].cpu().numpy(), iris,
                                     float(sh[i, 0]) + DENG_AMBIENT))
        bg = torch.from_numpy(np.stack(backs)).permute(0, 3, 1, 2).to(dev, dt)
        image = linear_to_srgb(lin + srgb_to_linear(bg) * (1.0 - mask))
        return SyntheticBatch(image=image, mask=mask, params=params, landmarks=lms, visibility=vis,
                              landmark_ids=ids.to(dev), albedo=albedo, background=bg)

    def _params(self, scenes: Sequence[_Scene]) -> FaceParams:
        m = self.model
        dev, dt = m.device, m.dtype
        stack = lambda name: torch.stack([getattr(s, name) for s in scenes]).to(dev)  # noqa: E731
        alpha, beta, delta, angles = stack("alpha"), stack("beta"), stack("delta"), stack("angles")
        params = FaceParams(alpha, beta, delta, angles, stack("sh"), torch.zeros(len(scenes), 3, dtype=dt, device=dev))
        params.translation = self._translation(m.shape(alpha, beta), params.rotation(), stack("shift"), stack("tz"))
        return params

    # -- public --------------------------------------------------------------------------------
    def sample_params(self, batch: int, generator: Optional[torch.Generator] = None) -> FaceParams:
        """The parameters :meth:`sample` would draw from the same generator state, without
        rendering (cheap; for parameter statistics or parameter-only supervision)."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        g = generator if generator is not None else self.generator
        return self._params([self._draw(g) for _ in range(batch)])

    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> SyntheticBatch:
        """``batch`` random faces drawn from ``generator`` (default: the generator seeded at
        construction, so successive calls continue one reproducible stream)."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        g = generator if generator is not None else self.generator
        return self._render([self._draw(g) for _ in range(batch)])

    def sample_indices(self, indices: Sequence[int]) -> SyntheticBatch:
        """Samples ``indices`` of this generator's reproducible sequence, rendered as one batch;
        sample i is drawn from its own generator seeded by :func:`sample_seed` (seed, i)."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("indices is empty")
        return self._render([self._draw(torch.Generator().manual_seed(sample_seed(self.seed, i)))
                             for i in indices])


class SyntheticFaceDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``length`` synthetic faces; item i is always the same sample.

    Items are dicts of tensors (default-collatable): ``image`` (3, S, S) sRGB clean render,
    ``mask`` (1, S, S), ``coefficients`` (K,) = ``FaceParams.join()`` (split with
    :meth:`FaceParams.split`), ``landmarks`` (68, 2), ``visibility`` (68,) bool. With an
    ``occluder`` (an :class:`face3d.synth.occluders.OccluderSampler`) and ``occlusion_prob``
    > 0 they also hold ``occluded`` (3, S, S) — the input image, equal to ``image`` where no
    occluder was drawn — ``occluder_mask`` (1, S, S) exact alpha and ``occluder_kind`` (str,
    "none" when not occluded); losses are meant to be computed against the clean ``image``.
    For batches, :meth:`batch` renders several indices in one call.
    """

    def __init__(self, faces: SyntheticFaces, length: int, occluder: Optional[Any] = None,
                 occlusion_prob: float = 0.0) -> None:
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        if occlusion_prob > 0 and occluder is None:
            raise ValueError("occlusion_prob > 0 needs an occluder sampler")
        self.faces, self.length = faces, int(length)
        self.occluder, self.occlusion_prob = occluder, float(occlusion_prob)

    def __len__(self) -> int:
        return self.length

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The items ``indices`` stacked (same values as indexing one by one)."""
        for i in indices:
            if not 0 <= int(i) < self.length:
                raise IndexError(f"index {i} out of range for a dataset of {self.length}")
        b = self.faces.sample_indices(indices)
        out: dict[str, Any] = {"image": b.image, "mask": b.mask, "coefficients": b.params.join(),
                               "landmarks": b.landmarks, "visibility": b.visibility}
        if self.occluder is not None and self.occlusion_prob > 0:
            occluded, masks, kinds = [], [], []
            for j, i in enumerate(indices):
                rng = np.random.default_rng(sample_seed(self.faces.seed + 7919, int(i)))
                if rng.random() < self.occlusion_prob:
                    res = self.occluder(b.image[j], b.landmarks[j], rng=rng)
                    occluded.append(res.image)
                    masks.append(torch.as_tensor(res.mask, dtype=b.image.dtype)[None])
                    kinds.append(res.kind)
                else:
                    occluded.append(b.image[j])
                    masks.append(torch.zeros_like(b.mask[j]))
                    kinds.append("none")
            out.update(occluded=torch.stack(occluded), occluder_mask=torch.stack(masks), occluder_kind=kinds)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.batch([index])
        return {k: (v[0] if isinstance(v, (Tensor, list)) else v) for k, v in item.items()}
