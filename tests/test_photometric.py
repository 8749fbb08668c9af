"""Photometric refinement recovers lighting and albedo and flags occluders."""
from __future__ import annotations

import pytest
import torch

from face3d.camera import Intrinsics, euler_to_matrix, transform
from face3d.color import linear_to_srgb
from face3d.lighting import irradiance
from face3d.morphable_model import MorphableModel
from face3d.photometric import PhotometricSettings, refine_photometric
from face3d.render import Renderer, RenderSettings


def make_scene(toy_model):
    m = MorphableModel(toy_model)
    R = euler_to_matrix(torch.tensor([20.0]), torch.tensor([5.0]), torch.zeros(1))
    t = torch.tensor([[0.0, 0.0, 1000.0]])
    K = Intrinsics.default(200, 200, fov_deg=16.0)
    sh = torch.zeros(1, 27)
    for c, (amb, side) in enumerate(((0.7, -0.25), (0.6, -0.2), (0.55, -0.2))):
        sh[0, 9 * c], sh[0, 9 * c + 3], sh[0, 9 * c + 2] = amb, side, 0.2
    gain = torch.tensor([1.15, 0.9, 0.85])
    albedo = m.albedo(batch=1) * gain
    verts = transform(m.shape(), R, t)
    img = Renderer(RenderSettings(image_size=200, sh_ambient=0.0)).render(verts, m.triangles, K, albedo=albedo, sh=sh)
    photo = linear_to_srgb(img.image + 0.15 * (1 - img.mask))  # grey background
    return m, R, t, K, sh, albedo, photo, img.mask


@pytest.fixture(scope="module")
def scene(toy_model):
    return make_scene(toy_model)


def _shading_error(m, res, sh, albedo, verts_normals):
    """Mean |predicted − true| linear colour over the vertices (lighting × albedo are only jointly defined)."""
    true = albedo * irradiance(verts_normals, sh, frame="camera")
    pred = res.albedo * irradiance(verts_normals, res.sh, frame="camera")
    return (true - pred).abs().mean()


def test_recovers_lighting_and_albedo(scene):
    m, R, t, K, sh, albedo, photo, mask = scene
    res = refine_photometric(photo, m, torch.zeros(1, m.n_id), torch.zeros(1, m.n_exp), R, t, K,
                             settings=PhotometricSettings(iterations=40, resolution=160))
    from face3d.camera import vertex_normals
    n = vertex_normals(transform(m.shape(), R, t), m.triangles)
    assert res.loss[-1] < 1.05 * res.loss[0]  # the robust initial estimate is already close
    assert _shading_error(m, res, sh, albedo, n) < 0.02
    # nothing is occluded: the face is explained everywhere
    assert res.occlusion().sum() < 0.02 * res.face_mask.sum()


def test_occluder_is_flagged_and_ignored(scene):
    m, R, t, K, sh, albedo, photo, mask = scene
    occluded = photo.clone()
    occluded[:, :, 90:140, 70:130] = torch.tensor([0.1, 0.6, 0.2]).view(1, 3, 1, 1)  # a green "hand"
    res = refine_photometric(occluded, m, torch.zeros(1, m.n_id), torch.zeros(1, m.n_exp), R, t, K,
                             settings=PhotometricSettings(iterations=40, resolution=160))
    occ = res.occlusion()[0, 0]
    patch = torch.zeros_like(occ, dtype=torch.bool)
    patch[92:138, 72:128] = True
    patch &= mask[0, 0] > 0
    assert occ[patch].mean() > 0.8  # the occluder is found
    ring = torch.zeros_like(patch)
    ring[86:144, 66:134] = True  # the occluder's edge, blurred by resampling, counts for neither
    assert occ[~ring & (res.face_mask[0, 0] > 0)].mean() < 0.03  # the rest is skin
    from face3d.camera import vertex_normals
    n = vertex_normals(transform(m.shape(), R, t), m.triangles)
    assert _shading_error(m, res, sh, albedo, n) < 0.03  # and the lighting is not dragged by it


def test_shape_refinement_keeps_landmarks(scene):
    m, R, t, K, sh, albedo, photo, mask = scene
    from face3d.camera import project
    lm = project(m.landmarks(transform(m.shape(), R, t)), K)
    res = refine_photometric(photo, m, torch.zeros(1, m.n_id), torch.zeros(1, m.n_exp), R, t, K, landmarks=lm,
                             settings=PhotometricSettings(iterations=15, resolution=128, refine_shape=True))
    moved = project(m.landmarks(transform(m.shape(res.alpha, res.beta), res.R, res.t)), K)
    assert (moved - lm).norm(dim=-1).mean() < 1.5
    assert res.loss[-1] < res.loss[0]
