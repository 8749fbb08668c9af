"""UV texture from a photo: project the photo onto the fitted mesh (R_p of CFR-GAN §3.2).

Each texel of the model's UV map is a point on the surface. Under the fitted pose the
point projects into the photo; its colour is taken from there when the camera sees it:

* **visible** — not hidden behind another part of the face (depth test against the
  rendered depth buffer, ``depth_tolerance_mm``), inside the image and not marked as
  occluded by an optional occlusion mask;
* **frontal enough** — the angle between the surface normal and the ray to the camera is
  below ``max_angle_deg``; the weight falls off smoothly over the last ``falloff_deg``
  so grazing texels (smeared in the photo) fade out instead of ending at a hard edge.

Texels that the photo does not show are filled from their **mirror texel** (the texel at
the point reflected in the model's x = 0 plane) where that one is visible, else from a
**fill colour**, usually the model albedo lit like the photo. The three sources are mixed
with continuous weights, smoothed over the surface, so no seam shows where one takes over
from another: ``c = w·c_photo + (1 − w)·(w_m·c_mirror + (1 − w_m)·c_fill)``.

Texture convention: (B, 3, S, S) sRGB-encoded in [0, 1]; row 0 is v = 1 (OBJ/PNG
convention: the image as it is saved). Texel (row i, column j) has its centre at
u = (j + 0.5)/S, v = 1 − (i + 0.5)/S.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.camera import Intrinsics, project, vertex_normals
from face3d.color import linear_to_srgb
from face3d.io_utils import write_bytes_atomic
from face3d.filters import blur_masked, erode
from face3d.morphable_model import MorphableModel
from face3d.render import get_rasterizer, vertex_visibility
from face3d.render.rasterizer import Rasterizer

__all__ = ["TextureSettings", "UVLayout", "TextureResult", "uv_layout", "project_texture", "texels_to_image"]


@dataclass
class TextureSettings:
    """Texture projection settings (defaults suit a 1024² texture of a face photo).

    * ``size``: texture side S in texels.
    * ``max_angle_deg`` / ``falloff_deg``: texels seen more obliquely than ``max_angle_deg``
      get no photo colour; the weight ramps from 1 to 0 over the ``falloff_deg`` before it.
    * ``depth_tolerance_mm``: slack of the visibility depth test.
    * ``mirror_fill``: fill unseen texels from their mirror texel where it is seen.
    * ``blend_mm``: width (mm on the surface, via the UV scale) of the Gaussian that smooths
      the source weights so changes of source do not leave a seam.
    * ``padding``: texels of colour bled outward from each UV island, so bilinear
      sampling at island borders does not pick up the empty background.
    """

    size: int = 1024
    max_angle_deg: float = 80.0
    falloff_deg: float = 25.0
    depth_tolerance_mm: float = 3.0
    mirror_fill: bool = True
    blend_mm: float = 2.0
    padding: int = 8

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 8192:
            raise ValueError(f"texture size must be within 16..8192, got {self.size}")
        if not 0 <= self.padding <= PAD_LIMIT:
            raise ValueError(f"padding must be within 0..{PAD_LIMIT} texels, got {self.padding}")
        if not 0 < self.max_angle_deg <= 90 or not 0 <= self.falloff_deg < self.max_angle_deg:
            raise ValueError("need 0 < max_angle_deg <= 90 and 0 <= falloff_deg < max_angle_deg")


@dataclass
class UVLayout:
    """Texel ↔ surface correspondence of a model's UV map at one resolution.

    * ``texel`` (P,) long: flat index (row-major, row 0 = v = 1) of each covered texel.
    * ``tri`` (P,) long and ``bary`` (P, 3): the triangle and barycentrics of its centre.
    * ``mirror`` (P,) long: index into the P texels of the texel at the mirrored surface
      point, −1 where none lies within 2 mm of it.
    * ``mm_per_texel``: median surface length of one texel step (for sizes in mm).
    * ``pad_source`` (S·S,) long: for each texel, the flat index of the nearest covered
      texel (itself when covered), −1 beyond ``PAD_LIMIT`` texels from any: island padding
      is then a single gather.
    """

    size: int
    texel: Tensor
    tri: Tensor
    bary: Tensor
    mirror: Tensor
    mm_per_texel: float
    pad_source: Tensor

    def to(self, device: torch.device | str) -> "UVLayout":
        return UVLayout(self.size, self.texel.to(device), self.tri.to(device), self.bary.to(device),
                        self.mirror.to(device), self.mm_per_texel, self.pad_source.to(device))


#: Largest island padding a layout supports (texels).
PAD_LIMIT = 32


def uv_layout(model: MorphableModel, size: int, rasterizer: Optional[Rasterizer] = None,
              cache_dir: Optional[str | os.PathLike] = None) -> UVLayout:
    """Rasterize ``model``'s UV map at ``size``² and find each texel's mirror texel.

    It costs about a second at 1024² and is the same for every photo: keep the result
    (:class:`face3d.pipeline.Reconstructor` does), or give ``cache_dir`` to store it on
    disk keyed by the model's content hash and the size.
    """
    cache_file = None
    digest = str(model.meta.get("source_sha256", ""))
    if cache_dir is not None and digest:
        key = hashlib.sha256(f"{digest}:{model.name}:{model.n_vertices}:{size}:v1".encode()).hexdigest()[:24]
        cache_file = Path(cache_dir) / f"uv_layout_{key}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    return UVLayout(size, *(torch.from_numpy(z[k]) for k in ("texel", "tri", "bary", "mirror")),
                                    float(z["mm_per_texel"]), torch.from_numpy(z["pad_source"])).to(model.device)
            except (OSError, KeyError, ValueError):
                pass  # unreadable cache: compute it again
    from scipy.spatial import cKDTree

    cpu = torch.device("cpu")
    rast = rasterizer or get_rasterizer("auto", cpu)
    uvs = model.uvs.detach().to(cpu, torch.float64)
    screen = torch.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5, torch.ones_like(uvs[:, 0])], -1)
    frags = rast(screen[None], model.uv_triangles.to(cpu), size, size, perspective=False)
    texel, tri, bary = frags.pix, frags.pix_tri, frags.pix_bary
    mean = model.mean_shape.detach().to(cpu, torch.float64)
    pos = (mean[model.triangles.to(cpu)[tri]] * bary[..., None]).sum(1).numpy()
    tree = cKDTree(pos)
    dist, idx = tree.query(pos * np.array([-1.0, 1.0, 1.0]), distance_upper_bound=2.0, workers=-1)
    mirror = np.where(np.isfinite(dist), idx, -1)
    # one texel step in mm: distance to the texel to the right, where that texel exists
    right = torch.searchsorted(texel, texel + 1)
    has_right = (right < len(texel)) & (texel[right.clamp_max(len(texel) - 1)] == texel + 1)
    step = np.linalg.norm(pos[has_right.numpy()] - pos[right[has_right].numpy()], axis=1)
    from scipy.ndimage import distance_transform_edt

    covered = np.zeros(size * size, bool)
    covered[texel.numpy()] = True
    dist, (iy, ix) = distance_transform_edt(~covered.reshape(size, size), return_indices=True)
    pad_source = np.where(dist.ravel() <= PAD_LIMIT, (iy * size + ix).ravel(), -1)
    layout = UVLayout(size, texel, tri, bary.float(), torch.as_tensor(mirror, dtype=torch.long),
                      float(np.median(step)) if len(step) else 1.0, torch.as_tensor(pad_source, dtype=torch.long))
    if cache_file is not None:
        buf = io.BytesIO()
        np.savez(buf, texel=texel.numpy(), tri=tri.numpy(), bary=layout.bary.numpy(), mirror=layout.mirror.numpy(),
                 mm_per_texel=np.float64(layout.mm_per_texel), pad_source=layout.pad_source.numpy())
        try:
            write_bytes_atomic(cache_file, buf.getvalue(), make_parents=True)
        except OSError:
            pass  # a read-only cache only costs time
    return layout.to(model.device)


@dataclass
class TextureResult:
    """Output of :func:`project_texture`; all (B, C, S, S).

    * ``texture`` (B, 3, S, S): sRGB in [0, 1], every covered texel filled, padded.
    * ``photo_weight`` (B, 1, S, S): how much of each texel comes from the photo directly.
    * ``mirror_weight`` (B, 1, S, S): how much comes from the mirror texel.
    * ``coverage`` (1, 1, S, S): 1 on texels that lie on the surface.
    """

    texture: Tensor
    photo_weight: Tensor
    mirror_weight: Tensor
    coverage: Tensor


def texels_to_image(layout: UVLayout, values: Tensor, fill: float = 0.0) -> Tensor:
    """Per-texel values (B, P, C) → texture image (B, C, S, S), ``fill`` off the surface."""
    b, _, c = values.shape
    out = values.new_full((b, layout.size * layout.size, c), fill)
    out[:, layout.texel] = values
    return out.permute(0, 2, 1).reshape(b, c, layout.size, layout.size)


def _smooth_weights(layout: UVLayout, weight: Tensor, sigma: float) -> Tensor:
    """Erode per-texel weights (B, P) by 2σ, then Gaussian-smooth them by σ (texels) over the
    surface; returns (B, P).

    After both, the weight decays continuously to ~0 at the edge of what the photo shows
    instead of stepping down there. Off-surface texels count as 1 for the erosion (UV island
    borders are not visibility borders) and are left out of the smoothing. The weights are
    smooth by construction, so the filtering runs at a resolution where σ is ~2 texels.
    """
    img = texels_to_image(layout, weight[..., None], fill=1.0)
    cov = texels_to_image(layout, torch.ones_like(weight[:1, :, None]))
    f = max(1, int(sigma // 2))
    if f > 1:
        img, cov = F.avg_pool2d(img, f, ceil_mode=True), F.avg_pool2d(cov, f, ceil_mode=True)
    s = sigma / f
    img = blur_masked(erode(img, int(math.ceil(2.0 * s))), (cov > 0).to(img.dtype), s)
    if f > 1:
        img = F.interpolate(img, scale_factor=f, mode="bilinear", align_corners=False)
        img = img[..., : layout.size, : layout.size]
    return img.flatten(2)[:, 0, layout.texel]


def _pad_islands(layout: UVLayout, texture: Tensor, padding: int) -> Tensor:
    """Copy each uncovered texel within ``padding`` of a UV island from its nearest covered texel."""
    b, c, h, w = texture.shape
    flat = texture.reshape(b, c, -1)
    src = layout.pad_source.to(texture.device)
    if padding < PAD_LIMIT:
        own = torch.arange(src.numel(), device=src.device)
        # distance check through the source index: keep only sources within `padding` texels
        dy = (src // w - own // w).abs()
        dx = (src % w - own % w).abs()
        src = torch.where((dx * dx + dy * dy <= padding * padding) & (src >= 0), src, torch.full_like(src, -1))
    filled = flat[:, :, src.clamp_min(0)]
    out = torch.where(src[None, None] >= 0, filled, torch.zeros_like(filled))
    return out.view(b, c, h, w)


def project_texture(image: Tensor, vertices: Tensor, model: MorphableModel, intrinsics: Intrinsics,
                    settings: Optional[TextureSettings] = None, fill: Optional[Tensor] = None,
                    occlusion: Optional[Tensor] = None, layout: Optional[UVLayout] = None,
                    rasterizer: Optional[Rasterizer] = None) -> TextureResult:
    """Project a photo onto a fitted mesh into the model's UV map.

    Args:
        image: (B, 3, H, W) photo, sRGB in [0, 1].
        vertices: (B, N, 3) fitted vertices in the camera frame, mm.
        model: gives triangles, UVs and the mirror-symmetric mean shape.
        intrinsics: the camera the vertices were fitted with (batch B).
        settings: :class:`TextureSettings`.
        fill: (B, N, 3) sRGB per-vertex colour for texels neither the photo nor the mirror
            shows; default: the model's mean albedo.
        occlusion: (B, 1, H, W) in [0, 1], 1 where something covers the face (hands,
            glasses): those pixels are not projected.
        layout: a precomputed :func:`uv_layout` (computed and cached otherwise).
    Returns:
        :class:`TextureResult`.
    """
    settings = settings or TextureSettings()
    b, _, h, w = image.shape
    if vertices.shape[0] != b or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W) and vertices (B, N, 3) with the same B, got "
                         f"{tuple(image.shape)} and {tuple(vertices.shape)}")
    layout = layout or uv_layout(model, settings.size, rasterizer)
    dev, dt = vertices.device, vertices.dtype
    tris = model.triangles.to(dev)
    corner = tris[layout.tri.to(dev)]  # (P, 3)
    bary = layout.bary.to(dev, dt)

    def at_texels(per_vertex: Tensor) -> Tensor:
        # three weighted gathers: avoids materialising a (B, P, 3, C) tensor
        out = per_vertex[:, corner[:, 0]] * bary[None, :, 0, None]
        out += per_vertex[:, corner[:, 1]] * bary[None, :, 1, None]
        out += per_vertex[:, corner[:, 2]] * bary[None, :, 2, None]
        return out  # (B, P, C)

    with torch.no_grad():
        pos = at_texels(vertices)
        normal = F.normalize(at_texels(vertex_normals(vertices, tris)), dim=-1)
        xy = project(pos, intrinsics.to(dev, dt))
        rast = rasterizer or get_rasterizer("auto", dev)
        sv = torch.cat([project(vertices, intrinsics.to(dev, dt)), vertices[..., 2:3]], -1)
        frags = rast(sv, tris, h, w, perspective=True)
        seen = vertex_visibility(torch.cat([xy, pos[..., 2:3]], -1), frags.depth, frags.mask,
                                 tolerance=settings.depth_tolerance_mm)
        # cosine between the normal and the direction to the camera (camera at the origin)
        cos = -(normal * F.normalize(pos, dim=-1)).sum(-1)
        lo = math.cos(math.radians(settings.max_angle_deg))
        hi = math.cos(math.radians(settings.max_angle_deg - settings.falloff_deg))
        ramp = ((cos - lo) / max(hi - lo, 1e-6)).clamp(0.0, 1.0)
        weight = seen.to(dt) * (ramp * ramp * (3.0 - 2.0 * ramp))  # smoothstep

        grid = torch.stack([(xy[..., 0] + 0.5) / w * 2.0 - 1.0, (xy[..., 1] + 0.5) / h * 2.0 - 1.0], -1)[:, :, None]
        colour = F.grid_sample(image.to(dt), grid, mode="bilinear", padding_mode="border",
                               align_corners=False)[..., 0].permute(0, 2, 1)  # (B, P, 3)
        if occlusion is not None:
            occ = F.grid_sample(occlusion.to(dt), grid, mode="bilinear", padding_mode="border",
                                align_corners=False)[..., 0].permute(0, 2, 1)
            weight = weight * (1.0 - occ[..., 0].clamp(0.0, 1.0))

        if fill is None:
            fill = linear_to_srgb(model.mean_albedo)[None].expand(b, -1, -1)
        fill_colour = at_texels(fill.to(dev, dt))

        sigma = settings.blend_mm / max(layout.mm_per_texel, 1e-6)
        weight_s = _smooth_weights(layout, weight, sigma) * (weight > 0).to(dt)
        mirror = layout.mirror.to(dev)
        has_mirror = (mirror >= 0) & settings.mirror_fill
        m_idx = mirror.clamp_min(0)
        mirror_weight = torch.where(has_mirror[None], weight_s[:, m_idx], torch.zeros_like(weight_s))
        mirror_colour = colour[:, m_idx]
        rest = (1.0 - weight_s)[..., None]
        mixed = (weight_s[..., None] * colour
                 + rest * (mirror_weight[..., None] * mirror_colour + (1.0 - mirror_weight[..., None]) * fill_colour))

        texture = texels_to_image(layout, mixed)
        coverage = texels_to_image(layout, torch.ones(1, len(layout.texel), 1, dtype=dt, device=dev))
        texture = _pad_islands(layout, texture, settings.padding).clamp(0.0, 1.0)
        return TextureResult(
            texture=texture,
            photo_weight=texels_to_image(layout, weight_s[..., None]),
            mirror_weight=texels_to_image(layout, (rest[..., 0] * mirror_weight)[..., None]),
            coverage=coverage,
        )
