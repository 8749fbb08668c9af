"""R_e / R_p renders of a fit and rotate-and-render (face3d.rotate_render, CFR-GAN §3.2)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from face3d.coefficients import FaceParams
from face3d.morphable_model import MorphableModel
from face3d.regressor.losses import render_face
from face3d.rotate_render import (closed_mesh, fit_appearance, project_photo, render_estimate, render_views,
                                  rotate_and_render, rotate_params, with_pose)

pytestmark = pytest.mark.usefixtures("one_thread")
S = 64


@pytest.fixture(scope="module")
def model(toy_model):
    return MorphableModel(toy_model)


def _params(model, yaw_deg=20.0, batch=1):
    z = torch.zeros(batch, 0)
    angles = torch.tensor([[yaw_deg * torch.pi / 180, 0.05, 0.0]]).expand(batch, 3).clone()
    sh = torch.zeros(batch, 27)
    sh[:, 2] = 0.3  # some directional light so shading is not flat
    return FaceParams(torch.zeros(batch, model.n_id), torch.zeros(batch, model.n_exp),
                      torch.zeros(batch, model.n_albedo), angles, sh, torch.zeros(batch, 3) + z.sum())


def _texture(batch=1, size=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_zero_degree_rotate_and_render_returns_the_image_on_visible_pixels(model):
    params = _params(model, 25.0, batch=2)
    image = _texture(2)
    out = rotate_and_render(image, params, model, 0.0)
    v = out.valid.expand(-1, 3, -1, -1) > 0
    assert out.image.shape == (2, 3, S, S) and out.valid.shape == (2, 1, S, S)
    assert float((out.image - image)[v].abs().max()) < 1e-4
    assert float((out.image[~v]).abs().max()) == 0.0  # holes and background are 0
    # nearly every covered pixel is seen by its own camera (only grazing slivers are not)
    assert float(out.valid.sum() / out.face_mask.sum()) > 0.9
    assert torch.equal(out.valid * out.face_mask, out.valid)


def test_rotation_opens_holes_on_the_far_side_and_back_restores_the_rest(model):
    params = _params(model, 45.0)
    image = _texture()
    turned = rotate_and_render(image, params, model, -90.0)
    # from 45° to the other side shows surface the source saw edge-on or not at all
    assert float(turned.holes.sum() / turned.face_mask.sum()) > 0.1
    assert torch.allclose(turned.params.angles[:, 0], params.angles[:, 0] - 90 * torch.pi / 180)
    back = rotate_and_render(turned.image, turned.params, model, 90.0, valid=turned.valid)
    v = back.valid.expand(-1, 3, -1, -1) > 0
    frac = float(back.valid.sum() / back.face_mask.sum())
    assert 0.1 < frac < 0.9  # damaged: holes survive the way back
    # where both passes saw the surface, the round trip reproduces the image (2 bilinear resamplings)
    err = (back.image - image)[v].abs()
    # (unrelated pixels differ by ≈ 0.3 on average; a few rim pixels mix in the 0 background)
    assert float(err.mean()) < 0.04 and float(err.quantile(0.9)) < 0.1


def test_projected_landmarks_and_pose_helpers(model):
    p = _params(model, 10.0)
    f = with_pose(p, 0.0, 0.0, 0.0)
    assert torch.allclose(f.angles, torch.zeros(1, 3)) and torch.equal(f.alpha, p.alpha)
    r = rotate_params(p, torch.tensor([-10.0]))
    assert torch.allclose(r.angles[:, 0], torch.zeros(1), atol=1e-7)
    out = project_photo(_texture(), p, model, f)
    assert out.landmarks.shape == (1, 68, 2)
    # the frontal toy face is left-right symmetric about the crop centre
    assert abs(float(out.landmarks[0, :, 0].mean()) - (S - 1) / 2) < 1.0


def test_render_estimate_matches_the_regressor_render(model):
    p = _params(model, 15.0)
    re, mask = render_estimate(p, model, S)
    ref = render_face(model, p, S)
    m = ref.mask > 0
    assert torch.equal(mask > 0, m)
    assert float((re - ref.srgb * ref.mask).abs().max()) < 1e-5


def test_closed_mesh_caps_inner_loops_only():
    # a 4×4 vertex grid with the centre quad removed: one inner loop of 4, the outer rim of 12
    tris = []
    for r in range(3):
        for c in range(3):
            if (r, c) == (1, 1):
                continue
            a, b, d, e = 4 * r + c, 4 * r + c + 1, 4 * (r + 1) + c, 4 * (r + 1) + c + 1
            tris += [[a, b, e], [a, e, d]]
    fake = SimpleNamespace(triangles=torch.tensor(tris), n_vertices=16)
    mesh = closed_mesh(fake)
    assert len(mesh.loops) == 1 and sorted(mesh.loops[0].tolist()) == [5, 6, 9, 10]
    assert mesh.triangles.shape == (16 + 4, 3)
    # every interior edge is now shared by exactly two triangles, consistently oriented
    t = mesh.triangles
    directed = torch.cat([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]).tolist()
    assert len(set(map(tuple, directed))) == len(directed)  # no edge used twice in one direction
    v = torch.rand(2, 16, 3)
    ext = mesh.extend(v)
    assert ext.shape == (2, 17, 3) and torch.allclose(ext[:, 16], v[:, [5, 6, 9, 10]].mean(1))


def test_fit_appearance_recovers_the_light_of_a_rendered_face(model):
    p = _params(model, 20.0)
    p.sh[:, 0] = 0.2
    p.sh[:, 9 + 3] = -0.2
    image, mask = render_estimate(p, model, S)
    start = FaceParams(p.alpha, p.beta, p.delta, p.angles, torch.zeros(1, 27), p.translation)
    from face3d.photometric import PhotometricSettings

    fitted, albedo = fit_appearance(image, start, model, settings=PhotometricSettings(iterations=20, resolution=64))
    views = render_views(image, fitted, model, albedo=albedo)
    m = (mask * views.valid).expand(-1, 3, -1, -1) > 0
    assert float((views.render_e - image)[m].abs().mean()) < 0.02
    assert float((views.render_p - image)[m].abs().max()) < 1e-4
