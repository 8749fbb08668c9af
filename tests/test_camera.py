"""Pose parameterisations, projection and normals against hand-checked values."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.camera import (FRONTAL, Intrinsics, axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle,
                           matrix_to_euler, project, project_weak, transform, vertex_normals)


def test_sign_conventions():
    nose = torch.tensor([0.0, 0.0, 1.0])
    R = euler_to_matrix(torch.tensor([30.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0]
    assert (R @ nose)[0] > 0.4  # yaw > 0: nose to the viewer's right (+x)
    R = euler_to_matrix(torch.tensor([0.0]), torch.tensor([20.0]), torch.tensor([0.0]))[0]
    assert (R @ nose)[1] > 0.3  # pitch > 0: nose down in the image (+y)
    R = euler_to_matrix(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([90.0]))[0]
    right = R @ torch.tensor([1.0, 0.0, 0.0])  # model +x seen on screen after a 90° CCW roll points up (−y)
    torch.testing.assert_close(right, torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(euler_to_matrix(torch.zeros(1), torch.zeros(1), torch.zeros(1))[0], FRONTAL)


def test_euler_round_trip_and_axis_angle():
    g = torch.Generator().manual_seed(0)
    yaw = torch.rand(200, generator=g, dtype=torch.float64) * 170 - 85
    pitch = torch.rand(200, generator=g, dtype=torch.float64) * 160 - 80
    roll = torch.rand(200, generator=g, dtype=torch.float64) * 340 - 170
    R = euler_to_matrix(yaw, pitch, roll)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R))
    y2, p2, r2 = matrix_to_euler(R)
    torch.testing.assert_close(torch.stack([y2, p2, r2]), torch.stack([yaw, pitch, roll]))
    aa = matrix_to_axis_angle(R)
    torch.testing.assert_close(axis_angle_to_matrix(aa), R)
    # near-identity and near-π rotations
    small = torch.tensor([[1e-9, -2e-9, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(matrix_to_axis_angle(axis_angle_to_matrix(small)), small, atol=1e-12, rtol=0)
    big = torch.tensor([[math.pi - 1e-5, 0.0, 0.0], [0.0, 0.0, -(math.pi - 1e-4)]], dtype=torch.float64)
    torch.testing.assert_close(axis_angle_to_matrix(matrix_to_axis_angle(axis_angle_to_matrix(big))),
                               axis_angle_to_matrix(big))


def test_axis_angle_gradcheck():
    v = torch.tensor([[0.3, -0.2, 0.5], [1e-7, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (v,))


def test_projection_values():
    K = Intrinsics(torch.tensor([[1000.0, 800.0]]), torch.tensor([[100.0, 50.0]]))
    pts = torch.tensor([[[10.0, -20.0, 500.0], [0.0, 0.0, 1000.0]]])
    uv = project(pts, K)
    torch.testing.assert_close(uv, torch.tensor([[[120.0, 18.0], [100.0, 50.0]]]))
    weak = project_weak(pts, K, depth=torch.tensor([500.0]))
    torch.testing.assert_close(weak[0, 0], uv[0, 0])
    d = Intrinsics.default(224, 224, batch=2)
    assert d.focal.shape == (2, 2) and float(d.principal[0, 0]) == 111.5


def test_transform_and_projection_of_a_frontal_face():
    R = euler_to_matrix(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    t = torch.tensor([[0.0, 0.0, 1000.0]])
    pts = torch.tensor([[[10.0, 20.0, 30.0]]])  # right, up, toward the viewer
    cam = transform(pts, R, t)
    torch.testing.assert_close(cam, torch.tensor([[[10.0, -20.0, 970.0]]]))
    uv = project(cam, Intrinsics.default(200, 200))
    assert uv[0, 0, 0] > 99.5 and uv[0, 0, 1] < 99.5  # right and up on screen


def test_vertex_normals_of_a_tetrahedron_and_gradcheck(toy_model):
    v = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    n = vertex_normals(v, f)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(1, 4, dtype=torch.float64))
    torch.testing.assert_close(n[0, 0], -torch.ones(3, dtype=torch.float64) / math.sqrt(3))
    vv = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, f), (vv,))
    # the toy face's normals point toward the viewer at its centre
    m = torch.as_tensor(toy_model.mean_shape)[None].float()
    assert vertex_normals(m, torch.as_tensor(toy_model.triangles))[0, 0, 2] > 0.8


@pytest.mark.parametrize("bad", [float("nan")])
def test_projection_handles_points_behind_camera(bad):
    K = Intrinsics.default(10, 10)
    out = project(torch.tensor([[[1.0, 1.0, -5.0]]]), K)
    assert torch.isfinite(out).all()
