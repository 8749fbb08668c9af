"""High-level renderer: camera-frame mesh → shaded image, mask, depth and normals.

Pipeline: project the camera-frame vertices to screen space (perspective with the
intrinsics, or weak perspective), rasterize (any backend; visibility only), recompute
barycentrics and depth in torch, interpolate per-vertex normals and albedo (or UVs, then
sample the texture), shade with SH lighting (:mod:`face3d.lighting`, normals converted
from the camera frame to Deng et al.'s view frame), composite over the background.
Everything after the rasterizer's visibility decision is differentiable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import torch
from torch import Tensor

from face3d.camera import Intrinsics, project, project_weak, vertex_normals
from face3d.lighting import DENG_AMBIENT, NUM_SH, SH_CONSTANTS
from face3d.render.fragments import Fragments, barycentric_sum, channels_first
from face3d.render.interpolate import interpolate_corner_packed, interpolate_vertex_packed, sample_texture
from face3d.render.rasterizer import Rasterizer, get_rasterizer

__all__ = ["RenderSettings", "RenderOutput", "Renderer"]


@dataclass
class RenderSettings:
    """How to render.

    * ``image_size``: (H, W) in pixels, or one int for a square image.
    * ``backend``: rasterizer name for :func:`~face3d.render.get_rasterizer` ("auto", "torch",
      "open3d", "pytorch3d").
    * ``background``: RGB of uncovered pixels, linear, in [0, 1].
    * ``sh_ambient``: added to SH coefficient 0 of each channel; Deng et al.'s 0.8 by default
      (see :mod:`face3d.lighting`), so ``sh = 0`` is a uniform white light.
    * ``projection``: "perspective" (pinhole with the intrinsics; perspective-correct
      interpolation) or "weak" (:func:`face3d.camera.project_weak`: every vertex scaled by
      f / mean z; orthographic interpolation; the depth output is still camera-frame z).
    * ``clamp``: clip the image to [0, 1] (saturated pixels then pass no gradient).
    """

    image_size: int | tuple[int, int] = 224
    backend: str = "auto"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sh_ambient: float = DENG_AMBIENT
    projection: str = "perspective"
    clamp: bool = True

    def __post_init__(self) -> None:
        if self.projection not in ("perspective", "weak"):
            raise ValueError(f"projection must be 'perspective' or 'weak', got {self.projection!r}")
        h, w = self.size
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        h, w = self.image_size
        return int(h), int(w)


@dataclass
class RenderOutput:
    """Result of :meth:`Renderer.render`.

    * ``image`` (B, 3, H, W): linear RGB, in [0, 1] when ``clamp`` is set.
    * ``mask`` (B, 1, H, W): 1 where the mesh covers the pixel centre, else 0 (float).
    * ``depth`` (B, 1, H, W): camera-frame z in mm of the visible surface, 0 on background.
    * ``normals`` (B, 3, H, W): unit surface normals in the **camera frame** (OpenCV), 0 on background.
    * ``fragments``: the rasterization (:class:`~face3d.render.fragments.Fragments`).
    * ``screen_vertices`` (B, N, 3): (x_px, y_px, z_mm) the rasterizer saw (for visibility tests).
    * ``pixel_normals`` (3, P): ``normals`` at the covered pixels, packed (fragments order).

    ``depth`` and ``normals`` are scattered into images on first access (a fitting loop that
    only compares images does not pay for them); all outputs are differentiable.
    """

    image: Tensor
    mask: Tensor
    fragments: Fragments
    screen_vertices: Tensor
    pixel_normals: Tensor

    @cached_property
    def depth(self) -> Tensor:
        return self.fragments.depth[:, None]

    @cached_property
    def normals(self) -> Tensor:
        return self.fragments.scatter(self.pixel_normals)


def _sh_quadratic_forms(dtype: torch.dtype, device: torch.device) -> Tensor:
    """(9, 4, 4) symmetric T_k with H_k(n) = n̂ᵀ T_k n̂ for a unit **camera-frame** normal n and
    n̂ = (n_x, n_y, n_z, 1): the basis of :func:`face3d.lighting.sh_basis` (Deng et al.'s
    constants, view frame (x, −y, −z)) written as quadratic forms, so that the irradiance
    Σ_k γ_k H_k(n) = n̂ᵀ (Σ_k γ_k T_k) n̂ costs one small matmul per pixel batch."""
    a0, a1, a2, c0, c1, c2 = SH_CONSTANTS
    k1, k2 = a1 * c1, a2 * c2
    c6 = 0.5 * k2 / math.sqrt(3.0)
    x, y, z, w = range(4)
    t = [[[0.0] * 4 for _ in range(4)] for _ in range(NUM_SH)]
    entries = [
        (0, w, w, a0 * c0),
        (1, y, w, k1),  # −k1·y_view = k1·y
        (2, z, w, -k1),  # k1·z_view = −k1·z
        (3, x, w, -k1),  # −k1·x_view
        (4, x, y, -k2),  # k2·x_view·y_view = −k2·x·y
        (5, y, z, -k2),  # −k2·y_view·z_view = −k2·y·z
        (6, z, z, 3.0 * c6), (6, w, w, -c6),  # c6·(3 z² − 1)
        (7, x, z, k2),  # −k2·x_view·z_view = k2·x·z
        (8, x, x, 0.5 * k2), (8, y, y, -0.5 * k2),  # k2/2 · (x² − y²)
    ]
    for k, i, j, v in entries:  # off-diagonal terms split over (i, j) and (j, i)
        t[k][i][j] += v / 2.0
        t[k][j][i] += v / 2.0
    return torch.tensor(t, dtype=dtype, device=device)


def _packed_irradiance(frags: Fragments, normals: Tensor, sh: Tensor, ambient: float) -> Tensor:
    """SH irradiance (3, P) of packed unit camera-frame normals (3, P), each pixel lit by its item's ``sh``.

    Same values as :func:`face3d.lighting.irradiance`, evaluated as the quadratic forms of
    :func:`_sh_quadratic_forms`: per item M_c = Σ_k γ_ck T_k (3·4 × 4), then E_c = n̂ᵀ M_c n̂
    — a (12, 4) @ (4, P) matmul and a multiply-add instead of building the 9 basis rows.
    """
    g = sh.view(-1, 3, NUM_SH)
    if ambient:
        g = g + g.new_tensor([ambient] + [0.0] * (NUM_SH - 1))
    forms = (g @ _sh_quadratic_forms(normals.dtype, normals.device).view(NUM_SH, 16)).view(-1, 12, 4)  # (B, 3·4, 4)

    def quad(m: Tensor, n: Tensor) -> Tensor:
        # rows (M_c n̂)_i = M_c[i, :3] n + M_c[i, 3]; then n̂ᵀ M_c n̂ = Σ_i n_i (M_c n̂)_i + (M_c n̂)_3.
        # unbind, not indexing: each indexed view would cost a full-size zero tensor in backward
        q0, q1, q2, q3 = torch.addmm(m[:, 3:], m[:, :3], n).view(3, 4, -1).unbind(1)
        x, y, z = n.unbind(0)
        return q3.addcmul(q0, x).addcmul_(q1, y).addcmul_(q2, z)

    if forms.shape[0] == 1:
        return quad(forms[0], normals)
    counts = torch.bincount(frags.pix_batch, minlength=forms.shape[0]).tolist()
    return torch.cat([quad(forms[i], part) for i, part in enumerate(torch.split(normals, counts, dim=1))], 1)


def _normalize(v: Tensor) -> Tensor:
    """Unit vectors along dim 0 of a (3, …) tensor (zero vectors stay zero): ``F.normalize(v, dim=0)``
    without its norm kernel, an order of magnitude slower on CPU for a size-3 reduction."""
    return v * (v * v).sum(0).clamp_min(1e-24).rsqrt()


@dataclass
class Renderer:
    """Renders camera-frame meshes; see the module doc and :meth:`render`.

    ``rasterizer`` overrides ``settings.backend`` with a ready instance.
    """

    settings: RenderSettings = field(default_factory=RenderSettings)
    rasterizer: Optional[Rasterizer] = None

    def _rasterizer(self, device: torch.device) -> Rasterizer:
        if self.rasterizer is None:
            self.rasterizer = get_rasterizer(self.settings.backend, device)
        return self.rasterizer

    def screen_vertices(self, vertices: Tensor, intrinsics: Intrinsics) -> Tensor:
        """Camera-frame vertices (B, N, 3) mm → (x_px, y_px, z_mm) with the configured projection."""
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"vertices must be camera-frame (B, N, 3), got shape {tuple(vertices.shape)}")
        intrinsics = intrinsics.to(device=vertices.device, dtype=vertices.dtype)
        if intrinsics.principal.shape[0] != vertices.shape[0]:
            raise ValueError(f"intrinsics have batch {intrinsics.principal.shape[0]}, vertices {vertices.shape[0]}")
        if self.settings.projection == "perspective":
            xy = project(vertices, intrinsics)
        else:
            xy = project_weak(vertices, intrinsics)
        return torch.cat([xy, vertices[..., 2:3]], -1)

    def rasterize(self, vertices: Tensor, triangles: Tensor, intrinsics: Intrinsics) -> Fragments:
        """Fragments of camera-frame vertices (B, N, 3) mm with triangles (F, 3)."""
        h, w = self.settings.size
        sv = self.screen_vertices(vertices, intrinsics)
        return self._rasterizer(vertices.device)(sv, triangles, h, w, self.settings.projection == "perspective")

    def render(self, vertices: Tensor, triangles: Tensor, intrinsics: Intrinsics, albedo: Optional[Tensor] = None,
               sh: Optional[Tensor] = None, texture: Optional[Tensor] = None, uvs: Optional[Tensor] = None,
               uv_triangles: Optional[Tensor] = None, normals: Optional[Tensor] = None) -> RenderOutput:
        """Render a batch of meshes.

        Args:
            vertices: (B, N, 3) camera frame, mm (e.g. from :func:`face3d.camera.transform`).
            triangles: (F, 3) long, counter-clockwise seen from outside.
            intrinsics: :class:`~face3d.camera.Intrinsics` with batch B.
            albedo: (B, N, 3) per-vertex linear RGB in [0, 1]; or give ``texture`` instead.
            sh: (B, 27) SH coefficients, layout and conventions of :mod:`face3d.lighting`
                (``settings.sh_ambient`` is added to coefficient 0). None: unlit (colour = albedo).
            texture: (B or 1, 3, Ht, Wt) UV texture, sampled bilinearly (v up, OBJ convention),
                with ``uvs`` (T, 2) and ``uv_triangles`` (F, 3).
            normals: (B, N, 3) camera-frame vertex normals; default: area-weighted normals
                of ``vertices``.
        """
        if (albedo is None) == (texture is None):
            raise ValueError("give exactly one of albedo (B, N, 3) or texture (B, 3, Ht, Wt)")
        b, n = vertices.shape[:2]
        if albedo is not None and albedo.shape != (b, n, 3):
            raise ValueError(f"albedo must be (B, N, 3) = ({b}, {n}, 3), got {tuple(albedo.shape)}")
        if texture is not None and (uvs is None or uv_triangles is None):
            raise ValueError("a texture needs uvs (T, 2) and uv_triangles (F, 3)")
        if sh is not None and sh.shape != (b, 27):
            raise ValueError(f"sh must be (B, 27) = ({b}, 27), got {tuple(sh.shape)}")
        triangles = triangles.to(device=vertices.device, dtype=torch.long)
        h, w = self.settings.size
        sv = self.screen_vertices(vertices, intrinsics)
        frags = self._rasterizer(vertices.device)(sv, triangles, h, w, self.settings.projection == "perspective")

        if normals is None:
            normals = vertex_normals(vertices, triangles)
        if albedo is not None:
            # normals and albedo in one (6, B·N) table: one gather and one interpolation
            table = torch.cat([channels_first(normals), channels_first(albedo.to(normals.dtype))])
            packed = barycentric_sum(frags.gather_table(table), frags.corner_bary)  # (6, P)
            pix_normals, colour = packed.split(3)  # split, not slicing: one cat in backward
            pix_normals = _normalize(pix_normals)
        else:
            pix_normals = _normalize(interpolate_vertex_packed(frags, normals))  # (3, P)
            uv = frags.scatter(interpolate_corner_packed(frags, uvs.to(vertices), uv_triangles))
            tex = sample_texture(texture.to(vertices.dtype), uv.permute(0, 2, 3, 1))  # (B, 3, H, W)
            colour = tex.transpose(0, 1).reshape(tex.shape[1], -1).index_select(1, frags.pix)
        if sh is not None:
            colour = colour * _packed_irradiance(frags, pix_normals, sh.to(vertices.dtype), self.settings.sh_ambient)

        mask = frags.mask[:, None].to(vertices.dtype)
        bg = self.settings.background
        if self.settings.clamp:  # on the covered pixels only; the background is clamped separately
            colour = colour.clamp(0.0, 1.0)
            bg = tuple(min(max(float(c), 0.0), 1.0) for c in bg)
        image = frags.scatter(colour)
        if any(bg):
            bg_t = torch.as_tensor(bg, dtype=vertices.dtype, device=vertices.device)
            image = image + bg_t.view(1, 3, 1, 1) * (1.0 - mask)
        return RenderOutput(image=image, mask=mask, fragments=frags, screen_vertices=sv, pixel_normals=pix_normals)

    __call__ = render
