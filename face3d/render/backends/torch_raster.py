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
   The inside test and the key are done on the float32 *bits*: a pixel is outside when any
   λ or the key has its sign bit set, so OR-ing the four words and an arithmetic shift
   gives an all-ones mask that turns the key into "no surface" — no comparisons, no
   ``where``. The positive key's bits (whose integer order is the float order) form the
   high word of an int64, the triangle index the low word, and the z-buffer is
   ``scatter_reduce(amin)`` over them: the nearest surface wins, ties go to the lower
   triangle index. The z-buffer is padded on the right and bottom so that tiles
   overhanging the image need no bounds test; the low word of "no surface" is −1, which
   is directly the background id.

Bins are processed in chunks of at most ``max_pairs`` (triangle, pixel) candidates to
bound memory; tiles larger than the padding (huge triangles) test their box explicitly.
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


class TorchRasterizer(Rasterizer):
    """Vectorised z-buffer rasterizer in pure torch; see the module doc.

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

    def _grid(self, k: int, stride: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """k × k tile: rows (rx, ry, 1) float32 (k², 3), z-buffer offsets (k², 1) int64,
        and (rx, ry) int32 (2, k², 1) for box tests."""
        def make():
            ry = torch.arange(k, device=device).repeat_interleave(k)
            rx = torch.arange(k, device=device).repeat(k)
            grid = torch.stack([rx, ry, torch.ones_like(rx)], 1).to(torch.float32)
            return grid, (ry * stride + rx)[:, None], torch.stack([rx, ry]).to(torch.int32)[:, :, None]
        return self._cached(("grid", k, stride, str(device)), make)

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

        # Coordinate-major layouts throughout: 1-D index_select on contiguous rows is several
        # times faster on CPU than fancy indexing of (…, 3) rows.
        coords = take("coords", (3, b * n))
        coords.view(3, b, n).copy_(screen_vertices.permute(2, 0, 1))
        corner = take("corner", (3, b, f), i64)
        if b > 1:
            torch.add(triangles.t()[:, None, :], (torch.arange(b, device=device) * n)[None, :, None], out=corner)
        else:
            corner.copy_(triangles.t()[:, None, :])
        fv = take("fv", (9, b * f))  # rows x0 x1 x2 y0 y1 y2 z0 z1 z2 of every (item, triangle)
        torch.index_select(coords, 1, corner.view(-1), out=fv.view(3, 3 * b * f))
        x, y, z = fv[0:3], fv[3:6], fv[6:9]
        box = take("box", (5, b * f))  # rows: x0, y0 (box corner), w − 1, h − 1, side − 1 of the pixel-centre box
        x0, y0, bw, bh, side = box.unbind(0)
        torch.amin(x, 0, out=x0).ceil_().clamp_(min=0)
        torch.amin(y, 0, out=y0).ceil_().clamp_(min=0)
        torch.amax(x, 0, out=bw).floor_().clamp_(max=width - 1).sub_(x0)
        torch.amax(y, 0, out=bh).floor_().clamp_(max=height - 1).sub_(y0)
        torch.maximum(bw, bh, out=side)
        # valid: a non-empty box and (perspective) every corner in front of the camera
        lo = torch.minimum(bw, bh).add_(0.5)
        if perspective:
            torch.minimum(lo, z.amin(0), out=lo)
        else:
            lo.masked_fill_(~torch.isfinite(z).all(0), -1.0)
        sides, lut = self._bins(max(height, width), device)
        nbins = len(sides)
        # bin of every triangle; invalid ones get bin `nbins` (the table's last entry) and sort last
        cls = lut.index_select(0, side.clamp(0, len(lut) - 2).masked_fill_(~(lo > 0), len(lut) - 1).to(i64))
        counts = torch.bincount(cls, minlength=nbins + 1).tolist()
        n_ok = sum(counts[:nbins])
        if n_ok == 0:
            return torch.full((b, height, width), -1, dtype=torch.long, device=device)
        # fold small bins into the next larger one (a bin's fixed cost ≈ merge_pixels candidates)
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

        # per selected triangle: corners relative to the box corner
        fs = take("fs", (9, s))
        torch.index_select(fv, 1, sel, out=fs)
        org = take("org", (2, s))
        torch.index_select(box[0:2], 1, sel, out=org)
        xs, ys, zs = fs[0:3], fs[3:6], fs[6:9]
        xs -= org[0]
        ys -= org[1]
        # λ_k(p) = (A_k·px + B_k·py + C_k) / area2: the sub-triangle opposite corner k
        coef = take("coef", (3, 4, s))  # (A B C, λ0 λ1 λ2 key, S)
        A, B, C = coef[0, :3], coef[1, :3], coef[2, :3]
        for k in range(3):
            k1, k2 = (k + 1) % 3, (k + 2) % 3
            torch.sub(ys[k1], ys[k2], out=A[k])
            torch.sub(xs[k2], xs[k1], out=B[k])
            torch.mul(xs[k1], ys[k2], out=C[k]).addcmul_(xs[k2], ys[k1], value=-1.0)
        area2 = C.sum(0)  # twice the signed area
        degenerate = area2.abs() <= 1e-10
        inv = area2.reciprocal_().masked_fill_(degenerate, 0.0)
        coef[:, :3] *= inv
        # depth key, affine in the pixel position and positive inside the triangle:
        # perspective 2·max(1/z) − Σλ_k/z_k (1/z affine in the image; smaller = nearer),
        # orthographic Σλ_k (z_k − min z + 1)
        zk = zs.reciprocal_() if perspective else zs.sub_(float(zs.min()) - 1.0)
        key = coef[:, 3]
        torch.mul(coef[:, 0], zk[0], out=key).addcmul_(coef[:, 1], zk[1]).addcmul_(coef[:, 2], zk[2])
        if perspective:
            key.neg_()
            key[2] += 2.0 * float(zk.max())
        C += _INSIDE_EPS
        C[0].masked_fill_(degenerate, -1.0)  # λ0 ≡ −1: never inside

        pad = min(_PAD, max(k for k, _ in plan))
        stride_w, stride_h = width + pad, height + pad
        corner_px = org.to(i64)
        base = corner_px[1].mul_(stride_w).add_(corner_px[0])  # (S,) z-buffer index of the box corner
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
                    idx = sel[s0:s1]
                    boxed = (bw.index_select(0, idx).to(torch.int32), bh.index_select(0, idx).to(torch.int32))
                self._tile(zbuf, k, stride_w, coef[:, :, s0:s1], base[s0:s1], tri[s0:s1], boxed)
            start += cnt

        words = zbuf.view(torch.int32).view(b, stride_h, stride_w, 2)[:, :height, :width]
        return words[..., _LO].to(torch.long).masked_fill_(words[..., _HI] == _FAR, -1)

    def _tile(self, zbuf: Tensor, k: int, stride: int, coef: Tensor, base: Tensor, tri: Tensor,
              boxed: Optional[tuple[Tensor, Tensor]]) -> None:
        """Evaluate triangles (``coef`` (3, 4, S), ``base``, ``tri`` (S,) int64) on a k × k
        tile at their box corner and reduce into ``zbuf``."""
        device = zbuf.device
        grid, offset, rxy = self._grid(k, stride, device)
        s = coef.shape[2]
        t = grid.shape[0]
        # (T, 3) @ (3, 4·S): one wide GEMM; rows of the result are λ0 | λ1 | λ2 | key, S each
        flat = self._take("coef_c", (3, 4, s), torch.float32, device)
        flat.copy_(coef)
        val = self._take("val", (t, 4 * s), torch.float32, device)
        torch.mm(grid, flat.view(3, 4 * s), out=val)
        val = val.view(torch.int32).view(t, 4, s)
        # sign bit of any λ or of the key set ⇒ outside; >> 31 spreads it to an all-ones mask
        out = torch.bitwise_or(val[:, 0], val[:, 1], out=self._take("out", (t, s), torch.int32, device))
        out |= val[:, 2]
        out |= val[:, 3]
        out >>= 31
        pix = torch.add(offset, base, out=self._take("pix", (t, s), torch.long, device))
        if boxed is not None:
            out |= (boxed[0] - rxy[0]) | (boxed[1] - rxy[1])  # negative where rx > w−1 or ry > h−1
            out >>= 31
            pix.clamp_(max=zbuf.shape[0] - 1)
        # key = (bits of the depth key) << 32 | triangle; outside: high word 0x7FFFFFFF ("no
        # surface"), which the caller recognises (it still beats the sentinel, low word −1)
        out |= val[:, 3]
        out &= 0x7FFFFFFF
        key = self._take("key", (t, s), torch.long, device).copy_(out)
        key.bitwise_left_shift_(32).bitwise_or_(tri)
        zbuf.scatter_reduce_(0, pix.view(-1), key.view(-1), reduce="amin", include_self=True)
