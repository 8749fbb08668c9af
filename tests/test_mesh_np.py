"""face3d.mesh_np: numpy vertex normals (vs the torch ones in face3d.camera) and the bilinear
UV lookup shared by the converters and the exporters."""
from __future__ import annotations

import numpy as np
import torch

from face3d.camera import vertex_normals
from face3d.mesh_np import sample_uv_bilinear, vertex_normals_np


def test_vertex_normals_match_torch_and_fill_isolated(toy_model):
    v, f = toy_model.mean_shape.astype(np.float64), toy_model.triangles
    ref = vertex_normals(torch.from_numpy(v)[None], torch.from_numpy(f))[0].numpy()
    np.testing.assert_allclose(vertex_normals_np(v, f), ref, atol=1e-9)
    v2 = np.concatenate([v, [[0.0, 0.0, 0.0]]])  # one vertex no triangle uses
    assert np.all(vertex_normals_np(v2, f)[-1] == 0)
    np.testing.assert_array_equal(vertex_normals_np(v2, f, isolated=(0.0, 0.0, 1.0))[-1], [0, 0, 1])


def test_bilinear_uv_lookup():
    img = np.array([[0.0, 10.0], [20.0, 30.0]])  # row 0 is the top (v = 1)
    uv = np.array([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5], [-1.0, 2.0], [0.5, 0.75]])
    # texel centres at u, v in {0.25, 0.75}; centre of the image = mean; outside clamps
    np.testing.assert_allclose(sample_uv_bilinear(img, uv), [0.0, 30.0, 15.0, 0.0, 5.0])
    rgb = np.stack([img, 2 * img, 3 * img], -1).astype(np.uint8)
    np.testing.assert_allclose(sample_uv_bilinear(rgb, uv[:3]), [[0, 0, 0], [30, 60, 90], [15, 30, 45]])
