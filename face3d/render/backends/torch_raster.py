"""Pure-torch rasterizer backend: vectorised, no compiled extension.

Algorithm (a z-buffer written with tensor ops instead of a per-pixel loop):

1. For every triangle, the integer pixel-centre bounding box of its projection, clipped
   to the image. Triangles that cover no pixel centre, or (perspective) have a vertex at
   or behind the camera plane (z ≤ 0; dropped, not clipped), are skipped.
2. The surviving triangles are binned by the side of the square tile that holds their
   box (1, 2, 3, 4, 6, 8, 12, … pixels; one ``argsort`` of the bin numbers, no
   tile × triangle tests). A bin whose triangles would add only a few candidate pixels to
   the next bin is folded into it (every bin costs a fixed dozen tensor ops). A face mesh
   at 224² is mostly 1–3-pixel triangles, so almost all of them land in the 2–4 px bins.
3. Per triangle, the affine functions of the pixel position that give its three 2D
   barycentrics λ_k and a depth key: 2·max(1/z) − 1/z for perspective (1/z is affine in
   the image) or z − min z + 1 for orthographic — positive, smaller = nearer. They are
   written relative to the box corner, which keeps float32 round-off at the scale of the
   triangle rather than of the image, with the inside tolerance folded into the constant
   term (pixel centres on an edge, λ ≥ −1e-5, count as inside, so no gaps open between
   neighbouring triangles).
4. Each bin is evaluated on its k × k tile with one GEMM, (k² pixels, 3) @ (3, 4·triangles).
   The inside test is done on the float32 *bits*: a pixel is outside when any λ has its
   sign bit set, so OR-ing the three words and an arithmetic shift gives an all-ones mask
   that turns the key's high word into 0x7FFFFFFF, "no surface" — no comparisons, no
   ``where``. (The key needs no test: it is positive wherever every λ ≥ −eps.) The
   positive key's bits (whose integer order is the float order) form the high word of an
   int64, the triangle index the low word, and the z-buffer is ``scatter_reduce(amin)``
   over them: the nearest surface wins, ties go to the lower triangle index; pixels whose
   high word is still 0x7FFFFFFF are background. The z-buffer is padded on the right and
   bottom so that tiles overhanging the image need no bounds test.

Bins are processed in chunks of at most ``max_pairs`` (triangle, pixel) candidates to
bound memory; tiles larger than the padding (huge triangles) test their box explicitly.
Scratch tensors are kept by the instance and reused (a fresh multi-megabyte tensor is
page-faulted in on every call), so one instance must not rasterize from two threads at
once; tables derived from the triangles alone are cached while the same (unmodified)
triangle tensor comes back (:meth:`Rasterizer.triangle_table`).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor

from face3d.render.rasterizer import Rasterizer

_INSIDE_EPS = 1e-5
_SENTINEL = torch.iinfo(torch.int64).max  # high word 0x7FFFFFFF, low word 0xFFFFFFFF (= id −1)
_FAR = 0x7FFFFFFF  # high word of "no surface" (the bits of a NaN: above every finite key)
_HI, _LO = (1, 0) if sys.byteorder == "little" else (0, 1)  # int32 halves of an int64
#: Square tile sides of the bins; larger boxes use powers of two.
_SIDES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Tiles up to this side write into a z-buffer padded by as much, so they need no box test.
_PAD = 64


def _flat_index(triangles: Tensor) -> Tensor:
    """(3 xyz, 3 corners, F) indices 3·vertex + coordinate into a flat (N·3) vertex array."""
    idx = torch.empty(3, 3, triangles.shape[0], dtype=torch.long, device=triangles.device)
    for k in range(3):
        torch.mul(triangles[:, k], 3, out=idx[0, k])
    torch.add(idx[0], 1, out=idx[1])
    torch.add(idx[0], 2, out=idx[2])
    return idx


class TorchRasterizer(Rasterizer):
    """Vectorised z-buffer rasterizer in pure torch; see the module doc (not thread-safe:
    one instance per thread).

    ``max_pairs`` bounds the number of (triangle, pixel) candidates held at once;
    ``merge_pixels``: a bin is folded into the next larger one when that adds fewer
    candidates than this (the break-even of one bin's fixed cost on a CPU).
    """

    name = "torch"

    def __init__(self, max_pairs: int = 1 << 21, merge_pixels: int = 12_000) -> None:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be positive, got {max_pairs}")
        self.max_pairs = int(max_pairs)
        self.merge_pixels = int(merge_pixels)
        self._cache: dict[tuple, object] = {}
        self._workspace: dict[tuple, Tensor] = {}

    # ------------------------------------------------------------------ cached tables

    def _cached(self, key: tuple, make):
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 256:
                self._cache.clear()
            hit = self._cache[key] = make()
        return hit

    def _bins(self, longest: int, device: torch.device) -> tuple[list[int], Tensor]:
        """Tile sides of the bins for images up to ``longest`` px, and the lookup table
        (box side − 1) → bin (int64, ``longest + 1`` entries; the last, ``len(sides)``,
        marks invalid triangles)."""
        def make():
            sides = [s for s in _SIDES if s < longest]
            while not sides or sides[-1] < longest:
                sides.append(min(2 * sides[-1] if sides else longest, longest))
            lut = torch.full((longest + 1,), len(sides), dtype=torch.long)
            lo = 0
            for i, side in enumerate(sides):
                lut[lo:side] = i
                lo = side
            return sides, lut.to(device)
        return self._cached(("bins", longest, str(device)), make)

    def _grid(self, kw: int, kh: int, stride: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """kw × kh tile: rows (rx, ry, 1) float32 (T, 3), z-buffer offsets (T, 1) int64, and
        (rx, ry) int32 (2, T, 1) for box tests."""
        def make():
            ry = torch.arange(kh, device=device).repeat_interleave(kw)
            rx = torch.arange(kw, device=device).repeat(kh)
            grid = torch.stack([rx, ry, torch.ones_like(rx)], 1).to(torch.float32)
            return grid, (ry * stride + rx)[:, None], torch.stack([rx, ry]).to(torch.int32)[:, :, None]
        return self._cached(("grid", kw, kh, stride, str(device)), make)

    # ------------------------------------------------------------------ rasterization

    def _take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A reusable scratch tensor (contents undefined). Large temporaries are the main
        cost otherwise: a fresh multi-megabyte allocation is page-faulted in on every call."""
        numel = 1
        for d in shape:
            numel *= int(d)
        key = (name, dtype, str(device))
        buf = self._workspace.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1024), dtype=dtype, device=device)
            self._workspace[key] = buf
        return buf[:numel].view(shape)

    def triangle_ids(self, screen_vertices: Tensor, triangles: Tensor, height: int, width: int,
                     perspective: bool = True) -> Tensor:
        b, n, _ = screen_vertices.shape
        f = triangles.shape[0]
        device = screen_vertices.device
        if f == 0 or n == 0:
            return torch.full((b, height, width), -1, dtype=torch.long, device=device)
        f32, i64 = torch.float32, torch.long
        take = lambda name, shape, dtype=f32: self._take(name, shape, dtype, device)  # noqa: E731
        m = b * f

        # Coordinate-major table, one gather from the flat (B·N·3) vertex array: rows
        # x0 x1 x2 y0 y1 y2 z0 z1 z2 of every (item, triangle), then the box corner (x, y)
        # and min z. (Transposing copies and fancy indexing of (…, 3) rows are several times
        # slower on CPU; so is every extra op at this size, hence the fused layout.)
        flat_sv = screen_vertices.to(f32).reshape(-1)
        idx = self.triangle_table("flat_index", triangles, lambda: _flat_index(triangles))  # (3, 3, F)
        if b > 1:
            idx = torch.add(idx[:, :, None, :], (torch.arange(b, device=device) * (3 * n))[:, None],
                            out=take("idx", (3, 3, b, f), i64))
        table = take("table", (12, m))
        torch.index_select(flat_sv, 0, idx.view(-1), out=table[:9].view(-1))
        fv = table[:9].view(3, 3, m)  # (xyz, corner, B·F)
        mins = torch.amin(fv, 1, out=table[9:12])  # x, y, z minima
        maxs = torch.amax(fv[:2], 1)
        corner_xy = mins[:2].ceil_().clamp_(min=0)  # integer pixel-centre box, clipped to the image
        size = torch.minimum(maxs.floor_(), self._cached(("lim", width, height, str(device)), lambda: torch.tensor(
            [[width - 1.0], [height - 1.0]], device=device)), out=maxs).sub_(corner_xy)  # (w − 1, h − 1)
        # valid: a non-empty box and (perspective) every corner in front of the camera
        valid = size.amin(0).add_(0.5)
        if perspective:
            valid = torch.minimum(valid, mins[2])
        else:
            valid.masked_fill_(~torch.isfinite(fv[2]).all(0), -1.0)
        sides, lut = self._bins(max(height, width), device)
        nbins = len(sides)
        # bin of every triangle (by its longer box side); invalid ones get bin `nbins` and sort last
        side = size.amax(0).masked_fill_((valid > 0).logical_not_(), len(lut) - 1)
        cls = lut.index_select(0, side.to(i64))
        counts = torch.bincount(cls, minlength=nbins + 1).tolist()
        n_ok = m - counts[nbins]
        if n_ok == 0:
            return torch.full((b, height, width), -1, dtype=torch.long, device=device)
        # fold small bins into the next larger one (a bin's fixed cost ≈ merge_pixels candidates;
        # rectangular tiles were tried: on face meshes they save < 5% of the candidates)
        plan: list[tuple[int, int]] = []  # (tile side, triangle count), in bin order
        present = [i for i in range(nbins) if counts[i]]
        carry = 0
        for j, i in enumerate(present):
            cnt = counts[i] + carry
            if j + 1 < len(present) and cnt * (sides[present[j + 1]] ** 2 - sides[i] ** 2) < self.merge_pixels:
                carry = cnt
                continue
            plan.append((sides[i], cnt))
            carry = 0
        if len(present) > 1 or counts[nbins]:
            sel = torch.argsort(cls)[:n_ok]
        else:
            sel = torch.arange(n_ok, device=device)
        s = n_ok

        # per selected triangle, corners relative to the box corner, in a (xy, 5, S) table
        # whose rows k+1 … k+3 are the corners k+1, k+2 (mod 3) as views
        fs = take("fs", (11, s))
        torch.index_select(table[:11], 1, sel, out=fs)
        rel = take("rel", (2, 5, s))
        torch.sub(fs[0:6].view(2, 3, s), fs[9:11, None], out=rel[:, :3])
        rel[:, 3:].copy_(rel[:, :2])
        x1, x2, y1, y2 = rel[0, 1:4], rel[0, 2:5], rel[1, 1:4], rel[1, 2:5]
        # λ_k(p) = (A_k·px + B_k·py + C_k) / area2: the sub-triangle opposite corner k
        coef = take("coef", (3, 4, s))  # (A B C, λ0 λ1 λ2 key, S)
        lam = coef[:, :3]
        A, B, C = lam.unbind(0)
        torch.sub(y1, y2, out=A)
        torch.sub(x2, x1, out=B)
        torch.mul(x1, y2, out=C).addcmul_(x2, y1, value=-1.0)
        area2 = C.sum(0)  # twice the signed area
        degenerate = area2.abs() <= 1e-10
        lam *= area2.reciprocal_().masked_fill_(degenerate, 0.0)
        # depth key, affine in the pixel position and positive inside the triangle:
        # perspective 2·max(1/z) − Σλ_k/z_k (1/z affine in the image; smaller = nearer),
        # orthographic Σλ_k (z_k − min z + 1)
        zs = fs[6:9]
        if perspective:
            zk = zs.reciprocal_().neg_()
            offset = -2.0 * float(zk.min())
        else:
            zk = zs.sub_(float(zs.min()) - 1.0)
            offset = 0.0
        torch.sum(lam * zk, 1, out=coef[:, 3])
        coef[2, 3] += offset
        C += _INSIDE_EPS
        C[0].masked_fill_(degenerate, -1.0)  # λ0 ≡ −1: never inside

        pad = min(_PAD, max(k for k, _ in plan))
        stride_w, stride_h = width + pad, height + pad
        box = fs[9:11].to(i64)
        base = box[1].mul_(stride_w).add_(box[0])  # (S,) z-buffer index of the box corner
        if b > 1:
            base += torch.div(sel, f, rounding_mode="floor") * (stride_h * stride_w)
            tri = torch.remainder(sel, f)
        else:
            tri = sel

        zbuf = take("zbuf", (b * stride_h * stride_w,), i64).fill_(_SENTINEL)
        start = 0
        for k, cnt in plan:
            step = max(1, self.max_pairs // (k * k))
            for s0 in range(start, start + cnt, step):
                s1 = min(s0 + step, start + cnt)
                boxed = None
                if k > pad:  # tile larger than the padding: test the box, keep indices in range
                    boxed = size.index_select(1, sel[s0:s1]).to(torch.int32)
                self._tile(zbuf, k, k, stride_w, coef[:, :, s0:s1], base[s0:s1], tri[s0:s1], boxed)
            start += cnt

        words = zbuf.view(torch.int32).view(b, stride_h, stride_w, 2)[:, :height, :width]
        return words[..., _LO].to(torch.long).masked_fill_(words[..., _HI] == _FAR, -1)

    def _tile(self, zbuf: Tensor, kw: int, kh: int, stride: int, coef: Tensor, base: Tensor, tri: Tensor,
              boxed: Optional[Tensor]) -> None:
        """Evaluate triangles (``coef`` (3, 4, S), ``base``, ``tri`` (S,) int64) on a kw × kh
        tile at their box corner and reduce into ``zbuf``."""
        device = zbuf.device
        grid, offset, rxy = self._grid(kw, kh, stride, device)
        s = coef.shape[2]
        t = grid.shape[0]
        # (T, 3) @ (3, 4·S): one wide GEMM; rows of the result are λ0 | λ1 | λ2 | key, S each
        flat = self._take("coef_c", (3, 4, s), torch.float32, device)
        flat.copy_(coef)
        val = self._take("val", (t, 4 * s), torch.float32, device)
        torch.mm(grid, flat.view(3, 4 * s), out=val)
        val = val.view(torch.int32).view(t, 4, s)
        # sign bit of any λ set ⇒ outside; >> 31 spreads it to an all-ones mask (the key is
        # positive wherever all λ ≥ −eps, so it needs no test)
        out = torch.bitwise_or(val[:, 0], val[:, 1], out=self._take("out", (t, s), torch.int32, device))
        out |= val[:, 2]
        out >>= 31
        pix = torch.add(offset, base, out=self._take("pix", (t, s), torch.long, device))
        if boxed is not None:
            out |= (boxed[0] - rxy[0]) | (boxed[1] - rxy[1])  # negative where rx > w−1 or ry > h−1 (boxed: (2, S))
            out >>= 31
            pix.clamp_(max=zbuf.shape[0] - 1)
        # key = (bits of the depth key) << 32 | triangle; outside: high word 0x7FFFFFFF ("no
        # surface"), which the caller recognises (it still beats the sentinel, low word −1)
        out |= val[:, 3]
        out &= 0x7FFFFFFF
        key = self._take("key", (t, s), torch.long, device).copy_(out)
        key.bitwise_left_shift_(32).bitwise_or_(tri)
        zbuf.scatter_reduce_(0, pix.view(-1), key.view(-1), reduce="amin", include_self=True)
