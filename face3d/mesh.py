"""Mesh operations on triangle meshes with per-corner UVs.

Meshes are given as vertices (N, 3) or (B, N, 3), triangles (F, 3) long, and optionally
UVs (T, 2) with uv_triangles (F, 3) (see :mod:`face3d.morphable_model`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["Subdivision", "subdivide"]


def _edge_midpoints(triangles: Tensor, n_points: int) -> tuple[Tensor, Tensor]:
    """Unique undirected edges (E, 2) of ``triangles`` and, per triangle, the new point id of
    each of its edges (F, 3) (edge k joins corners k and k+1), numbered from ``n_points``."""
    f = triangles.shape[0]
    e = torch.stack([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]], 1).reshape(-1, 2)
    lo, hi = e.min(1).values, e.max(1).values
    key = lo * n_points + hi
    uniq, inverse = torch.unique(key, return_inverse=True)
    edges = torch.stack([uniq // n_points, uniq % n_points], 1)
    return edges, (inverse + n_points).view(f, 3)


@dataclass
class Subdivision:
    """One level of midpoint subdivision: every triangle split into four.

    * ``triangles`` (4F, 3) and ``uv_triangles`` (4F, 3) of the new mesh (or None).
    * ``edges`` (E, 2): the old vertex pair each new vertex N..N+E−1 is the midpoint of;
      ``uv_edges`` likewise for the UVs.
    Call :meth:`vertices` / :meth:`uvs` (or :meth:`attributes`) to carry per-vertex data over.
    """

    n_vertices: int
    triangles: Tensor
    edges: Tensor
    uv_triangles: Optional[Tensor] = None
    uv_edges: Optional[Tensor] = None

    def attributes(self, values: Tensor) -> Tensor:
        """Per-vertex values (..., N, C) → (..., N + E, C): old ones kept, midpoints averaged."""
        mid = 0.5 * (values[..., self.edges[:, 0], :] + values[..., self.edges[:, 1], :])
        return torch.cat([values, mid], -2)

    vertices = attributes

    def uvs(self, uvs: Tensor) -> Tensor:
        """Per-corner UV table (T, 2) → (T + E_uv, 2)."""
        if self.uv_edges is None:
            raise ValueError("this subdivision was made without UVs")
        return torch.cat([uvs, 0.5 * (uvs[self.uv_edges[:, 0]] + uvs[self.uv_edges[:, 1]])], 0)


def _split(triangles: Tensor, mids: Tensor) -> Tensor:
    a, b, c = triangles.unbind(1)
    ab, bc, ca = mids.unbind(1)
    return torch.cat([torch.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))], 0)


def subdivide(triangles: Tensor, n_vertices: int, uv_triangles: Optional[Tensor] = None,
              n_uvs: Optional[int] = None) -> Subdivision:
    """Midpoint-subdivide a mesh's connectivity (and its UV connectivity); keeps orientation."""
    edges, mids = _edge_midpoints(triangles, n_vertices)
    sub = Subdivision(n_vertices, _split(triangles, mids), edges)
    if uv_triangles is not None:
        if n_uvs is None:
            n_uvs = int(uv_triangles.max()) + 1
        uv_edges, uv_mids = _edge_midpoints(uv_triangles, n_uvs)
        sub.uv_triangles, sub.uv_edges = _split(uv_triangles, uv_mids), uv_edges
    return sub
