"""Image-quality and mask metrics on batched tensors: MSE, PSNR, SSIM (and its three maps), mask IoU.

Images are (B, C, H, W) float tensors in [0, ``data_range``] (default 1); every metric returns one
value per image, shape (B,), so callers can average, bucket or tabulate as they like. All functions
are differentiable where that makes sense (MSE, PSNR away from 0, SSIM and its components), so the
same code serves as loss and as evaluation metric.

SSIM follows Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 13(4), 2004: an 11×11 Gaussian window with σ = 1.5, constants
C1 = (0.01 L)², C2 = (0.03 L)², C3 = C2 / 2 (eq. 6-13), so that l·c·s equals the usual combined
SSIM formula (eq. 13). Statistics are local Gaussian-weighted means; as in the authors' reference
implementation the mean SSIM is taken over the "valid" region where the window fits inside the image.
Swap-R&R (seeds/swap_rr) uses the contrast × structure part as a loss; ``ssim_components`` exposes it.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse", "psnr", "ssim", "ssim_components", "gaussian_window", "mask_iou"]


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 4 or y.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W); got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")


def mse(x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean squared error per image, (B,).

    Args:
        x, y: (B, C, H, W) images.
        mask: optional (B, 1, H, W) weights in [0, 1]; the mean is then taken over the masked
            pixels only (all channels). An empty mask gives 0.
    """
    _check_pair(x, y)
    d = (x - y) ** 2
    if mask is None:
        return d.flatten(1).mean(1)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != x.shape[-2:] or mask.shape[0] != x.shape[0]:
        raise ValueError(f"mask must be (B, 1, H, W) matching the images; got {tuple(mask.shape)}")
    m = mask.to(d.dtype)
    num = (d * m).flatten(1).sum(1)
    den = m.flatten(1).sum(1) * x.shape[1]
    return num / den.clamp_min(1e-12)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, mask: Optional[Tensor] = None) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, (B,): 10 log10(L² / MSE); +inf where x == y."""
    e = mse(x, y, mask)
    # 10·log10(L²/0) is +inf in IEEE arithmetic; write it explicitly so no warning or NaN appears.
    out = 10.0 * torch.log10(data_range**2 / e.clamp_min(torch.finfo(e.dtype).tiny))
    return torch.where(e > 0, out, torch.full_like(out, math.inf))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (odd), shape (size,)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size}")
    if sigma <= 0:
        raise ValueError(f"window sigma must be > 0, got {sigma}")
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _local_mean(x: Tensor, g: Tensor, padding: str) -> Tensor:
    """Separable Gaussian filtering of every channel of (B, C, H, W)."""
    b, c, h, w = x.shape
    r = g.numel() // 2
    s = x.reshape(b * c, 1, h, w)
    if padding == "same":
        # Reflection keeps the maps the image's size without the dark rim zero padding would add.
        s = F.pad(s, (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
    s = F.conv2d(s, g.view(1, 1, 1, -1))
    s = F.conv2d(s, g.view(1, 1, -1, 1))
    return s.view(b, c, *s.shape[-2:])


def _ssim_setup(x: Tensor, y: Tensor, window: int, sigma: float, data_range: float, padding: str
                ) -> tuple[Tensor, float, float]:
    """Checks of the SSIM functions' arguments; the Gaussian window and Wang et al.'s C1, C2."""
    _check_pair(x, y)
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    if padding == "valid" and min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} px are smaller than the {window}-px SSIM window")
    return gaussian_window(window, sigma, x.dtype, x.device), (0.01 * data_range) ** 2, (0.03 * data_range) ** 2


def ssim_components(
    x: Tensor,
    y: Tensor,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    padding: str = "same",
    channel_mean: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Luminance, contrast and structure maps of SSIM (Wang et al. 2004, eqs. 6, 9, 10).

    l = (2 μx μy + C1) / (μx² + μy² + C1),  c = (2 σx σy + C2) / (σx² + σy² + C2),
    s = (σxy + C3) / (σx σy + C3), with C1 = (0.01 L)², C2 = (0.03 L)², C3 = C2 / 2;
    the product l·c·s is the SSIM map.

    Args:
        x, y: (B, C, H, W) images in [0, data_range].
        window, sigma: Gaussian window size (odd) and standard deviation in pixels.
        padding: "same" (reflect-padded, maps are H×W) or "valid" (maps are (H-window+1)×(W-window+1)).
        channel_mean: average each map over channels, giving (B, 1, h, w).

    Returns:
        (l, c, s), each (B, C, h, w) (or (B, 1, h, w) with ``channel_mean``); differentiable.
    """
    g, c1, c2 = _ssim_setup(x, y, window, sigma, data_range, padding)
    c3 = c2 / 2
    mx, my = _local_mean(x, g, padding), _local_mean(y, g, padding)
    vx = (_local_mean(x * x, g, padding) - mx * mx).clamp_min(0)
    vy = (_local_mean(y * y, g, padding) - my * my).clamp_min(0)
    cxy = _local_mean(x * y, g, padding) - mx * my
    # A tiny floor keeps the square root's gradient finite on flat patches (σ = 0); it is 1e-6 in
    # intensity units, far below √C2 = 0.03, so the values do not move.
    sx, sy = torch.sqrt(vx + 1e-12), torch.sqrt(vy + 1e-12)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    con = (2 * sx * sy + c2) / (vx + vy + c2)
    struct = (cxy + c3) / (sx * sy + c3)
    if channel_mean:
        lum, con, struct = (t.mean(1, keepdim=True) for t in (lum, con, struct))
    return lum, con, struct


def ssim(
    x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0, padding: str = "valid"
) -> Tensor:
    """Mean SSIM per image, (B,): the mean over channels and pixels of the SSIM map.

    Uses the combined form (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), which equals
    l·c·s with C3 = C2/2 exactly. ``padding="valid"`` (the reference implementation's choice) averages
    only where the window fits; images must then be at least ``window`` pixels on each side.
    """
    g, c1, c2 = _ssim_setup(x, y, window, sigma, data_range, padding)
    mx, my = _local_mean(x, g, padding), _local_mean(y, g, padding)
    vx = _local_mean(x * x, g, padding) - mx * mx
    vy = _local_mean(y * y, g, padding) - my * my
    cxy = _local_mean(x * y, g, padding) - mx * my
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return m.flatten(1).mean(1)


def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of binary masks per image, (B,).

    ``pred`` and ``target`` are (B, 1, H, W) (or (B, H, W)) soft or hard masks, binarised at
    ``threshold``. Two empty masks agree perfectly: IoU 1.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"masks must be (B, 1, H, W) or (B, H, W); got {tuple(pred.shape)}")
    p = (pred > threshold).flatten(1)
    t = (target > threshold).flatten(1)
    inter = (p & t).sum(1).double()
    union = (p | t).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return iou.to(pred.dtype if pred.is_floating_point() else torch.float32)
