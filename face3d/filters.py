"""Small image filters on (B, C, H, W) tensors, shared by texture, photometric and detail code."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blur_masked", "dilate", "erode", "opening", "poisson_blend", "push_pull_fill"]


def blur_masked(x: Tensor, mask: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``x`` (B, C, H, W) over the pixels of ``mask`` (B, 1, H, W) only.

    Normalised convolution: each output is the Gaussian-weighted mean of the masked
    pixels around it, so values off the mask neither leak in nor darken the edge.
    Separable, replicate padding; σ in pixels.
    """
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    stack = torch.cat([x * mask, mask.expand(x.shape[0], 1, -1, -1)], 1)
    c = stack.shape[1]
    s = stack.reshape(-1, 1, *stack.shape[-2:])
    s = F.conv2d(F.pad(s, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    s = F.conv2d(F.pad(s, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    s = s.view(x.shape[0], c, *x.shape[-2:])
    return s[:, :-1] / s[:, -1:].clamp_min(1e-6)


def dilate(x: Tensor, radius: int) -> Tensor:
    """Grey dilation by a (2r+1)² square, as two separable 1-D max filters."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))


def erode(x: Tensor, radius: int) -> Tensor:
    """Grey erosion by a (2r+1)² square."""
    return -dilate(-x, radius)


def opening(x: Tensor, radius: int) -> Tensor:
    """Morphological opening (erode, then dilate): removes structures thinner than 2r+1."""
    return dilate(erode(x, radius), radius)


def poisson_blend(target: Tensor, source: Tensor, mask: Tensor, region: Tensor | None = None,
                  anchor: float = 1e-3) -> Tensor:
    """Seamless cloning (Pérez et al. 2003): inside ``mask`` take ``source``'s gradients, matched to
    ``target`` across the mask's border.

    Solves, per item and channel, the discrete Poisson equation on the 4-connected pixels p of
    ``mask`` (B, 1, H, W) > 0.5: Σ_q (f_p − f_q) = Σ_q (s_p − s_q) over neighbours q inside
    ``region`` (B, 1, H, W) (default: the whole image), with f_q = target_q for q outside the mask.
    Neighbours outside ``region`` are left out (a free edge), and a small ``anchor`` term
    ``anchor·(f_p − s_p)`` keeps a mask component with no fixed border well posed (it then
    equals the source). ``target``, ``source``: (B, C, H, W). Returns the blended (B, C, H, W):
    ``target`` outside the mask. Sparse direct solve (SciPy), CPU; not differentiable.
    """
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    if target.shape != source.shape or target.ndim != 4:
        raise ValueError(f"target and source must be equal (B, C, H, W), got {tuple(target.shape)}, "
                         f"{tuple(source.shape)}")
    b, c, h, w = target.shape
    out = target.detach().clone()
    m_all = (mask.detach() > 0.5).cpu().numpy().reshape(b, h, w)
    r_all = np.ones((b, h, w), bool) if region is None else (region.detach() > 0.5).cpu().numpy().reshape(b, h, w)
    tgt = target.detach().cpu().double().numpy()
    src = source.detach().cpu().double().numpy()
    for i in range(b):
        m = m_all[i] & r_all[i]
        n = int(m.sum())
        if n == 0:
            continue
        index = -np.ones((h, w), np.int64)
        index[m] = np.arange(n)
        ys, xs = np.nonzero(m)
        rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, anchor)]
        diag = np.full(n, anchor)
        rhs = anchor * src[i][:, ys, xs].T  # (n, C)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            qy, qx = ys + dy, xs + dx
            inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            qy_c, qx_c = np.clip(qy, 0, h - 1), np.clip(qx, 0, w - 1)
            ok = inside & r_all[i][qy_c, qx_c]
            diag = diag + ok
            grad = (src[i][:, ys, xs] - src[i][:, qy_c, qx_c]).T * ok[:, None]
            rhs = rhs + grad
            q_idx = index[qy_c, qx_c]
            unknown = ok & (q_idx >= 0)
            rows.append(np.nonzero(unknown)[0])
            cols.append(q_idx[unknown])
            vals.append(-np.ones(int(unknown.sum())))
            known = ok & (q_idx < 0)
            rhs[known] += tgt[i][:, qy_c[known], qx_c[known]].T
        vals[0] = diag
        A = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        sol = spla.splu(A).solve(rhs)
        out[i][:, torch.from_numpy(ys), torch.from_numpy(xs)] = torch.from_numpy(sol.T).to(out)
    return out


def push_pull_fill(image: Tensor, known: Tensor, levels: "int | None" = None) -> Tensor:
    """Fill the pixels where ``known`` (B, 1, H, W) is 0 from the known pixels of ``image``
    (B, C, H, W): a push-pull pyramid (masked 2×2 averages down, bilinear up, known pixels
    kept at every level), so holes get a smooth blend of their surroundings."""
    if levels is None:
        levels = max(1, int(math.log2(max(image.shape[-2:]))))
    w = known.to(image.dtype)
    x = image * w
    stack = []
    for _ in range(levels):
        stack.append((x, w))
        if min(x.shape[-2:]) < 2:
            break
        x, w = F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
    filled = x / w.clamp_min(1e-8)
    for x_l, w_l in reversed(stack):
        up = F.interpolate(filled, size=x_l.shape[-2:], mode="bilinear", align_corners=False)
        # premultiplied blend: known colour where there is weight, the coarser fill elsewhere
        filled = x_l + (1.0 - w_l.clamp(0, 1)) * up
    return filled
