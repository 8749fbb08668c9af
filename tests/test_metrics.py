"""face3d.metrics against hand values and a direct numpy reference of SSIM (Wang et al. 2004)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from face3d.metrics import mask_iou, mse, psnr, ssim, ssim_components


def _ssim_reference(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5, L: float = 1.0) -> float:
    """Mean SSIM of two 2-D arrays, written out window by window with a full 2-D Gaussian."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cab = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_identical_images():
    x = torch.rand(2, 3, 24, 24)
    assert torch.equal(mse(x, x), torch.zeros(2))
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    lum, con, st = ssim_components(x, x)
    for m in (lum, con, st):
        assert m.shape == (2, 3, 24, 24)
        assert torch.allclose(m, torch.ones_like(m), atol=1e-4)


def test_psnr_of_known_noise_level():
    g = torch.Generator().manual_seed(1)
    x = torch.full((2, 3, 128, 128), 0.5, dtype=torch.float64)
    for sigma in (0.01, 0.05, 0.1):
        y = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
        p = psnr(x, y)
        # 98k samples: MSE is within ~1 % of σ², i.e. PSNR within ~0.05 dB of 20 log10(1/σ).
        assert torch.allclose(p, torch.full_like(p, 20 * math.log10(1 / sigma)), atol=0.05), (sigma, p)


def test_mse_and_psnr_hand_values():
    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([[[[0.1, 0.0], [0.0, 0.3]]]])
    assert mse(x, y).item() == pytest.approx((0.01 + 0.09) / 4)
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / 0.025))
    assert psnr(x, y, data_range=255.0).item() == pytest.approx(10 * math.log10(255**2 / 0.025))
    m = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])
    assert mse(x, y, mask=m).item() == pytest.approx(0.09)


def test_ssim_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.random((20, 22))
    # A related image: blurred, brightened and noisy, so l, c and s all differ from 1.
    y = np.clip(0.7 * x + 0.2 + 0.05 * rng.standard_normal(x.shape), 0, 1)
    ref = _ssim_reference(x, y)
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item()
    assert got == pytest.approx(ref, abs=1e-10)
    assert 0.2 < ref < 0.95
    # Channels are averaged: stacking the pair with an identical channel gives (ref + 1) / 2.
    xs = torch.from_numpy(np.stack([x, x]))[None]
    ys = torch.from_numpy(np.stack([y, x]))[None]
    assert ssim(xs, ys).item() == pytest.approx((ref + 1) / 2, abs=1e-10)


def test_components_multiply_to_ssim():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 20, 20, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    lum, con, st = ssim_components(x, y, padding="valid")
    assert lum.shape == (2, 3, 10, 10)
    assert torch.allclose((lum * con * st).flatten(1).mean(1), ssim(x, y), atol=1e-9)
    # Contrast drops when y's local variance is scaled, luminance when its mean shifts.
    lum2, con2, _ = ssim_components(x, 0.5 * x + 0.4)
    assert lum2.mean() < 0.999 and con2.mean() < 0.95
    l1, c1, s1 = ssim_components(x, y, channel_mean=True)
    assert l1.shape == c1.shape == s1.shape == (2, 1, 20, 20)


def test_ssim_components_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 1, 7, 7, generator=g, dtype=torch.float64)

    def f(a):
        lum, con, st = ssim_components(a, y, window=5, sigma=1.0)
        return (lum * 0.3 + con * st).mean()

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradcheck(lambda a: ssim(a, y, window=5, sigma=1.0), (x,))


def test_mask_iou():
    a = torch.zeros(3, 1, 4, 4)
    b = torch.zeros(3, 1, 4, 4)
    a[0, 0, :2, :2] = 1
    b[0, 0, :2, :] = 1  # 4 of 8
    a[1, 0, 0, 0] = 1  # disjoint
    b[1, 0, 3, 3] = 1
    iou = mask_iou(a, b)  # image 2: both empty
    assert torch.allclose(iou, torch.tensor([0.5, 0.0, 1.0]))
    assert mask_iou(a * 0.4, a).tolist() == [0.0, 0.0, 1.0]  # soft masks binarised at 0.5


def test_bad_input():
    with pytest.raises(ValueError, match="differ"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="smaller"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
