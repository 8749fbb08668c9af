"""Per-pixel rasterization result and its differentiable reconstruction from triangle ids.

Screen space
------------
Rasterizers take *screen-space vertices* (B, N, 3) = (x_px, y_px, z): image coordinates
in the toolkit's convention (x right, y down, centre of the top-left pixel at (0, 0)) and
the camera-frame depth z in mm. A pixel (row i, column j) is covered by a triangle when
its centre (j, i) is inside the triangle's (x, y) projection; the nearest surface wins.

Perspective vs orthographic
---------------------------
With a perspective camera, screen-space interpolation is not linear in 3D: 1/z is affine
over the image, so the 3D (perspective-correct) barycentrics of a pixel are
``b_k = (λ_k / z_k) / Σ_j λ_j / z_j`` and its depth ``z = 1 / Σ_j λ_j / z_j``, where λ
are the 2D barycentrics of the pixel centre in the projected triangle. With an
orthographic (weak-perspective) projection, b = λ and z = Σ λ_k z_k.

Differentiability
-----------------
Backends only decide *visibility* (which triangle each pixel sees — piecewise constant,
no gradient). :func:`fragments_from_triangle_ids` then recomputes barycentrics and depth
in torch from those ids and the screen-space vertices, so gradients reach the vertex
positions through the interior of every triangle, whatever backend ran. There is no
silhouette (edge) gradient: a pixel's coverage does not change with an infinitesimal
move of the vertices (like a hard rasterizer with blur 0).

Packed layout
-------------
Work is done on the P covered pixels only ("packed"), channel-first: a packed attribute
is (C, P), which is what the (B, C, H, W) images want and keeps every row contiguous.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
from torch import Tensor

__all__ = ["Fragments", "fragments_from_triangle_ids", "barycentric_sum", "channels_first", "corner_ids",
           "corner_table_of"]


class _BarycentricSum(torch.autograd.Function):
    """Σ_k bary[k] · corners[:, k] with a hand-written backward: autograd's version of the
    multiply-add chain spends most of its time stacking per-corner gradients."""

    @staticmethod
    def forward(ctx, corners: Tensor, bary: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(corners, bary)
        out = corners[:, 0] * bary[0]
        out.addcmul_(corners[:, 1], bary[1])
        return out.addcmul_(corners[:, 2], bary[2])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:  # type: ignore[override]
        corners, bary = ctx.saved_tensors
        grad_corners = grad_bary = None
        if ctx.needs_input_grad[0]:
            grad_corners = torch.empty_like(corners)
            for k in range(3):
                torch.mul(grad, bary[k], out=grad_corners[:, k])
        if ctx.needs_input_grad[1]:
            grad_bary = torch.empty_like(bary)
            for k in range(3):
                torch.sum(corners[:, k] * grad, 0, out=grad_bary[k])
        return grad_corners, grad_bary


def barycentric_sum(corners: Tensor, bary: Tensor) -> Tensor:
    """Σ_k bary[k] · corners[:, k] for corners (C, 3, P) and bary (3, P) → (C, P). Differentiable.

    Written as a multiply-add chain (a broadcast multiply followed by a reduction over the
    corner axis is several times slower on CPU), with its own backward.
    """
    bary = bary.to(corners.dtype)
    if torch.is_grad_enabled() and (corners.requires_grad or bary.requires_grad):
        return _BarycentricSum.apply(corners, bary)
    out = corners[:, 0] * bary[0]
    out.addcmul_(corners[:, 1], bary[1])
    return out.addcmul_(corners[:, 2], bary[2])


@dataclass
class Fragments:
    """What each pixel sees.

    Dense views (B = batch, H × W image):

    * ``tri_id`` (B, H, W) long: index into the (F, 3) triangles, -1 for background.
    * ``mask`` (B, H, W) bool: covered pixels.
    * ``bary`` (B, H, W, 3): barycentrics in the visible triangle (perspective-correct for a
      perspective camera), 0 on background. Differentiable in the vertices.
    * ``depth`` (B, H, W): camera-frame z (mm) of the visible surface, 0 on background.

    Packed data (P covered pixels, in raster order, batch-major):

    * ``pix`` (P,) flat index into B·H·W; ``pix_tri`` (P,) triangle; ``pix_batch`` (P,) item.
    * ``pix_bary`` (P, 3) and ``pix_depth`` (P,): as ``bary`` / ``depth``, differentiable.
    * ``corner_vertex`` (3, P): vertex ids (0..N-1) of the triangle's corners, and
      ``corner_bary`` (3, P): the barycentrics corner-major (``pix_bary`` is its transpose)
      — the layout the packed interpolation works in.
    """

    tri_id: Tensor
    pix: Tensor
    pix_tri: Tensor
    pix_batch: Tensor
    corner_vertex: Tensor
    corner_bary: Tensor
    pix_depth: Tensor
    n_vertices: int

    @property
    def pix_bary(self) -> Tensor:
        """(P, 3) barycentrics of the covered pixels (a view of ``corner_bary``)."""
        return self.corner_bary.t()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, H, W)."""
        b, h, w = self.tri_id.shape
        return b, h, w

    @property
    def mask(self) -> Tensor:
        return self.tri_id >= 0

    @cached_property
    def bary(self) -> Tensor:
        return self.scatter(self.corner_bary).permute(0, 2, 3, 1)

    @cached_property
    def depth(self) -> Tensor:
        return self.scatter(self.pix_depth[None])[:, 0]

    def scatter(self, packed: Tensor, fill: float = 0.0) -> Tensor:
        """Packed values (C, P) → image (B, C, H, W), ``fill`` on background.

        Differentiable in ``packed``.
        """
        b, h, w = self.shape
        c = packed.shape[0]
        out = packed.new_full((c, b * h * w), fill)
        # in place on a fresh tensor: autograd-safe, no extra copy; scatter along dim 1 with an
        # expanded index is several times faster on CPU than index_copy_ (pixels are unique)
        out.scatter_(1, self.pix.expand(c, -1), packed)
        return out.view(c, b, h, w).transpose(0, 1)

    @cached_property
    def flat_corner_vertex(self) -> Tensor:
        """(3, P) corner vertex ids into the batch-flattened (B·N) vertex axis."""
        if self.shape[0] == 1:
            return self.corner_vertex
        return self.corner_vertex + self.pix_batch * self.n_vertices

    def gather_table(self, table: Tensor) -> Tensor:
        """Channel-first per-vertex table (C, B·N) (see :func:`channels_first`) → corner values (C, 3, P)."""
        return table.index_select(1, self.flat_corner_vertex.reshape(-1)).view(table.shape[0], 3, -1)

    def gather_vertices(self, values: Tensor, triangles: Optional[Tensor] = None) -> Tensor:
        """Per-vertex values (B, N, C), or (N, C) shared by the batch → corner values (C, 3, P).

        ``triangles`` (F, 3): take the corners from these instead of the rasterized ones
        (same triangle count; e.g. another mesh with the same topology).
        """
        if values.ndim not in (2, 3):
            raise ValueError(f"per-vertex values must be (B, N, C) or (N, C), got shape {tuple(values.shape)}")
        if values.ndim == 3 and values.shape[0] != self.shape[0]:
            raise ValueError(f"values have batch {values.shape[0]}, fragments have batch {self.shape[0]}")
        table = channels_first(values)  # (C, N) or (C, B·N)
        if triangles is None and values.ndim == 3:
            return self.gather_table(table)
        if triangles is None:
            corner = self.corner_vertex
        else:
            corner = corner_ids(triangles.to(device=self.pix.device, dtype=torch.long), self.pix_tri)
            if values.ndim == 3 and values.shape[0] > 1:
                corner = corner + self.pix_batch * values.shape[1]
        return table.index_select(1, corner.reshape(-1)).view(table.shape[0], 3, -1)


