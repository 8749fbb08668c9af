"""Image grids for sample sheets (torchvision's ``make_grid`` is not available here)."""
from __future__ import annotations

import math

from torch import Tensor

__all__ = ["make_grid"]


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile ``images`` ``(B, C, H, W)`` into one ``(C, H', W')`` image, row by row.

    Args:
        images: a batch; ``C`` is 1 or 3 (1 is repeated to 3 channels). ``(C, H, W)`` is
            taken as a batch of one.
        nrow: images per row (fewer when B is smaller).
        padding: pixels of ``pad_value`` around and between the tiles.
        pad_value: colour of the padding (images are usually in [0, 1]).

    Returns:
        ``(3, rows·(H + p) + p, cols·(W + p) + p)``, same dtype and device.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1|3, H, W) images, got shape {tuple(images.shape)}")
    if nrow < 1 or padding < 0:
        raise ValueError("nrow must be >= 1 and padding >= 0")
    images = images.detach()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    b, c, h, w = images.shape
    cols = min(nrow, b)
    rows = max(1, math.ceil(b / cols))
    out = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(b):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        out[:, y:y + h, x:x + w] = images[i]
    return out
