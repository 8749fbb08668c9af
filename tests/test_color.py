"""The sRGB curve (face3d.color): reference values, numpy/torch agreement, inverse, slope."""
from __future__ import annotations

import numpy as np
import torch

from face3d.color import linear_to_srgb, srgb_to_linear, srgb_to_linear_slope


def test_reference_values():
    # IEC 61966-2-1: 0.5 → ((0.5 + 0.055) / 1.055) ** 2.4; 0.04 lies on the linear toe (/12.92)
    np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 0.04, 0.5, 1.0])),
                               [0.0, 0.04 / 12.92, 0.2140411, 1.0], atol=1e-7)
    # 8-bit 188 is the usual "mid grey" that decodes to about 0.5 linear
    assert abs(srgb_to_linear(188 / 255) - 0.5029) < 1e-4
    # out-of-range input is clamped, not extrapolated
    np.testing.assert_allclose(linear_to_srgb(np.array([-0.2, 1.7])), [0.0, 1.0], atol=1e-12)


def test_numpy_and_torch_agree_and_invert():
    c = np.linspace(0.0, 1.0, 1001)
    lin = srgb_to_linear(c)
    assert lin.dtype == np.float64
    np.testing.assert_allclose(linear_to_srgb(lin), c, atol=1e-12)
    t = torch.from_numpy(c)
    np.testing.assert_allclose(srgb_to_linear(t).numpy(), lin, atol=1e-12)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(t)).numpy(), c, atol=1e-12)
    np.testing.assert_allclose(srgb_to_linear_slope(t).numpy(), srgb_to_linear_slope(c), atol=1e-12)


def test_slope_is_the_derivative():
    # away from the toe/curve joint (0.04045), where the curve has a tiny kink
    c = torch.tensor([0.01, 0.03, 0.1, 0.3, 0.6, 0.95], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(srgb_to_linear(c).sum(), c)
    torch.testing.assert_close(srgb_to_linear_slope(c.detach()), grad)
    x, h = c.detach().numpy(), 1e-6
    fd = (srgb_to_linear(x + h) - srgb_to_linear(x - h)) / (2 * h)
    np.testing.assert_allclose(srgb_to_linear_slope(x), fd, rtol=1e-6)
