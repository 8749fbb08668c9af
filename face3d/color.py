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
