"""Small image filters on (B, C, H, W) tensors, shared by texture, photometric and detail code."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blur_masked", "dilate", "erode", "opening"]


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
