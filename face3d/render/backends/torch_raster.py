"""Pure-torch rasterizer backend: vectorised, no compiled extension.

Algorithm (a z-buffer written with tensor ops instead of a per-pixel loop):

1. For every triangle, the integer pixel-centre bounding box of its projection, clipped
   to the image. Triangles that cover no pixel centre, or (perspective) have a vertex at
   or behind the camera plane (z ≤ 0; dropped, not clipped), are skipped.
2. Per triangle, the affine functions of the pixel position that give its three 2D
   barycentrics λ_k and a depth key: 2·max(1/z) − 1/z for perspective (1/z is affine in
   the image) or z − min z + 1 for orthographic — positive, smaller = nearer. They are
   written relative to the box corner, which keeps float32 round-off at the scale of
   the triangle rather than of the image.
3. Triangles are grouped by the power-of-two tile k_w × k_h that holds their box (small
   groups folded into larger ones, :func:`_merge_classes`). Each group is evaluated on
   its tile with one GEMM, (tile pixels, 3) @ (3, triangles × 4): no per-pixel gathers,
   at most 4× the box area of work. Pixel centres on an edge (λ ≥ −1e-5) count as inside,
   so no gaps open between neighbouring triangles.
4. Depth key and triangle index are packed into one int64 (the float32 bits of the
   positive key — whose integer order is the float order — high, the triangle low) and
   reduced per pixel with ``scatter_reduce(amin)``: the nearest surface wins, ties go to
   the lower triangle index. The z-buffer is padded on the right and bottom so that tiles
   overhanging the image need no bounds test.

Groups are processed in chunks of at most ``max_pairs`` (triangle, pixel) candidates to
bound memory (a triangle covering the whole frame is no problem).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor

from face3d.render.rasterizer import Rasterizer

_INSIDE_EPS = 1e-5
_SENTINEL = torch.iinfo(torch.int64).max
_FAR = 0x7FFFFFFF  # high word of the key of "no surface"
_LITTLE_ENDIAN = sys.byteorder == "little"
# Tiles up to this side write into a z-buffer padded by as much, so they need no test
# against their (image-clipped) box; larger tiles (rare, huge triangles) test it.
_PAD = 64


def _merge_classes(counts: list[int], merge_pixels: int) -> tuple[Optional[list[int]], list[int]]:
    """Fold small tile classes into larger ones: every class costs a fixed ~10 tensor ops,
    so a class whose triangles would add fewer than ``merge_pixels`` tile pixels to a
    class that contains it (both sides at least as large) is merged into the cheapest such.

    ``counts[c]`` = triangles in class c = lw·32 + lh (tile 2^lw × 2^lh). Returns the
    class lookup table (None if nothing merged) and the new counts.
    """
    counts = list(counts)
    present = [c for c, k in enumerate(counts) if k]
    target = list(range(len(counts)))
    changed = False
    for c in sorted(present, key=lambda c: (c // 32) + (c % 32)):  # by tile area
        n = counts[c]
        if n == 0:
            continue
        area = 1 << ((c // 32) + (c % 32))
        best, best_cost = None, merge_pixels
        for d in present:
            if d != c and counts[d] and d // 32 >= c // 32 and d % 32 >= c % 32:
                cost = n * ((1 << ((d // 32) + (d % 32))) - area)
                if cost < best_cost:
                    best, best_cost = d, cost
        if best is not None:
            counts[best] += n
            counts[c] = 0
            for i, t in enumerate(target):
                if t == c:
                    target[i] = best
            changed = True
    return (target if changed else None), counts


class TorchRasterizer(Rasterizer):
    """Vectorised z-buffer rasterizer in pure torch; see the module doc.

    ``max_pairs`` bounds the number of (triangle, pixel) candidates held at once.
    """

    name = "torch"

    def __init__(self, max_pairs: int = 1 << 21, merge_pixels: int = 8192) -> None:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be positive, got {max_pairs}")
        self.max_pairs = int(max_pairs)
        self.merge_pixels = int(merge_pixels)
        self._grids: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def triangle_ids(self, screen_vertices: Tensor, triangles: Tensor, height: int, width: int,
                     perspective: bool = True) -> Tensor:
        b, n, _ = screen_vertices.shape
        f = triangles.shape[0]
        device = screen_vertices.device
        if f == 0 or n == 0:
            return torch.full((b, height, width), -1, dtype=torch.long, device=device)

        # Coordinate-major layouts throughout: 1-D index_select on contiguous rows is several
        # times faster on CPU than fancy indexing of (…, 3) rows.
        coords = screen_vertices.to(torch.float32).permute(2, 0, 1).reshape(3, b * n)
        corner = triangles.t()[:, None, :] + (torch.arange(b, device=device) * n)[None, :, None]  # (3, B, F)
        fv = coords.index_select(1, corner.reshape(-1)).view(3, 3, b * f)  # (xyz, corner, B·F)
        x, y, z = fv[0], fv[1], fv[2]
        x0 = x.amin(0).ceil_().clamp_(min=0)
        x1 = x.amax(0).floor_().clamp_(max=width - 1)
        y0 = y.amin(0).ceil_().clamp_(min=0)
        y1 = y.amax(0).floor_().clamp_(max=height - 1)
        ok = (x1 >= x0) & (y1 >= y0)
        if perspective:
            ok &= z.amin(0) > 0
        else:
            ok &= torch.isfinite(z).all(0)
        sel = torch.nonzero(ok).squeeze(1)
        if sel.numel() == 0:
            return torch.full((b, height, width), -1, dtype=torch.long, device=device)

        bw = (x1 - x0).to(torch.long).index_select(0, sel) + 1
        bh = (y1 - y0).to(torch.long).index_select(0, sel) + 1
        # power-of-two tile classes (k_w, k_h) ⊇ box, small classes merged into larger ones;
        # sorted so that every class is a contiguous run
        lw = torch.ceil(torch.log2(bw.to(torch.float32))).to(torch.long)
        lh = torch.ceil(torch.log2(bh.to(torch.float32))).to(torch.long)
        cls = lw * 32 + lh
        lut, counts = _merge_classes(torch.bincount(cls).tolist(), self.merge_pixels)
        if lut is not None:
            cls = torch.as_tensor(lut, device=device).index_select(0, cls)
        order = torch.argsort(cls)
        sel = sel.index_select(0, order)
        bw, bh = bw.index_select(0, order), bh.index_select(0, order)
        max_lw = max((c // 32 for c, k in enumerate(counts) if k), default=0)
        max_lh = max((c % 32 for c, k in enumerate(counts) if k), default=0)

        # corners relative to the box corner (pixel (x0, y0) becomes (0, 0))
        ox, oy = x0.index_select(0, sel), y0.index_select(0, sel)
        xa, xb, xc = (x[k].index_select(0, sel) - ox for k in range(3))
        ya, yb, yc = (y[k].index_select(0, sel) - oy for k in range(3))
        zs = torch.stack([z[k].index_select(0, sel) for k in range(3)])
        # λ_k(p) = (A_k·px + B_k·py + C_k) / area2: the sub-triangle opposite corner k
        A = torch.stack([yb - yc, yc - ya, ya - yb])
        B = torch.stack([xc - xb, xa - xc, xb - xa])
        C = torch.stack([xb * yc - xc * yb, xc * ya - xa * yc, xa * yb - xb * ya])
        area2 = C.sum(0)  # twice the signed area
        nondegenerate = area2.abs() > 1e-10
        inv = torch.where(nondegenerate, 1.0 / area2, torch.zeros_like(area2))
        A, B, C = A * inv, B * inv, C * inv
        C[0] = torch.where(nondegenerate, C[0], -1.0)  # λ0 ≡ -1: never inside
        # depth key, affine in the pixel position and positive inside the triangle:
        # 1/z (perspective; larger = nearer) or z shifted to be ≥ 1 (orthographic)
        zk = 1.0 / zs if perspective else zs - zs.min() + 1.0
        key_offset = 2.0 * float(zk.max()) if perspective else 0.0
        sign = -1.0 if perspective else 1.0  # perspective key = 2·max(1/z) − 1/z: > 0, smaller = nearer
        # (A, B, C) × S × (λ0, λ1, λ2, key): a class's run coef[:, s0:s1] views as (3, S_c·4)
        coef = torch.stack([torch.cat([A, sign * (A * zk).sum(0, keepdim=True)]).t(),
                            torch.cat([B, sign * (B * zk).sum(0, keepdim=True)]).t(),
                            torch.cat([C, sign * (C * zk).sum(0, keepdim=True) + key_offset]).t()])

        pad_w = min(_PAD, 1 << max_lw)
        pad_h = min(_PAD, 1 << max_lh)
        stride_w, stride_h = width + pad_w, height + pad_h
        base = (torch.div(sel, f, rounding_mode="floor") * (stride_h * stride_w)
                + oy.to(torch.long) * stride_w + ox.to(torch.long))
        gid = sel.to(torch.int32)  # b·F + f: the low word of the key

        zbuf = torch.full((b * stride_h * stride_w,), _SENTINEL, dtype=torch.int64, device=device)
        start = 0
        for c, cnt in enumerate(counts):
            if cnt == 0:
                continue
            kw, kh = 1 << (c // 32), 1 << (c % 32)
            step = max(1, self.max_pairs // (kw * kh))
            for s0 in range(start, start + cnt, step):
                s1 = min(s0 + step, start + cnt)
                box = (bw[s0:s1], bh[s0:s1]) if (kw > pad_w or kh > pad_h) else None
                self._tile(zbuf, kw, kh, coef[:, s0:s1], base[s0:s1], gid[s0:s1], stride_w, box)
            start += cnt

        keys = zbuf.view(b, stride_h, stride_w)[:, :height, :width]
        ids = (keys & 0xFFFFFFFF)
        if b > 1:
            ids = torch.remainder(ids, f)
        return torch.where((keys >> 32) != _FAR, ids, -1)

    def _grid(self, kw: int, kh: int, stride: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cached tile tensors: grid (T, 3) float32 rows (px, py, 1), pixel offsets (T, 1), rx, ry (T, 1)."""
        key = (kw, kh, stride, str(device))
        hit = self._grids.get(key)
        if hit is None:
            ry = torch.arange(kh, device=device).repeat_interleave(kw)[:, None]
            rx = torch.arange(kw, device=device).repeat(kh)[:, None]
            grid = torch.cat([rx, ry, torch.ones_like(rx)], 1).to(torch.float32)
            hit = (grid, ry * stride + rx, rx, ry)
            if len(self._grids) > 256:
                self._grids.clear()
            self._grids[key] = hit
        return hit

    def _tile(self, zbuf: Tensor, kw: int, kh: int, coef: Tensor, base: Tensor, gid: Tensor, stride: int,
              box: Optional[tuple[Tensor, Tensor]]) -> None:
        """Evaluate triangles (``coef`` (3, S, 4), ``base``/``gid`` (S,)) on a kh × kw tile at their box corner."""
        grid, offset, rx, ry = self._grid(kw, kh, stride, zbuf.device)
        s = coef.shape[1]
        # (T, 3) @ (3, S·4): one wide GEMM, much faster than broadcasting or a (S·4, 3) @ (3, T) GEMM
        val = (grid @ coef.reshape(3, s * 4)).view(-1, s, 4)  # (T, S, λ0 λ1 λ2 key)
        inside = val[..., :3].amin(-1) >= -_INSIDE_EPS
        pix = base + offset  # (T, S)
        if box is not None:
            inside &= (rx < box[0]) & (ry < box[1])
            pix = torch.where(inside, pix, 0)
        # the key is positive inside the triangle, where the integer order of float bits is the float order
        bits = torch.where(inside, val[..., 3].view(torch.int32), _FAR)
        # int64 key = (bits << 32) | gid, assembled from two int32 words (cheaper than int64 shifts)
        words = [gid.expand_as(bits), bits]
        key = torch.stack(words if _LITTLE_ENDIAN else words[::-1], -1).view(torch.int64)
        zbuf.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin", include_self=True)
