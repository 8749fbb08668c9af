"""Colour encodings.

Photos and texture PNGs hold sRGB-encoded values; shading (albedo × irradiance) is done
in linear RGB. The functions take numpy arrays or torch tensors with values in [0, 1]
(any shape; values outside are clamped first) and return the same type; numpy results are
float64 and the torch versions are differentiable. This is the toolkit's only copy of the
sRGB curve (IEC 61966-2-1): converters, export and shading all call it.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def srgb_to_linear(c: ArrayT) -> ArrayT:
    """IEC 61966-2-1 sRGB decoding: sRGB in [0, 1] → linear RGB in [0, 1]."""
    if isinstance(c, torch.Tensor):
        c = c.clamp(0.0, 1.0)
        return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055).clamp_min(1e-12) ** 2.4)
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: ArrayT) -> ArrayT:
    """IEC 61966-2-1 sRGB encoding: linear RGB in [0, 1] → sRGB in [0, 1]."""
    if isinstance(c, torch.Tensor):
        c = c.clamp(0.0, 1.0)
        return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


def srgb_to_linear_slope(c: ArrayT) -> ArrayT:
    """Derivative d(linear)/d(sRGB) of :func:`srgb_to_linear` at sRGB ``c``.

    Used to carry a basis given in sRGB (e.g. a PCA albedo basis) through the curve to first
    order: ``lin(mu + B d) ≈ lin(mu) + slope(mu) * B d``. ``c`` is clamped to [0, 1] like in
    :func:`srgb_to_linear`.
    """
    if isinstance(c, torch.Tensor):
        c = c.clamp(0.0, 1.0)
        return torch.where(c <= 0.04045, torch.full_like(c, 1.0 / 12.92),
                           2.4 / 1.055 * ((c + 0.055) / 1.055) ** 1.4)
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, 1.0 / 12.92, 2.4 / 1.055 * ((c + 0.055) / 1.055) ** 1.4)


#: D65 reference white (CIE 1931 2°), XYZ with Y = 1.
_D65_WHITE = (0.95047, 1.0, 1.08883)
#: linear sRGB → CIE XYZ (IEC 61966-2-1, D65)
_SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
                (0.2126729, 0.7151522, 0.0721750),
                (0.0193339, 0.1191920, 0.9503041))


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (B, 3, H, W) in [0, 1] → CIE L*a*b* (D65), (B, 3, H, W): L* in [0, 100], a*, b* about ±100.

    sRGB decoding, the IEC 61966-2-1 matrix to XYZ, then CIE 1976 L*a*b* with the linear
    segment below (6/29)³. Differentiable (torch only: used for colour differences such as
    CFR-GAN's eq. 5 textural term).
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) sRGB, got shape {tuple(rgb.shape)}")
    lin = srgb_to_linear(rgb)
    m = torch.tensor(_SRGB_TO_XYZ, dtype=lin.dtype, device=lin.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / torch.tensor(_D65_WHITE, dtype=lin.dtype, device=lin.device).view(1, 3, 1, 1)
    d = 6.0 / 29.0
    f = torch.where(xyz > d ** 3, xyz.clamp_min(d ** 3) ** (1.0 / 3.0), xyz / (3 * d * d) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], 1)
