"""The coefficient layout shared by the regressor and the synthetic data."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.camera import euler_to_matrix, project, transform
from face3d.coefficients import ALIGNED_DISTANCE_MM, FaceParams, aligned_camera, coefficient_count
from face3d.morphable_model import MorphableModel


def test_split_join_round_trip(toy_model):
    m = MorphableModel(toy_model)
    n = coefficient_count(m)
    assert n == m.n_id + m.n_exp + m.n_albedo + 33
    v = torch.randn(4, n)
    p = FaceParams.split(v, m)
    assert p.alpha.shape == (4, m.n_id) and p.sh.shape == (4, 27) and p.translation.shape == (4, 3)
    torch.testing.assert_close(p.join(), v)
    with pytest.raises(ValueError, match="coefficients for model"):
        FaceParams.split(torch.zeros(4, n + 1), m)


def test_pose_conversions(toy_model):
    m = MorphableModel(toy_model, dtype=torch.float64)
    R = euler_to_matrix(torch.tensor([30.0, -10.0], dtype=torch.float64), torch.tensor([5.0, 0.0], dtype=torch.float64),
                        torch.tensor([-3.0, 8.0], dtype=torch.float64))
    t = torch.tensor([[5.0, -2.0, 950.0], [0.0, 0.0, 1100.0]], dtype=torch.float64)
    p = FaceParams.from_pose(torch.zeros(2, m.n_id, dtype=torch.float64), torch.zeros(2, m.n_exp, dtype=torch.float64), R, t)
    torch.testing.assert_close(p.rotation(), R)
    torch.testing.assert_close(p.camera_translation(), t)
    torch.testing.assert_close(p.angles[0, 0], torch.tensor(math.radians(30.0), dtype=torch.float64))


def test_aligned_camera_frames_a_face(toy_model):
    m = MorphableModel(toy_model)
    K = aligned_camera(1)
    R = euler_to_matrix(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    uv = project(transform(m.shape(), R, torch.tensor([[0.0, 0.0, ALIGNED_DISTANCE_MM]])), K)
    width = float(uv[0, :, 0].max() - uv[0, :, 0].min())
    assert 100 < width < 200 and abs(float(uv[0, :, 0].mean()) - 111.5) < 10
