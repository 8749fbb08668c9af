"""Differentiable interpolation of mesh attributes over fragments, and UV texture sampling."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.render.fragments import Fragments, barycentric_sum, channels_first, corner_ids

__all__ = ["interpolate_vertex_packed", "interpolate_corner_packed", "interpolate_vertex_attributes",
           "interpolate_corner_attributes", "sample_texture"]


def interpolate_vertex_packed(fragments: Fragments, attributes: Tensor, triangles: Optional[Tensor] = None) -> Tensor:
    """Per-vertex attributes (B, N, C), or (N, C) shared by the batch → values at the covered
    pixels, packed channel-first (C, P). ``triangles``: see :meth:`Fragments.gather_vertices`
    (default: the rasterized ones)."""
    return barycentric_sum(fragments.gather_vertices(attributes, triangles), fragments.corner_bary)


def interpolate_corner_packed(fragments: Fragments, values: Tensor, corner_triangles: Tensor) -> Tensor:
    """Per-corner attributes → packed (C, P).

    ``values`` (T, C) shared by the batch, or (B, T, C); ``corner_triangles`` (F, 3) long
    indexes ``values`` for corner k of triangle f (``uv_triangles`` of a model), so seams
    where one vertex has several UVs are handled.
    """
    corner = corner_ids(corner_triangles.to(device=fragments.pix.device, dtype=torch.long), fragments.pix_tri)  # (3, P)
    if values.ndim == 2:
        table = channels_first(values)
    elif values.ndim == 3:
        b, t, c = values.shape
        if b != fragments.shape[0]:
            raise ValueError(f"values have batch {b}, fragments have batch {fragments.shape[0]}")
        table = channels_first(values)
        corner = corner + fragments.pix_batch * t
    else:
        raise ValueError(f"corner values must be (T, C) or (B, T, C), got shape {tuple(values.shape)}")
    picked = table.index_select(1, corner.reshape(-1)).view(table.shape[0], 3, -1)
    return barycentric_sum(picked, fragments.corner_bary)


def interpolate_vertex_attributes(fragments: Fragments, attributes: Tensor, triangles: Optional[Tensor] = None) -> Tensor:
    """Per-vertex attributes (B, N, C) or (N, C) → per-pixel (B, H, W, C), 0 on background.

    ``triangles`` (F, 3) defaults to the triangles that were rasterized."""
    return fragments.scatter(interpolate_vertex_packed(fragments, attributes, triangles)).permute(0, 2, 3, 1)


def interpolate_corner_attributes(fragments: Fragments, values: Tensor, corner_triangles: Tensor) -> Tensor:
    """Per-corner attributes ((T, C) or (B, T, C), see :func:`interpolate_corner_packed`)
    → per-pixel (B, H, W, C), 0 on background."""
    return fragments.scatter(interpolate_corner_packed(fragments, values, corner_triangles)).permute(0, 2, 3, 1)


def sample_texture(texture: Tensor, uv: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample a UV texture (B, C, Ht, Wt) at per-pixel UVs (B, H, W, 2) → (B, C, H, W).

    UV convention (OBJ): u ∈ [0, 1] left → right, v ∈ [0, 1] **bottom → top** of the
    texture image (row 0 of the tensor is v = 1); (0, 0) and (1, 1) are the outer corners
    of the texture's corner texels (``align_corners=False``). Outside [0, 1] the border
    texel is repeated. A texture with batch 1 is shared. Differentiable in the texture
    and the UVs.
    """
    if texture.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture must be (B, C, Ht, Wt) and uv (B, H, W, 2), got {tuple(texture.shape)}, {tuple(uv.shape)}")
    if texture.shape[0] != uv.shape[0]:
        if texture.shape[0] != 1:
            raise ValueError(f"texture batch {texture.shape[0]} does not match uv batch {uv.shape[0]}")
        texture = texture.expand(uv.shape[0], -1, -1, -1)
    grid = torch.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], -1).to(texture.dtype)
    return F.grid_sample(texture, grid, mode=mode, padding_mode="border", align_corners=False)
