"""Colour encodings.

Photos and texture PNGs hold sRGB-encoded values; shading (albedo × irradiance) is done
in linear RGB. Both functions take numpy arrays or torch tensors with values in [0, 1]
(any shape) and return the same type; the torch versions are differentiable.
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
