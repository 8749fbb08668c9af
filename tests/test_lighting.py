"""SH lighting: constants, orthogonality, frames, coefficient layout, least-squares estimation."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.lighting import (DENG_AMBIENT, NUM_SH, camera_to_view, estimate_sh, irradiance, sh_basis, shade)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def test_basis_is_deng_scaled_orthonormal_sh():
    """H_k = ±a_l · Y_lm with the textbook real-SH constants (independent of Deng's c_l)."""
    n = _unit(torch.randn(500, 3, dtype=torch.float64))
    x, y, z = n.unbind(-1)
    a0, a1, a2 = math.pi, 2 * math.pi / math.sqrt(3), 2 * math.pi / math.sqrt(8)
    # orthonormal real SH: 1/(2√π), √(3/4π), √(15/4π), √(5/16π), √(15/16π)
    y00, y1, y2, y20, y22 = 0.2820947918, 0.4886025119, 1.0925484306, 0.3153915653, 0.5462742153
    expected = torch.stack([
        torch.full_like(x, a0 * y00), -a1 * y1 * y, a1 * y1 * z, -a1 * y1 * x,
        a2 * y2 * x * y, -a2 * y2 * y * z, a2 * y20 * (3 * z * z - 1), -a2 * y2 * x * z, a2 * y22 * (x * x - y * y),
    ], -1)
    torch.testing.assert_close(sh_basis(n), expected, atol=1e-9, rtol=1e-8)


def test_basis_orthogonal_over_the_sphere():
    """∫ H_j H_k dω = a_l² δ_jk (midpoint rule on a θ-φ grid)."""
    nt, nphi = 300, 600
    theta = (torch.arange(nt, dtype=torch.float64) + 0.5) * math.pi / nt
    phi = (torch.arange(nphi, dtype=torch.float64) + 0.5) * 2 * math.pi / nphi
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    n = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1).reshape(-1, 3)
    w = (t.sin() * (math.pi / nt) * (2 * math.pi / nphi)).reshape(-1)
    h = sh_basis(n)
    gram = (h * w[:, None]).t() @ h
    a = [math.pi] + [2 * math.pi / math.sqrt(3)] * 3 + [2 * math.pi / math.sqrt(8)] * 5
    torch.testing.assert_close(gram, torch.diag(torch.tensor(a, dtype=torch.float64) ** 2), atol=2e-4, rtol=1e-4)


def test_known_values_facing_camera():
    n = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)  # view frame: toward the camera
    h = sh_basis(n)[0]
    a2c2 = (2 * math.pi / math.sqrt(8)) * (3 * math.sqrt(5) / math.sqrt(12 * math.pi))
    expected = torch.tensor([math.sqrt(math.pi) / 2, 0, math.sqrt(math.pi), 0, 0, 0, a2c2 / math.sqrt(3), 0, 0],
                            dtype=torch.float64)
    torch.testing.assert_close(h, expected, atol=1e-12, rtol=1e-12)


def test_camera_frame_conversion_and_semantics():
    n_cam = _unit(torch.randn(2, 50, 3))
    sh = torch.randn(2, 27)
    torch.testing.assert_close(irradiance(n_cam, sh, frame="camera"), irradiance(camera_to_view(n_cam), sh))
    # coefficient 2 (∝ z_view) > 0 lights the surface facing the camera, i.e. camera-frame −z
    g = torch.zeros(1, 27)
    g[0, 2] = 1.0
    toward = irradiance(torch.tensor([[[0.0, 0.0, -1.0]]]), g, frame="camera")[0, 0, 0]
    away = irradiance(torch.tensor([[[0.0, 0.0, 1.0]]]), g, frame="camera")[0, 0, 0]
    assert toward > 0 > away
    # coefficient 1 (∝ −y_view) < 0 lights surfaces facing up in the image (camera −y)
    g = torch.zeros(1, 27)
    g[0, 1] = -1.0
    assert irradiance(torch.tensor([[[0.0, -1.0, 0.0]]]), g, frame="camera")[0, 0, 0] > 0
    with pytest.raises(ValueError, match="frame"):
        irradiance(n_cam, sh, frame="world")


def test_layout_channel_major_and_ambient():
    n = _unit(torch.randn(1, 20, 3))
    sh = torch.zeros(1, 27)
    sh[0, NUM_SH] = 0.5  # G channel, coefficient 0
    e = irradiance(n, sh)
    assert torch.all(e[..., 0] == 0) and torch.all(e[..., 2] == 0)
    torch.testing.assert_close(e[..., 1], torch.full_like(e[..., 1], 0.5 * math.sqrt(math.pi) / 2))
    # ambient = adding it to coefficient 0 of every channel
    shifted = sh.clone()
    shifted[0, 0::NUM_SH] += DENG_AMBIENT
    torch.testing.assert_close(irradiance(n, sh, ambient=DENG_AMBIENT), irradiance(n, shifted))
    albedo = torch.rand(1, 20, 3)
    torch.testing.assert_close(shade(albedo, n, sh, ambient=DENG_AMBIENT), albedo * irradiance(n, shifted))
    with pytest.raises(ValueError, match="27"):
        irradiance(n, torch.zeros(1, 9))


@pytest.mark.parametrize("ambient", [0.0, DENG_AMBIENT])
def test_estimate_sh_recovers_coefficients(ambient):
    torch.manual_seed(1)
    b, m = 2, 400
    n = _unit(torch.randn(b, m, 3, dtype=torch.float64))
    n[..., 2] = n[..., 2].abs()  # a hemisphere, like a face seen from the front
    albedo = 0.3 + 0.6 * torch.rand(b, m, 3, dtype=torch.float64)
    gamma = 0.3 * torch.randn(b, 27, dtype=torch.float64)
    colours = shade(albedo, n, gamma, ambient=ambient)
    weights = torch.ones(b, m, dtype=torch.float64)
    colours[:, :40] += 5.0  # gross outliers, masked out below
    weights[:, :40] = 0.0
    est = estimate_sh(colours, albedo, n, weights=weights, ambient=ambient, ridge=0.0)
    torch.testing.assert_close(est, gamma, atol=1e-8, rtol=1e-6)


def test_shading_gradcheck():
    torch.manual_seed(2)
    albedo = torch.rand(1, 6, 3, dtype=torch.float64, requires_grad=True)
    normals = _unit(torch.randn(1, 6, 3, dtype=torch.float64)).requires_grad_(True)
    sh = torch.randn(1, 27, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, n, s: shade(a, n, s, ambient=0.8, frame="camera"), (albedo, normals, sh))
