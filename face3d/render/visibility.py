"""Which mesh vertices the camera sees, from a rendered depth buffer."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["vertex_visibility"]


def vertex_visibility(screen_vertices: Tensor, depth: Tensor, mask: Tensor, tolerance: float = 2.0,
                      tri_id: Optional[Tensor] = None, triangles: Optional[Tensor] = None) -> Tensor:
    """Per-vertex visible flag (B, N) bool.

    ``screen_vertices`` (B, N, 3) = (x_px, y_px, z_mm) as given to the rasterizer;
    ``depth`` (B, H, W) mm and ``mask`` (B, H, W) bool from the same render (e.g.
    ``fragments.depth`` / ``fragments.mask``). A vertex is visible when it projects inside
    the image and, at one of the (up to) four pixel centres around it,

    * a surface is seen no nearer than ``z − tolerance`` mm (depth test), or
    * with ``tri_id`` (B, H, W) and ``triangles`` (F, 3) given, the triangle seen there has
      the vertex as a corner.

    Looking at four neighbours rather than the nearest pixel keeps vertices on the
    silhouette (whose nearest pixel may be background) visible. The depth test alone
    fails on surfaces seen at grazing angles, where depth changes by many mm within a
    pixel; the incident-triangle test covers those as long as the vertex's triangles
    still own pixels (right at a silhouette they can be slivers thinner than a pixel).
    ``tolerance`` absorbs the depth change within the neighbourhood on ordinary slopes —
    2 mm suits faces rendered at about 1 mm per pixel; scale it with the pixel footprint.
    """
    if screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
        raise ValueError(f"screen_vertices must be (B, N, 3), got {tuple(screen_vertices.shape)}")
    if depth.shape != mask.shape or depth.ndim != 3 or depth.shape[0] != screen_vertices.shape[0]:
        raise ValueError("depth and mask must be (B, H, W) with the vertices' batch, got "
                         f"{tuple(depth.shape)}, {tuple(mask.shape)}")
    if (tri_id is None) != (triangles is None):
        raise ValueError("give both tri_id and triangles for the incident-triangle test, or neither")
    b, h, w = depth.shape
    sv = screen_vertices.detach()
    n = sv.shape[1]
    x, y, z = sv[..., 0], sv[..., 1], sv[..., 2]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5) & torch.isfinite(z)
    xf, yf = x.floor(), y.floor()
    flat_depth = depth.detach().reshape(b, -1)
    flat_mask = mask.reshape(b, -1)
    flat_tri = tri_id.reshape(b, -1) if tri_id is not None else None
    vid = torch.arange(n, device=sv.device)[None, :, None]
    visible = torch.zeros_like(inside)
    for dx in (0.0, 1.0):
        for dy in (0.0, 1.0):
            px, py = xf + dx, yf + dy
            ok = inside & (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
            idx = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1)).long()
            hit = ok & torch.gather(flat_mask, 1, idx)
            visible |= hit & (z <= torch.gather(flat_depth, 1, idx) + tolerance)
            if flat_tri is not None:
                seen = torch.gather(flat_tri, 1, idx).clamp_min(0)
                corners = triangles.to(device=sv.device, dtype=torch.long)[seen]  # (B, N, 3)
                visible |= hit & (corners == vid).any(-1)
    return visible
