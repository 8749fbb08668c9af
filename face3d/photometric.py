"""Photometric refinement of a landmark fit by differentiable rendering.

After landmark fitting (:mod:`face3d.fitting`) the pose and shape are known roughly; the
lighting and albedo are not. Here the fitted face is rendered (albedo × SH irradiance,
:mod:`face3d.render`) over a crop of the photo and compared with it, in linear RGB, on
the pixels the face covers. Optimised with Adam:

* SH lighting γ (B, 27) — initialised by linear least squares (:func:`face3d.lighting.estimate_sh`);
* a per-channel albedo gain (B, 3) and, when the model has an albedo basis, δ;
* optionally (``refine_shape``) α, β and a small pose correction, held near the landmark fit
  by the landmark term of eq. 2 and the coefficient priors.

Occluders (hands, glasses, hair) must not drag the fit: the colour residual goes through
the Geman–McClure robust function ρ(r) = r² / (r² + s²), whose influence vanishes for
residuals much larger than s (``robust_scale``), and the per-pixel weight
w = s⁴ / (r² + s²)² of the last iterate is returned as a soft *skin* map: pixels the model
cannot explain (w < ½) are reported as occluded. This is the "occlusion mask from the
residual" of robust 3DMM fitting (e.g. Egger et al. 2018), in its simplest M-estimator form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.camera import Intrinsics, axis_angle_to_matrix, crop_image, crop_intrinsics, project, transform
from face3d.color import srgb_to_linear
from face3d.filters import opening
from face3d.lighting import estimate_sh, irradiance, sh_basis
from face3d.morphable_model import MorphableModel
from face3d.render import Renderer, RenderSettings, interpolate_vertex_attributes

__all__ = ["PhotometricSettings", "PhotometricResult", "refine_photometric", "clean_occlusion"]


@dataclass
class PhotometricSettings:
    """Settings of :func:`refine_photometric`; see the module doc.

    * ``iterations`` / ``lr``: Adam steps and step size.
    * ``resolution``: long side (px) of the crop the loss is computed on.
    * ``robust_scale`` / ``outlier_factor``: s of the Geman–McClure function, linear RGB
      units: the larger of ``robust_scale`` and ``outlier_factor`` × the median colour
      residual of the initial fit on this face.
    * ``trim`` / ``trim_rounds``: the initial lighting is fitted to the ``trim`` fraction of
      face pixels it explains best, refitted ``trim_rounds`` times (trimmed least squares).
    * ``refine_shape``: also refine α, β and the pose.
    * ``landmark_weight``: weight of the landmark term (per px²) against the photometric term.
    * ``prior_weight``: weight of ‖α/ξ‖² + ‖β/ξ‖² + ‖δ/ξ‖².
    """

    iterations: int = 30
    lr: float = 0.003
    resolution: int = 192
    robust_scale: float = 0.05
    outlier_factor: float = 3.0
    trim: float = 0.6
    trim_rounds: int = 4
    refine_shape: bool = False
    landmark_weight: float = 1e-3
    prior_weight: float = 1e-4


@dataclass
class PhotometricResult:
    """Output of :func:`refine_photometric`.

    * ``sh`` (B, 27): lighting, ambient-0 convention of :mod:`face3d.lighting`.
    * ``albedo`` (B, N, 3): per-vertex linear albedo (gain and δ applied).
    * ``alpha``, ``beta``, ``R``, ``t``: the (possibly refined) fit.
    * ``skin`` (B, 1, H, W): robust per-pixel weight in the photo's frame, 1 where the render
      explains the photo, → 0 on occluders; 0 off the face.
    * ``face_mask`` (B, 1, H, W): pixels the rendered face covers.
    * ``loss`` (list of floats): the objective per iteration.
    """

    sh: Tensor
    albedo: Tensor
    alpha: Tensor
    beta: Tensor
    R: Tensor
    t: Tensor
    skin: Tensor
    face_mask: Tensor
    loss: list[float] = field(default_factory=list)

    def occlusion(self) -> Tensor:
        """(B, 1, H, W): 1 on face pixels the model does not explain (w < ½), else 0."""
        return self.face_mask * (self.skin < 0.5).to(self.skin.dtype)


def _to_image_frame(values: Tensor, offset: Tensor, scale: Tensor, height: int, width: int) -> Tensor:
    """Map a crop-space map (B, C, h, w) back into the photo's frame (B, C, H, W), 0 outside."""
    b, _, h, w = values.shape
    dt, dev = values.dtype, values.device
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dt, device=dev), torch.arange(width, dtype=dt, device=dev),
                            indexing="ij")
    cx = (xs[None] - offset[:, 0, None, None] + 0.5) * scale[:, None, None] - 0.5
    cy = (ys[None] - offset[:, 1, None, None] + 0.5) * scale[:, None, None] - 0.5
    grid = torch.stack([(cx + 0.5) / w * 2 - 1, (cy + 0.5) / h * 2 - 1], -1)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _coloured_grey_light(colours: Tensor, albedo: Tensor, normals: Tensor, weights: Tensor) -> Tensor:
    """SH lighting (B, 27) of one spatial pattern γ (9) times a colour (3), by least squares.

    12 unknowns instead of 27: a light whose colour does not vary over the sphere. An
    occluder of another colour (a green cup, a blue mask) cannot be explained by such a
    light, which makes the robust start below reliable; the descent afterwards frees all 27.
    """
    grey = estimate_sh(colours.mean(-1, keepdim=True).expand_as(colours), albedo.mean(-1, keepdim=True).expand_as(albedo),
                       normals, weights=weights, frame="camera")[:, :9]  # (B, 9)
    grey_light = (sh_basis(normals, frame="camera") @ grey[..., None])  # (B, M, 1)
    pred = albedo * grey_light
    gain = (weights[..., None] * pred * colours).sum(1) / (weights[..., None] * pred * pred).sum(1).clamp_min(1e-12)
    return (gain[:, :, None] * grey[:, None, :]).reshape(colours.shape[0], 27)


