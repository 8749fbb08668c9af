"""MorphableModel: shapes, linearity, the npz format and its errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from face3d.morphable_model import MorphableModel, load_model_arrays, save_model_arrays


def test_shape_is_linear_in_coefficients(toy_model):
    m = MorphableModel(toy_model, dtype=torch.float64)
    a1, a2 = torch.randn(3, m.n_id, dtype=torch.float64), torch.randn(3, m.n_id, dtype=torch.float64)
    b = torch.randn(3, m.n_exp, dtype=torch.float64)
    s0 = m.shape(None, None)
    lhs = m.shape(a1 + a2, b) - s0
    rhs = (m.shape(a1, None) - s0) + (m.shape(a2, None) - s0) + (m.shape(None, b) - s0)
    torch.testing.assert_close(lhs, rhs.expand_as(lhs))
    # mode k with coefficient 1 adds basis k exactly
    e = torch.zeros(1, m.n_id, dtype=torch.float64)
    e[0, 4] = 1.0
    torch.testing.assert_close(m.shape(e) - s0, m.id_basis[4][None])


def test_shapes_and_truncated_coefficients(toy_model):
    m = MorphableModel(toy_model)
    s = m.shape(torch.zeros(5, 3), torch.zeros(5, 2))
    assert s.shape == (5, m.n_vertices, 3)
    assert m.albedo(torch.zeros(5, m.n_albedo)).shape == (5, m.n_vertices, 3)
    assert m.albedo(batch=2).shape == (2, m.n_vertices, 3)
    assert m.landmarks(s).shape == (5, 68, 3)
    with pytest.raises(ValueError, match="coefficients for a basis"):
        m.shape(torch.zeros(1, m.n_id + 1))
    with pytest.raises(ValueError, match="batch sizes differ"):
        m.shape(torch.zeros(2, 3), torch.zeros(3, 2))


def test_prior_energy_and_sampling(toy_model):
    m = MorphableModel(toy_model, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    a, b, d = m.sample_coefficients(4000, generator=g)
    # coefficients drawn from the prior have E[(α/ξ)²] = 1 per mode
    e = m.prior_energy(a, None) / m.n_id
    assert abs(e.mean().item() - 1.0) < 0.05
    assert (d.std(0) / m.albedo_std - 1).abs().max() < 0.1


def test_save_load_round_trip(tmp_path, toy_model):
    path = save_model_arrays(toy_model, tmp_path / "toy.npz")
    back = load_model_arrays(path)
    for key in ("mean_shape", "id_basis", "exp_std", "triangles", "uvs", "landmark_ids", "contour_lines"):
        np.testing.assert_allclose(getattr(back, key), getattr(toy_model, key), rtol=1e-6, atol=1e-5)
    assert back.meta["name"] == "toy" and back.meta["units"] == "mm" and back.meta["format_version"] == 1
    m = MorphableModel.load(path)
    m2 = MorphableModel.load(m.save(tmp_path / "again.npz"))
    torch.testing.assert_close(m.id_basis, m2.id_basis)
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file behind"


def test_format_errors(tmp_path, toy_model):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model_arrays(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a face3d model file"):
        load_model_arrays(tmp_path / "other.npz")
    bad = load_model_arrays(save_model_arrays(toy_model, tmp_path / "t.npz"))
    bad.landmark_ids = bad.landmark_ids[:60]
    with pytest.raises(ValueError, match="landmark_ids must be"):
        bad.validate()


def test_device_and_dtype_flow(toy_model):
    m = MorphableModel(toy_model, dtype=torch.float64, device="cpu")
    assert m.shape().dtype == torch.float64 and m.triangles.dtype == torch.long
    m32 = m.float()
    assert m32.mean_shape.dtype == torch.float32