def channels_first(values: Tensor) -> Tensor:
    """(..., C) → (C, M) with M = the product of the leading sizes, contiguous.

    No copy when ``values`` already is a permuted view of a channel-first tensor (e.g.
    :func:`face3d.camera.vertex_normals`); otherwise one column per channel —
    ``permute(...).contiguous()`` takes a slow strided-copy path on CPU for small C.
    """
    c = values.shape[-1]
    flat = values.reshape(-1, c)
    if flat.t().is_contiguous():
        return flat.t()
    return torch.stack(flat.unbind(1))


def corner_table_of(triangles: Tensor) -> Tensor:
    """(F, 3) triangles → (3, F) contiguous corner-major vertex ids (one column copy per corner:
    ``t().contiguous()`` takes a slow strided path on CPU)."""
    return torch.stack(triangles.unbind(1))


def corner_ids(triangles: Tensor, tri: Tensor, corner_table: Optional[Tensor] = None) -> Tensor:
    """(3, P) vertex ids of the corners of triangles ``tri`` (P,) of (F, 3) ``triangles``
    (or of its :func:`corner_table_of`, if given)."""
    if corner_table is not None:
        return corner_table.index_select(1, tri)
    return torch.stack([triangles[:, k].index_select(0, tri) for k in range(3)])


