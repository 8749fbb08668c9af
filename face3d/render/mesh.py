"""Mesh quantities the renderer needs, written for speed on CPU."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["vertex_normals", "normalize_rows"]


def normalize_rows(v: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit vectors along dim 0 of a (3, …) tensor (zero vectors stay zero).

    Same as ``F.normalize(v, dim=0)``, whose norm kernel is an order of magnitude slower
    on CPU for a size-3 reduction.
    """
    return v / (v * v).sum(0, keepdim=True).sqrt().clamp_min(eps)


def vertex_normals(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (B, N, 3) of vertices (B, N, 3), triangles (F, 3) long.

    Same result as :func:`face3d.camera.vertex_normals` (normals point out of
    counter-clockwise triangles; differentiable), computed coordinate-major with 1-D
    ``index_select`` / ``index_add`` — several times faster on CPU than fancy indexing of
    (…, 3) rows for a 10k-vertex face.
    """
    b, n, _ = vertices.shape
    f = triangles.shape[0]
    coords = vertices.permute(2, 0, 1).reshape(3, b * n)  # (xyz, B·N)
    corner = triangles.t()[:, None, :] + (torch.arange(b, device=vertices.device) * n)[None, :, None]  # (3, B, F)
    corner = corner.reshape(3, b * f)
    v = coords.index_select(1, corner.reshape(-1)).view(3, 3, b * f)  # (xyz, corner, B·F)
    e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    # cross product, length = 2 × area: area weighting for free
    fn = torch.stack([e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]])
    acc = coords.new_zeros(3, b * n).index_add(1, corner.reshape(-1), fn.repeat(1, 3))
    return normalize_rows(acc).view(3, b, n).permute(1, 2, 0)