def refine_photometric(image: Tensor, model: MorphableModel, alpha: Tensor, beta: Tensor, R: Tensor, t: Tensor,
                       intrinsics: Intrinsics, landmarks: Optional[Tensor] = None,
                       settings: Optional[PhotometricSettings] = None,
                       renderer: Optional[Renderer] = None) -> PhotometricResult:
    """Fit lighting and albedo (and optionally shape and pose) to the photo; module doc.

    Args:
        image: (B, 3, H, W) photo, sRGB in [0, 1].
        model: the 3DMM the fit belongs to.
        alpha, beta: (B, K) coefficients; R (B, 3, 3), t (B, 3): model→camera pose (mm).
        intrinsics: the photo's camera (batch B).
        landmarks: (B, 68, 2) detected landmarks (pixels), used with ``refine_shape``.
    """
    settings = settings or PhotometricSettings()
    b, _, height, width = image.shape
    dev, dt = model.device, model.dtype
    intrinsics = intrinsics.to(dev, dt)
    alpha, beta, R, t = (x.detach().to(dev, dt) for x in (alpha, beta, R, t))

    with torch.no_grad():
        verts0 = transform(model.shape(alpha, beta), R, t)
        cam, h, w, offset, scale = crop_intrinsics(project(verts0, intrinsics), intrinsics, settings.resolution)
        crop, inside = crop_image(image.to(device=dev, dtype=dt), h, w, offset, scale)
        target = srgb_to_linear(crop)
    renderer = renderer or Renderer(RenderSettings(image_size=(h, w), sh_ambient=0.0, clamp=False))
    if renderer.settings.size != (h, w):
        renderer = Renderer(RenderSettings(image_size=(h, w), sh_ambient=0.0, clamp=False,
                                           backend=renderer.settings.backend))
    skin_vertex = model.skin_mask.view(-1, 1)

    # Initial lighting, robustly: a single-colour light (12 unknowns) fitted by trimmed least
    # squares (refit on the ``trim`` fraction of pixels it explains best, a few rounds), so
    # an occluder covering a good part of the face does not set the light; plain least
    # squares over 27 coefficients would (2nd-order SH can darken the middle of a convex
    # face channel by channel), and the robust descent would then start from it.
    with torch.no_grad():
        out = renderer.render(verts0, model.triangles, cam, albedo=model.albedo(batch=b))
        skin_px = interpolate_vertex_attributes(out.fragments, skin_vertex, model.triangles).permute(0, 3, 1, 2)
        base = (out.mask * inside * skin_px).flatten(1) > 0.5
        colours = target.flatten(2).transpose(1, 2)
        rho0 = out.image.flatten(2).transpose(1, 2)
        n0 = out.normals.flatten(2).transpose(1, 2)
        keep = base
        for _ in range(settings.trim_rounds):
            sh0 = _coloured_grey_light(colours, rho0, n0, keep.to(dt))
            r2 = ((rho0 * irradiance(n0, sh0, frame="camera") - colours) ** 2).sum(-1)
            r2 = torch.where(base, r2, torch.full_like(r2, float("inf")))
            k = (base.sum(1).float() * settings.trim).long().clamp_min(1)
            cut = torch.sort(r2, dim=1).values.gather(1, (k - 1)[:, None])
            keep = base & (r2 <= cut)

        # The robust scale follows the photo: a real face has detail no 3DMM explains
        # (brows, stubble, make-up), so residuals are only outliers well above their typical
        # size on this face. s = max(robust_scale, outlier_factor × median residual).
        r_face = torch.where(keep, r2, torch.full_like(r2, float("nan"))).sqrt()
        typical = torch.nanmedian(r_face, dim=1).values.nan_to_num(0.0)
        s2 = torch.clamp(settings.outlier_factor * typical, min=settings.robust_scale)[:, None, None, None] ** 2

    sh = sh0.clone().requires_grad_(True)
    log_gain = torch.zeros(b, 3, dtype=dt, device=dev, requires_grad=True)
    params = [sh, log_gain]
    delta = torch.zeros(b, model.n_albedo, dtype=dt, device=dev, requires_grad=model.n_albedo > 0)
    if model.n_albedo > 0:
        params.append(delta)
    if settings.refine_shape:
        alpha_v, beta_v = alpha.clone().requires_grad_(True), beta.clone().requires_grad_(True)
        rot = torch.zeros(b, 3, dtype=dt, device=dev, requires_grad=True)
        shift = torch.zeros(b, 3, dtype=dt, device=dev, requires_grad=True)
        params += [alpha_v, beta_v, rot, shift]
    else:
        alpha_v, beta_v, rot, shift = alpha, beta, None, None
    opt = torch.optim.Adam(params, lr=settings.lr)
    history: list[float] = []

    def current_vertices() -> tuple[Tensor, Tensor, Tensor]:
        if rot is None:
            return verts0, R, t
        R_cur = axis_angle_to_matrix(rot) @ R
        t_cur = t + shift * 10.0  # one unit of `shift` = 10 mm: keeps Adam's steps comparable
        return transform(model.shape(alpha_v, beta_v), R_cur, t_cur), R_cur, t_cur

    for _ in range(settings.iterations):
        opt.zero_grad(set_to_none=True)
        verts, _, _ = current_vertices()
        albedo = model.albedo(delta if model.n_albedo > 0 else None, batch=b) * log_gain.exp()[:, None, :]
        out = renderer.render(verts, model.triangles, cam, albedo=albedo, sh=sh)
        m = (out.mask * inside).detach()
        r2 = ((out.image - target) ** 2).sum(1, keepdim=True)
        loss = (m * r2 / (r2 + s2)).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1.0)
        if model.n_albedo > 0:
            loss = loss + settings.prior_weight * ((delta / model.albedo_std) ** 2).sum(-1)
        if rot is not None:
            loss = loss + settings.prior_weight * model.prior_energy(alpha_v, beta_v)
            if landmarks is not None:
                lm2d = project(model.landmarks(verts), intrinsics)
                ok = torch.isfinite(landmarks).all(-1)
                diff = torch.where(ok[..., None], lm2d - landmarks.to(dt).nan_to_num(), torch.zeros_like(lm2d))
                loss = loss + settings.landmark_weight * (diff ** 2).sum((1, 2)) / ok.sum(1).clamp_min(1)
        total = loss.sum()
        total.backward()
        opt.step()
        history.append(float(total.detach()) / b)

    with torch.no_grad():
        verts, R_fin, t_fin = current_vertices()
        albedo = model.albedo(delta if model.n_albedo > 0 else None, batch=b) * log_gain.exp()[:, None, :]
        out = renderer.render(verts, model.triangles, cam, albedo=albedo, sh=sh)
        r2 = ((out.image - target) ** 2).sum(1, keepdim=True)
        w_px = (s2 / (r2 + s2)) ** 2 * out.mask
        skin = _to_image_frame(w_px, offset, scale, height, width)
        face = _to_image_frame(out.mask, offset, scale, height, width)
        return PhotometricResult(sh=sh.detach(), albedo=albedo.clamp(0.0, 1.0), alpha=alpha_v.detach(),
                                 beta=beta_v.detach(), R=R_fin.detach(), t=t_fin.detach(), skin=skin,
                                 face_mask=(face > 0.5).to(dt), loss=history)


