"""Face profiling: turning about the landmarks, the rendered views and their labels, the shards."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from face3d.coefficients import FaceParams
from face3d.synth.profiling import (ProfiledFaceDataset, ProfilingConfig, build_profiled_set, profile_faces,
                                    sample_target_poses, turn_about_landmarks)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ict(ict_model):
    from face3d.model_zoo import load_model

    return load_model("ict")


def _params(model, yaw_deg: float, B: int = 2) -> FaceParams:
    g = torch.Generator().manual_seed(0)
    sizes = [model.n_id, model.n_exp, model.n_albedo, 3, 27, 3]
    p = FaceParams(*(torch.zeros(B, n, dtype=model.dtype) for n in sizes))
    p.alpha[:] = 0.5 * torch.randn(B, model.n_id, generator=g, dtype=model.dtype)
    p.angles[:, 0] = math.radians(yaw_deg)
    return p


def test_turn_keeps_landmark_centroid(ict):
    from face3d.camera import transform

    src = _params(ict, 10.0)
    tgt = turn_about_landmarks(src, ict, torch.tensor([60.0, -80.0]), torch.tensor([0.0, 5.0]),
                               torch.tensor([0.0, -10.0]))
    assert torch.allclose(tgt.angles[:, 0].rad2deg(), torch.tensor([60.0, -80.0], dtype=tgt.angles.dtype))
    shape = ict.shape(src.alpha, src.beta)
    c_src = transform(ict.landmarks(shape), src.rotation(), src.camera_translation()).mean(1)
    c_tgt = transform(ict.landmarks(shape), tgt.rotation(), tgt.camera_translation()).mean(1)
    assert torch.allclose(c_src, c_tgt, atol=1e-6)


def test_profile_views_render_and_label(ict, shared_data):
    """A synthetic ICT face: at its own pose the view reproduces the crop on the face; turned,
    its landmarks are the target pose's exact projection and lie on the turned face."""
    from face3d.synth.faces import SyntheticFaceConfig, SyntheticFaces

    faces = SyntheticFaces(ict, SyntheticFaceConfig(image_size=112, yaw_deg=(-15, 15)), seed=3)
    batch = faces.sample(2)
    src = batch.params.to(ict.device, ict.dtype)
    crop = batch.image.to(ict.dtype)
    same = profile_faces(crop, src, src, ict)
    inside = (same.face_mask > 0.5) & (same.filled < 0.5)
    assert float((same.image - crop).abs().mul(inside).sum() / inside.sum() / 3) < 0.02
    tgt = turn_about_landmarks(src, ict, torch.tensor([70.0, -70.0]), src.angles[:, 1].rad2deg(),
                               torch.zeros(2))
    view = profile_faces(crop, src, tgt, ict)
    assert view.image.shape == crop.shape and float(view.image.min()) >= 0 and float(view.image.max()) <= 1
    from face3d.regressor.losses import project_landmarks

    exact = project_landmarks(ict, tgt, 112)
    assert torch.allclose(view.landmarks.to(exact), exact, atol=1e-3)
    ij = view.landmarks[:, 36:48].round().long().clamp(0, 111)  # the eyes lie on the turned face
    on_face = torch.stack([view.face_mask[b, 0, ij[b, :, 1], ij[b, :, 0]] for b in range(2)])
    assert float(on_face.mean()) > 0.9
    # nothing of the old frontal face is left in the background: it was filled from around it
    assert float(view.filled.mean()) < 0.2


def test_target_pose_sampling():
    rng = np.random.default_rng(0)
    src = FaceParams(*(torch.zeros(400, n) for n in (3, 2, 0, 3, 27, 3)))
    src.angles[:200, 0] = math.radians(20.0)
    src.angles[200:, 0] = math.radians(-20.0)
    cfg = ProfilingConfig(yaw_deg=(30.0, 90.0))
    yaw, pitch, roll, shift = sample_target_poses(src, cfg, 112, rng)
    assert float(yaw.abs().min()) >= 30.0 and float(yaw.abs().max()) <= 90.0
    same = torch.cat([yaw[:200] > 0, yaw[200:] < 0]).double().mean()
    assert 0.65 < float(same) < 0.85  # same_side_prob 0.75
    assert float(roll.abs().max()) <= 15.0 and shift.shape == (400, 3)


def test_build_profiled_set_round_trip(ict, shared_data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("img1.jpg", "img2.jpg"):
        src = next((shared_data / "faces" / "deep3d").glob("*.jpg")) if n == "img1.jpg" else \
            sorted((shared_data / "faces" / "deep3d").glob("*.jpg"))[1]
        (photos / n).symlink_to(src)
    n = build_profiled_set([str(photos)], str(tmp_path / "views"), ict, size=64, views=3,
                           cache_dir=str(tmp_path / "cache"), progress=False)
    assert n == 6
    ds = ProfiledFaceDataset(str(tmp_path / "views"))
    assert len(ds) == 6
    it = ds[0]
    assert it["image"].shape == (3, 64, 64) and it["exact"] == 1 and it["geometry_only"] == 1
    assert it["coefficients"].shape[0] == ict.n_id + ict.n_exp + ict.n_albedo + 33
    # a rerun keeps what is there
    assert build_profiled_set([str(photos)], str(tmp_path / "views"), ict, size=64, views=3,
                              cache_dir=str(tmp_path / "cache"), progress=False) == 6
    assert len(ProfiledFaceDataset(str(tmp_path / "views"))) == 6


def test_coefficient_loss_geometry_only():
    from face3d.regressor.train import coefficient_loss

    sizes = [2, 2, 2, 3, 4, 3]
    truth = torch.zeros(2, sum(sizes))
    pred = truth.clone()
    pred[:, 4:6] = 1.0     # δ wrong
    pred[:, 9:13] = 1.0    # γ wrong
    scale = torch.ones(sum(sizes))
    assert float(coefficient_loss(pred, truth, scale, sizes)) == pytest.approx(2.0)
    assert float(coefficient_loss(pred, truth, scale, sizes, torch.tensor([True, True]))) == pytest.approx(0.0)
    pred[1, 0] = 2.0       # α wrong on one item counts whatever its kind
    assert float(coefficient_loss(pred, truth, scale, sizes, torch.tensor([True, True]))) == pytest.approx(1.0)


def test_crop_validity_and_no_black_cap(ict):
    """A crop reaching past the photo's top edge: the turned view is filled there from the
    photo's own pixels, never black."""
    from face3d.synth.faces import SyntheticFaceConfig, SyntheticFaces
    from face3d.synth.profiling import crop_validity

    A = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 20.0]])  # the photo starts at crop row 20
    v = crop_validity(A, (112, 112), 112)
    assert float(v[0, 0, :19].sum()) == 0 and float(v[0, 0, 21:].min()) == 1
    faces = SyntheticFaces(ict, SyntheticFaceConfig(image_size=112, yaw_deg=(-5, 5)), seed=5)
    batch = faces.sample(1)
    src = batch.params.to(ict.device, ict.dtype)
    crop = batch.image.to(ict.dtype).clone()
    crop[:, :, :20] = 0.0  # what warp_to_aligned gives past the edge
    tgt = turn_about_landmarks(src, ict, torch.tensor([45.0]), src.angles[:, 1].rad2deg(), torch.zeros(1))
    plain = profile_faces(crop, src, tgt, ict)
    fixed = profile_faces(crop, src, tgt, ict, source_valid=v)
    dark = lambda im: float((im[:, :, :20].amax(1) < 0.02).float().mean())  # noqa: E731
    assert dark(plain.image) > 0.3 and dark(fixed.image) < 0.05