def fragments_from_triangle_ids(tri_id: Tensor, screen_vertices: Tensor, triangles: Tensor,
                                perspective: bool = True, corner_table: Optional[Tensor] = None) -> Fragments:
    """Build :class:`Fragments` from per-pixel triangle ids (B, H, W) (-1 = background).

    ``screen_vertices`` (B, N, 3) as in the module doc; ``triangles`` (F, 3) long;
    ``corner_table``: optionally its :func:`corner_table_of`, to save the transpose when
    the caller caches it. The barycentrics and depth are computed here, differentiably
    (module doc). A degenerate (zero-area) triangle that a backend still reports gets
    λ = (1/3, 1/3, 1/3).
    """
    b, h, w = tri_id.shape
    n = screen_vertices.shape[1]
    flat_tri = tri_id.reshape(-1)
    pix = torch.nonzero(flat_tri >= 0).squeeze(1)
    tri = flat_tri.index_select(0, pix)
    dtype = screen_vertices.dtype
    # pixel centre from the flat index in float64 (exact far beyond any image size; int64
    # division is slower on CPU): row over the whole batch, then item and row within it
    p = pix.to(torch.float64)
    rows = ((p + 0.5) * (1.0 / w)).floor_()
    px = p.sub_(rows * w).to(dtype)
    if b > 1:
        item = ((rows + 0.5) * (1.0 / h)).floor_()
        py = rows.sub_(item * h).to(dtype)
        batch = item.to(torch.long)
    else:
        py = rows.to(dtype)
        batch = torch.zeros_like(pix)

    corner = corner_ids(triangles, tri, corner_table)  # (3, P) vertex ids
    flat = corner + batch * n if b > 1 else corner
    coords = channels_first(screen_vertices)  # (3 xyz, B·N)
    corners_xyz = coords.index_select(1, flat.reshape(-1)).view(3, 3, -1)  # (xyz, corner, P)
    bary, depth = _Barycentrics.apply(corners_xyz, px, py, perspective)
    return Fragments(tri_id=tri_id, pix=pix, pix_tri=tri, pix_batch=batch, corner_vertex=corner,
                     corner_bary=bary, pix_depth=depth, n_vertices=n)


def _next_two(t: Tensor) -> tuple[Tensor, Tensor]:
    """Views t[k+1], t[k+2] (indices mod 3) of a (3, …) tensor, via one small cat."""
    ext = torch.cat([t, t[:2]])
    return ext[1:4], ext[2:5]


class _Barycentrics(torch.autograd.Function):
    """(xyz, corner, P) screen-space corners and pixel centres → (barycentrics (3, P), depth (P)).

    λ_k ∝ a_k, the signed area of the triangle with corner k replaced by the pixel centre
    (the 2D cross product of the other two corners relative to the pixel), A = Σ a_k.
    Perspective: w_k = a_k / z_k, s = Σ w_k, b = w / s, depth = A / s (= 1 / Σ λ_k / z_k).
    Orthographic: b = a / A, depth = Σ b_k z_k. Degenerate triangles (|A| < 1e-12) get
    a = 1 (λ = 1/3). The backward is written out: as autograd graph, these ~20 small ops
    spend most of their backward time allocating and stacking per-corner gradients.
    """

    @staticmethod
    def forward(ctx, v: Tensor, px: Tensor, py: Tensor, perspective: bool) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, y, z = v.unbind(0)
        dx, dy = x - px, y - py
        dx1, dx2 = _next_two(dx)
        dy1, dy2 = _next_two(dy)
        a = torch.mul(dx1, dy2).addcmul_(dx2, dy1, value=-1.0)  # (3, P)
        area = a.sum(0)  # twice the signed area of the triangle
        degenerate = area.abs() < 1e-12
        any_degenerate = bool(degenerate.any())
        if any_degenerate:
            a.masked_fill_(degenerate, 1.0)
            area.masked_fill_(degenerate, 3.0)
        if perspective:
            w = a / z
            scale = w.sum(0)
            bary = w.div_(scale)
            depth = area / scale
        else:
            scale = area
            bary = a.div_(area)
            depth = (bary * z).sum(0)
        ctx.perspective = perspective
        ctx.any_degenerate = any_degenerate
        ctx.save_for_backward(dx, dy, z, bary, scale, depth, degenerate)
        return bary, depth

    @staticmethod
    def backward(ctx, grad_bary: Optional[Tensor], grad_depth: Optional[Tensor]):  # type: ignore[override]
        dx, dy, z, bary, scale, depth, degenerate = ctx.saved_tensors
        gb = grad_bary if grad_bary is not None else torch.zeros_like(bary)
        gd = grad_depth if grad_depth is not None else torch.zeros_like(depth)
        if ctx.perspective:
            # b = w / s, depth = A / s, w = a / z
            gw = (gb - (gb * bary).sum(0)).sub_(gd * depth).div_(scale)
            ga = (gw / z).add_(gd / scale)
            gz = gw.mul_(bary).mul_(scale).div_(z).neg_()
        else:
            # b = a / A, depth = Σ b z
            gb = gb + gd * z
            ga = (gb - (gb * bary).sum(0)).div_(scale)
            gz = gd * bary
        if ctx.any_degenerate:
            ga.masked_fill_(degenerate, 0.0)  # a is a constant there
        ga1, ga2 = _next_two(ga)
        dx1, dx2 = _next_two(dx)
        dy1, dy2 = _next_two(dy)
        gv = torch.empty((3,) + dx.shape, dtype=dx.dtype, device=dx.device)
        # a_k = dx_{k+1} dy_{k+2} − dx_{k+2} dy_{k+1}
        torch.mul(ga2, dy1, out=gv[0]).addcmul_(ga1, dy2, value=-1.0)
        torch.mul(ga1, dx2, out=gv[1]).addcmul_(ga2, dx1, value=-1.0)
        gv[2] = gz
        return gv, None, None, None