#: iBUG-68 index groups whose regions are never called occluded: the model's eyes, brows and
#: lips rarely match the photo's, and treating them as occluders would erase them.
_KEEP_REGIONS = (tuple(range(36, 42)), tuple(range(42, 48)), tuple(range(17, 22)), tuple(range(22, 27)),
                 tuple(range(48, 60)))


def clean_occlusion(occlusion: Tensor, landmarks: Optional[Tensor] = None, face_size_px: Optional[Tensor] = None,
                    opening_frac: float = 0.04) -> Tensor:
    """Keep only solid occluders in a residual-based occlusion map.

    ``occlusion`` (B, 1, H, W) in [0, 1]. Thin structures (wrinkles, eyelids, a strand
    of hair) are removed by a morphological opening whose radius is ``opening_frac`` × the face
    size (``face_size_px`` (B,), e.g. √(box area)); with ``landmarks`` (B, 68, 2) the
    eyes, brows and lips (dilated by the same radius) are never marked occluded, as
    CFR-GAN excludes the eyes from its occlusion mask through the landmarks.
    """
    from PIL import Image, ImageDraw

    b, _, h, w = occlusion.shape
    out = occlusion.clone()
    for i in range(b):
        size = float(face_size_px[i]) if face_size_px is not None else float(min(h, w)) / 2.0
        r = max(1.0, opening_frac * size)
        # morphology at a resolution where the radius is ~3 px: the same result for a smooth
        # mask, and it costs nothing even on a 20-megapixel photo
        f = max(1, int(r // 3))
        small = F.avg_pool2d(out[i:i + 1], f, ceil_mode=True) if f > 1 else out[i:i + 1]
        m = opening(small, max(1, int(round(r / f))))
        if f > 1:
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        if landmarks is not None:
            keep = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(keep)
            pts = landmarks[i].detach().cpu().numpy()
            for group in _KEEP_REGIONS:
                poly = [tuple(map(float, pts[j])) for j in group]
                draw.polygon(poly, fill=255)
                draw.line(poly + [poly[0]], fill=255, width=int(2 * r))
            keep_t = torch.from_numpy(np.array(keep)).to(out) / 255.0
            m = m * (1.0 - keep_t)
        out[i:i + 1] = m
    return out
