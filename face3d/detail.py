"""Shape-from-shading detail on top of a fitted 3DMM (paper 004, §5.4, eq. 9).

Image formation (Lambertian, 2nd-order SH, eq. 9 of Yuan & Park)::

    I(x, y) = ρ(x, y) · l · Y(n(x, y))

Following Kemelmacher-Shlizerman & Basri (2011), lighting l, albedo ρ and normals n are
estimated in turn, starting from the coarse 3DMM fit (its rendered normals n₀ and
albedo), and the refined normals are integrated into a depth *displacement* of the coarse
surface:

1. **lighting** — linear least squares for the 27 SH coefficients given ρ and n;
2. **albedo** — ρ = I / (l·Y(n)), low-passed (Gaussian of ``albedo_sigma_px`` over the
   face mask): what varies faster than that is attributed to geometry, the usual SfS
   trade-off (freckles and eyebrows can leak into the relief; the skin mask keeps the
   eyes, brows and lips out where a model provides one);
3. **depth** — the normals are not estimated pixel by pixel (shading fixes only one of
   their two degrees of freedom) but through the displacement d they integrate to, as
   Kemelmacher-Shlizerman & Basri do: the surface slopes are p = p₀ + ∂ₓd / s,
   q = q₀ + ∂_yd / s (p₀, q₀ those of the coarse fit, s the pixel footprint in mm), the
   normal n(p, q), and one Gauss–Newton step on
   Σ w Σ_c (ρ_c l_c·Y(n) − I_c)² + λ‖∇d‖² + μ‖d‖² is solved by conjugate gradients.
   λ (``smoothness``) trades detail for noise; μ (``screen``) keeps d from drifting into
   the low frequencies the 3DMM already explains. Integrability is built in.

d is camera-frame depth (mm, + = away from the camera), zero off the face.

Everything runs on a crop around the face, resampled so its long side is at most
``max_resolution`` pixels. The estimate is not differentiable (it is a post-process).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.camera import Intrinsics, crop_image, crop_intrinsics, project
from face3d.color import srgb_to_linear
from face3d.filters import blur_masked
from face3d.lighting import estimate_sh, irradiance
from face3d.render import Renderer, RenderSettings, interpolate_vertex_attributes, vertex_visibility

__all__ = ["DetailSettings", "DetailResult", "estimate_detail", "apply_detail"]


@dataclass
class DetailSettings:
    """Shape-from-shading settings; see the module doc.

    * ``strength``: scale of the recovered displacement (the CLI's ``--detail 0..1``).
    * ``iterations``: lighting → albedo → normals rounds.
    * ``albedo_sigma_px``: albedo low-pass width, in crop pixels.
    * ``smoothness``: λ, weight of ‖∇d‖² relative to the mean data curvature.
    * ``screen``: μ, weight of ‖d‖² likewise; 1/√μ is roughly the longest wavelength (px)
      of relief that is kept.
    * ``cg_iterations``: conjugate-gradient iterations per Gauss–Newton step.
    * ``max_depth_mm``: clamp of |d|.
    * ``max_resolution``: long side of the working crop, pixels.
    """

    strength: float = 1.0
    iterations: int = 2
    albedo_sigma_px: float = 8.0
    smoothness: float = 0.01
    screen: float = 2e-3
    cg_iterations: int = 50
    max_depth_mm: float = 4.0
    max_resolution: int = 320

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"detail strength must be within 0..1, got {self.strength}")
        if self.iterations < 1 or self.max_resolution < 32:
            raise ValueError("iterations must be >= 1 and max_resolution >= 32")


@dataclass
class DetailResult:
    """Output of :func:`estimate_detail` (crop space).

    * ``displacement`` (B, 1, h, w): d in mm along camera z (+ = away from the camera).
    * ``normals`` (B, 3, h, w): refined unit normals, camera frame; ``coarse_normals`` likewise.
    * ``albedo`` (B, 3, h, w): estimated linear albedo; ``sh`` (B, 27): the lighting (ambient 0).
    * ``mask`` (B, 1, h, w): pixels where the estimate is defined.
    * ``intrinsics``: the crop camera (project camera-frame points into the crop with it).
    """

    displacement: Tensor
    normals: Tensor
    coarse_normals: Tensor
    albedo: Tensor
    sh: Tensor
    mask: Tensor
    intrinsics: Intrinsics


def _dx(d: Tensor) -> Tensor:
    """Forward difference along x (last dim), 0 in the last column."""
    return F.pad(d[..., 1:] - d[..., :-1], (0, 1))


def _dy(d: Tensor) -> Tensor:
    """Forward difference along y (second-to-last dim), 0 in the last row."""
    return F.pad(d[..., 1:, :] - d[..., :-1, :], (0, 0, 0, 1))


def _dx_t(g: Tensor) -> Tensor:
    """Adjoint of :func:`_dx`."""
    g = F.pad(g[..., :-1], (0, 1))
    return F.pad(g[..., :-1], (1, 0)) - g


def _dy_t(g: Tensor) -> Tensor:
    """Adjoint of :func:`_dy`."""
    g = F.pad(g[..., :-1, :], (0, 0, 0, 1))
    return F.pad(g[..., :-1, :], (0, 0, 1, 0)) - g


def _conjugate_gradient(apply: Callable[[Tensor], Tensor], rhs: Tensor, iterations: int) -> Tensor:
    """Solve apply(x) = rhs for a symmetric positive definite operator, from x = 0."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).sum()
    rr0 = rr.clamp_min(1e-30)
    for _ in range(iterations):
        ap = apply(p)
        alpha = rr / (p * ap).sum().clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum()
        if rr_new <= 1e-12 * rr0:
            break
        p = r + (rr_new / rr.clamp_min(1e-30)) * p
        rr = rr_new
    return x


def _slopes_to_normals(p: Tensor, q: Tensor) -> Tensor:
    """Camera-frame unit normals (..., 3) of a surface z(X, Y) with slopes p = ∂z/∂X, q = ∂z/∂Y
    (facing the camera: n_z < 0)."""
    return F.normalize(torch.stack([p, q, -torch.ones_like(p)], -1), dim=-1)


def _normals_to_slopes(n: Tensor) -> tuple[Tensor, Tensor]:
    nz = n[..., 2].clamp(max=-0.05)  # grazing normals would give unbounded slopes
    return -n[..., 0] / nz, -n[..., 1] / nz


def _gauss_newton_step(intensity: Tensor, rho: Tensor, sh: Tensor, p0: Tensor, q0: Tensor, footprint: Tensor,
                       weights: Tensor, d: Tensor, settings: "DetailSettings") -> Tensor:
    """One Gauss–Newton step on the displacement d (h, w); see the module doc.

    Data term Σ w Σ_c (ρ_c E_c(n(p, q)) − I_c)² with p = p₀ + ∂ₓd / footprint (likewise q);
    regularisers λ‖∇d‖² and μ‖d‖², both relative to the mean data curvature so the
    settings do not depend on the light's strength or the image scale.
    """
    p = (p0 + _dx(d) / footprint).detach().requires_grad_(True)
    q = (q0 + _dy(d) / footprint).detach().requires_grad_(True)
    with torch.enable_grad():
        e = irradiance(_slopes_to_normals(p, q)[None], sh[None], frame="camera")[0]  # (h, w, 3)
        grads = [torch.autograd.grad(e[..., c].sum(), (p, q), retain_graph=c < 2) for c in range(3)]
    e = e.detach()
    a = torch.stack([g[0] for g in grads], -1) * rho / footprint[..., None]  # ∂r_c / ∂(∂ₓd)
    b = torch.stack([g[1] for g in grads], -1) * rho / footprint[..., None]
    r = rho * e - intensity
    w = weights[..., None]
    scale = ((a * a + b * b) * w).sum() / w.sum().clamp_min(1.0) / 3.0
    lam, mu = settings.smoothness * scale, settings.screen * scale

    def jac(x: Tensor) -> Tensor:
        return a * _dx(x)[..., None] + b * _dy(x)[..., None]

    def jac_t(y: Tensor) -> Tensor:
        return _dx_t((a * y).sum(-1)) + _dy_t((b * y).sum(-1))

    def laplacian(x: Tensor) -> Tensor:
        return _dx_t(_dx(x)) + _dy_t(_dy(x))

    def normal_matrix(x: Tensor) -> Tensor:
        return jac_t(w * jac(x)) + lam * laplacian(x) + mu * x

    rhs = -jac_t(w * r) - lam * laplacian(d) - mu * d
    return d + _conjugate_gradient(normal_matrix, rhs, settings.cg_iterations)


def estimate_detail(image: Tensor, vertices: Tensor, triangles: Tensor, intrinsics: Intrinsics,
                    albedo: Tensor, sh: Optional[Tensor] = None, pixel_weights: Optional[Tensor] = None,
                    settings: Optional[DetailSettings] = None, vertex_weights: Optional[Tensor] = None
                    ) -> DetailResult:
    """Recover fine relief from shading; see the module doc.

    Args:
        image: (B, 3, H, W) photo, sRGB in [0, 1].
        vertices: (B, N, 3) coarse fitted mesh, camera frame, mm.
        triangles: (F, 3).
        intrinsics: the photo's camera (batch B).
        albedo: (B, N, 3) per-vertex linear albedo of the fit (the starting ρ).
        sh: (B, 27) lighting (ambient 0, layout of :mod:`face3d.lighting`); estimated from
            the photo and the coarse fit when None.
        pixel_weights: (B, 1, H, W) in [0, 1]: 0 on pixels to ignore (occluders, hair).
        vertex_weights: (N,) in [0, 1]: 0 on surface parts to leave alone (eyes, lips).
    """
    settings = settings or DetailSettings()
    b, _, h_img, w_img = image.shape
    dt, dev = vertices.dtype, vertices.device
    intrinsics = intrinsics.to(dev, dt)
    with torch.no_grad():
        xy = project(vertices, intrinsics)
        cam, h, w, offset, scale = crop_intrinsics(xy, intrinsics, settings.max_resolution)
        crop, inside = crop_image(image.to(dt), h, w, offset, scale)
        weights = inside
        if pixel_weights is not None:
            weights = weights * crop_image(pixel_weights.to(dt), h, w, offset, scale, padding="zeros")[0]

        renderer = Renderer(RenderSettings(image_size=(h, w), sh_ambient=0.0, clamp=False))
        out = renderer.render(vertices, triangles, cam, albedo=albedo.to(dt))
        if vertex_weights is not None:
            per_vertex = vertex_weights.to(dt).view(-1, 1)
            weights = weights * interpolate_vertex_attributes(out.fragments, per_vertex, triangles.to(dev)
                                                              ).permute(0, 3, 1, 2)
        # shrink the mask by two pixels: silhouette pixels mix face and background
        weights = weights * -F.max_pool2d(-out.mask, 5, stride=1, padding=2)
        intensity = srgb_to_linear(crop).permute(0, 2, 3, 1)
        rho0 = out.image.permute(0, 2, 3, 1)
        n0 = out.normals.permute(0, 2, 3, 1)
        sel = weights[:, 0] > 0.5
        if sh is None:
            sh = torch.stack([estimate_sh(intensity[i][sel[i]][None], rho0[i][sel[i]][None], n0[i][sel[i]][None],
                                          frame="camera")[0] for i in range(b)])
        sh = sh.to(dt).clone()
        depth = out.depth[:, 0]
        disp = torch.zeros(b, h, w, dtype=dt, device=dev)
        normals = n0.clone()
        rho = rho0.clone()
        for i in range(b):
            footprint = (depth[i] / cam.fxy()[i, 0]).clamp_min(1e-3)  # mm per pixel
            p0, q0 = _normals_to_slopes(n0[i])
            wi = weights[i, 0]
            d = disp[i]
            for _ in range(settings.iterations):
                n = _slopes_to_normals(p0 + _dx(d) / footprint, q0 + _dy(d) / footprint)
                shading = irradiance(n[None], sh[i:i + 1], frame="camera")[0]
                ratio = (intensity[i] / shading.clamp_min(1e-3)).clamp(0.0, 2.0)
                rho[i] = blur_masked(ratio.permute(2, 0, 1)[None], wi[None, None],
                                      settings.albedo_sigma_px)[0].permute(1, 2, 0)
                d = _gauss_newton_step(intensity[i], rho[i], sh[i], p0, q0, footprint, wi, d, settings)
            disp[i] = d
            normals[i] = _slopes_to_normals(p0 + _dx(d) / footprint, q0 + _dy(d) / footprint)
        # fade out toward the edge of the face so the displaced mesh has no step there
        fade = blur_masked(weights, torch.ones_like(weights), 3.0) * weights
        disp = (disp[:, None] * fade * settings.strength).clamp(-settings.max_depth_mm, settings.max_depth_mm)
        return DetailResult(displacement=disp, normals=normals.permute(0, 3, 1, 2), coarse_normals=out.normals,
                            albedo=rho.permute(0, 3, 1, 2), sh=sh, mask=weights, intrinsics=cam)


def apply_detail(vertices: Tensor, triangles: Tensor, detail: DetailResult) -> Tensor:
    """Displace camera-frame vertices (B, N, 3) by the detail's d, along each vertex's ray.

    A vertex moves along the line through the camera centre, ``X' = X·(z + d)/z``, so its
    image position is unchanged; vertices the crop camera does not see keep their place.
    """
    b, _, h, w = detail.displacement.shape
    with torch.no_grad():
        xy = project(vertices, detail.intrinsics)
        renderer = Renderer(RenderSettings(image_size=(h, w), sh_ambient=0.0))
        frags = renderer.rasterize(vertices, triangles, detail.intrinsics)
        seen = vertex_visibility(torch.cat([xy, vertices[..., 2:3]], -1), frags.depth, frags.mask, tolerance=3.0)
        grid = torch.stack([(xy[..., 0] + 0.5) / w * 2 - 1, (xy[..., 1] + 0.5) / h * 2 - 1], -1)[:, :, None]
        d = F.grid_sample(detail.displacement.to(vertices.dtype), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[:, 0, :, 0]
        d = d * seen.to(vertices.dtype)
        z = vertices[..., 2:3].clamp_min(1e-6)
        return vertices * (z + d[..., None]) / z
