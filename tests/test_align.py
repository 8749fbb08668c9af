"""Five-point similarity alignment (face3d/align.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from face3d.align import (DEFAULT_TEMPLATE, five_point_template, five_points, invert_similarity,
                          similarity_scale, similarity_to_template, template_from_model, transform_points,
                          warp_to_aligned)
from face3d.camera import Intrinsics, euler_to_matrix, project, transform
from face3d.coefficients import ALIGNED_DISTANCE_MM, aligned_camera


def _rot(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def test_five_points_order_and_types():
    lm = torch.arange(68 * 2, dtype=torch.float64).reshape(68, 2)
    p = five_points(lm)
    assert p.shape == (5, 2)
    assert torch.allclose(p[0], lm[36:42].mean(0)) and torch.allclose(p[1], lm[42:48].mean(0))
    assert torch.equal(p[2], lm[30]) and torch.equal(p[3], lm[48]) and torch.equal(p[4], lm[54])
    assert np.allclose(five_points(lm.numpy()[None])[0], p.numpy())
    with pytest.raises(ValueError, match="68, 2"):
        five_points(torch.zeros(5, 2))


def test_similarity_recovers_a_known_map():
    q = DEFAULT_TEMPLATE
    s, th, t = 0.37, 0.4, torch.tensor([310.0, -42.0], dtype=torch.float64)
    # points p with q = s R p + t exactly → the fit must return exactly that map
    p = ((q - t) @ _rot(th)) / s
    A = similarity_to_template(p[None], q)
    assert torch.allclose(A[0, :, :2], s * _rot(th), atol=1e-10)
    assert torch.allclose(A[0, :, 2], t, atol=1e-8)
    assert torch.allclose(transform_points(A, p[None])[0], q, atol=1e-9)
    assert torch.allclose(similarity_scale(A), torch.tensor([s], dtype=torch.float64))


def test_inverse_round_trip():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(3, 5, 2, generator=g, dtype=torch.float64) * 40 + 300
    A = similarity_to_template(p)
    pts = torch.rand(3, 100, 2, generator=g, dtype=torch.float64) * 500
    back = transform_points(invert_similarity(A), transform_points(A, pts))
    assert (back - pts).abs().max() < 1e-9
    assert torch.allclose(invert_similarity(invert_similarity(A)), A, atol=1e-12)


def test_template_scaling_keeps_pixel_centres():
    t448 = five_point_template(448)
    assert torch.allclose((t448 + 0.5) / 2 - 0.5, DEFAULT_TEMPLATE)


def test_default_template_is_the_anny_mean_face(anny_model):
    """The committed numbers are what `python -m face3d.align` derives from anny-face."""
    from face3d.morphable_model import MorphableModel, load_model_arrays

    model = MorphableModel(load_model_arrays(anny_model))
    assert (template_from_model(model) - DEFAULT_TEMPLATE).abs().max() < 1e-3


def test_face_seen_by_the_aligned_camera_aligns_onto_the_template(toy_model):
    """The toy model's mean face, rolled, scaled (focal length × k), moved in the image
    (principal point) and slightly off-axis, seen by the aligned camera, lands within a
    pixel of its own template after the five-point alignment."""
    from face3d.morphable_model import MorphableModel

    toy_model = MorphableModel(toy_model)
    tpl = template_from_model(toy_model)
    lm3 = toy_model.landmarks(toy_model.shape().double())
    K0 = aligned_camera(1, dtype=torch.float64)
    for roll, k, centre, offset in [(0.0, 1.0, (111.5, 111.5), (0, 0)), (25.0, 2.2, (400.0, 300.0), (0, 0)),
                                    (-40.0, 0.6, (90.0, 250.0), (15, -10))]:
        R = euler_to_matrix(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([roll])).double()
        t = torch.tensor([[offset[0], offset[1], ALIGNED_DISTANCE_MM]], dtype=torch.float64)
        K = Intrinsics(K0.focal * k, torch.tensor([centre], dtype=torch.float64))
        uv = project(transform(lm3, R, t), K)
        A = similarity_to_template(five_points(uv), tpl)
        err = (transform_points(A, five_points(uv))[0] - tpl).norm(dim=-1)
        assert err.max() < (1e-6 if offset == (0, 0) else 1.0), (roll, k, err)
        assert abs(float(similarity_scale(A)) - 1 / k) < 0.01


def _blobs(points: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    img = torch.zeros(3, h, w, dtype=torch.float64)
    for c, (x, y) in enumerate(points.tolist()[:3]):
        img[c] = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return img


def _centroid(channel: torch.Tensor) -> torch.Tensor:
    h, w = channel.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=channel.dtype), torch.arange(w, dtype=channel.dtype), indexing="ij")
    wgt = channel.clamp_min(0)
    return torch.stack([(wgt * xx).sum() / wgt.sum(), (wgt * yy).sum() / wgt.sum()])


@pytest.mark.parametrize("scale", [0.8, 0.3])  # 0.3 exercises the anti-aliasing pre-pool (k = 3)
def test_warp_puts_image_points_where_the_transform_says(scale):
    """Gaussian blobs drawn at three photo points end up, in the warped crop, centred on the
    transformed points (pixel-centre conventions of grid_sample checked to 0.1 px)."""
    tpl = DEFAULT_TEMPLATE
    th, t = 0.3, torch.tensor([-50.0, 20.0], dtype=torch.float64)
    src = ((tpl - t) @ _rot(th)) / scale  # photo points that map onto the template
    src = src + torch.tensor([60.0, 40.0]).double() - src.min(0).values
    h, w = int(src[:, 1].max()) + 80, int(src[:, 0].max()) + 80
    img = _blobs(src, h, w, sigma=4.0 / scale)
    A = similarity_to_template(src[None], tpl)
    crop = warp_to_aligned(img[None], A, 224)[0]
    for c in range(3):
        got = _centroid(crop[c])
        assert (got - tpl[c]).norm() < 0.1, (c, got, tpl[c])


def test_warp_identity_copies_pixels():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, 224, 224, generator=g)
    A = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = warp_to_aligned(img, A, 224)
    assert (out - img).abs().max() < 1e-4  # float32 grid coordinates
    # shift by exactly 3 px right: crop(u) = img(u - 3)
    A[0, 0, 2] = 3.0
    out = warp_to_aligned(img, A, 224)
    assert (out[..., 3:] - img[..., :-3]).abs().max() < 1e-4
    assert out[..., :2].abs().max() < 1e-4  # outside the photo: zeros


def test_bad_input_messages():
    with pytest.raises(ValueError, match="coincide"):
        similarity_to_template(torch.ones(1, 5, 2))
    with pytest.raises(ValueError, match="transform"):
        warp_to_aligned(torch.zeros(2, 3, 10, 10), torch.zeros(1, 2, 3))
