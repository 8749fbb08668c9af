"""Converters on the real model files (ICT-FaceKit, Surrey Face Model) and on synthetic BFM files
laid out exactly like the Deng et al. ones."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from face3d.camera import vertex_normals
from face3d.color import linear_to_srgb
from face3d.converters.common import jaw_contour_lines, read_obj, triangulate
from face3d.morphable_model import load_model_arrays, save_model_arrays


# -- helpers -----------------------------------------------------------------------------

def _normals(arrays) -> np.ndarray:
    v = torch.as_tensor(arrays.mean_shape, dtype=torch.float64)[None]
    return vertex_normals(v, torch.as_tensor(arrays.triangles))[0].numpy()


def _per_vertex_uv(arrays) -> np.ndarray:
    uv = np.zeros((len(arrays.mean_shape), 2))
    uv[arrays.triangles.ravel()] = arrays.uvs[arrays.uv_triangles.ravel()]
    return uv


def _check_common(arrays, n_vertices: int) -> None:
    """Checks every converted model must pass: frame, units, winding, UVs, landmarks, contours."""
    v = arrays.mean_shape.astype(np.float64)
    lm = arrays.landmark_ids
    assert v.shape == (n_vertices, 3)
    assert lm.shape == (68,) and lm.min() >= 0 and lm.max() < n_vertices
    p = v[lm]
    # Frame: subject's right eye (36..41) on the viewer's left (x < 0), y up, nose tip in front.
    assert p[36:42, 0].mean() < -20 and p[42:48, 0].mean() > 20
    assert p[36:48, 1].mean() > p[33, 1] > p[57, 1] > p[8, 1]
    assert int(np.argmax(p[:, 2])) == 30, "landmark 30 (nose tip) must be the most +z landmark"
    # Units: outer eye corners ~ 90 mm apart in adults.
    assert 70 < np.linalg.norm(p[36] - p[45]) < 115
    # CCW outward: normal at the nose tip points toward the viewer, and so does the face on average.
    n = _normals(arrays)
    assert n[lm[30], 2] > 0.8
    assert n[lm[[27, 28, 29, 30, 33, 51, 57]], 2].mean() > 0.7
    # UVs in [0, 1] with v up (correlates with y) and u toward the viewer's right.
    assert arrays.uvs.min() >= 0 and arrays.uvs.max() <= 1
    uv = _per_vertex_uv(arrays)
    used = np.unique(arrays.triangles)
    assert np.corrcoef(uv[used, 1], v[used, 1])[0, 1] > 0.9
    assert np.corrcoef(uv[used, 0], v[used, 0])[0, 1] > 0.8
    # Contour rows start at the jaw landmarks and stay on their side of the face.
    cl = arrays.contour_lines
    assert np.array_equal(cl[:, 0], lm[:17])
    mid = p[27:31, 0].mean()
    for j in list(range(8)) + list(range(9, 17)):
        row = cl[j][cl[j] >= 0]
        assert np.all(np.sign(v[row, 0] - mid) == np.sign(p[j, 0] - mid))
    assert arrays.meta["units"] == "mm" and arrays.meta["source_sha256"]


def _silhouette_error(arrays, yaw_deg: float, rows: list[int]) -> float:
    """Largest gap (mm) between the true silhouette of the yawed mean shape at each jaw
    landmark's height and the best candidate on that landmark's contour row."""
    v = arrays.mean_shape.astype(np.float64)
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    w = v @ rot.T
    used = np.unique(arrays.triangles)
    worst = 0.0
    for j in rows:
        row = arrays.contour_lines[j]
        row = row[row >= 0]
        y = v[arrays.landmark_ids[j], 1]
        near = used[np.abs(v[used, 1] - y) < 1.0]
        side = np.sign(v[arrays.landmark_ids[j], 0] - v[arrays.landmark_ids[27:31], 0].mean())
        true = (side * w[near, 0]).max()
        best = (side * w[row, 0]).max()
        worst = max(worst, true - best)
    return worst


# -- OBJ reader ----------------------------------------------------------------------------

def test_obj_reader_mixed_polygons_and_uvs():
    obj = b"""# a quad and a triangle
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 2 0 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vt 0.5 0.5
f 1/1 2/2 3/3 4/4
f 2/2 5/5 3/3
"""
    mesh = read_obj(obj)
    assert mesh.vertices.shape == (5, 3) and mesh.texcoords.shape == (5, 2)
    tri, uvt = triangulate(mesh)
    np.testing.assert_array_equal(tri, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    np.testing.assert_array_equal(uvt, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    tri1, _ = triangulate(mesh, keep_polygons=1)
    assert len(tri1) == 2
    mesh2 = read_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1//1 2//1 3//1\n")
    tri2, uvt2 = triangulate(mesh2)
    np.testing.assert_array_equal(tri2, [[0, 1, 2]]) and uvt2 is None


def test_read_obj_keeps_groups():
    obj = b"""v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
f 1 2 3
g eye
f 1 3 4
g lips
f 1 2 3 4
g eye
f 2 3 4
"""
    mesh = read_obj(obj)
    assert mesh.group_names == ["default", "eye", "lips"]
    np.testing.assert_array_equal(mesh.face_groups[3], [0, 1, 1])
    np.testing.assert_array_equal(mesh.face_groups[4], [2])
    np.testing.assert_array_equal(mesh.faces[3][mesh.face_groups[3] == 1], [[0, 2, 3], [1, 2, 3]])


# -- ICT-FaceKit ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ict(shared_data):
    from face3d.converters.ict import convert_ict

    return convert_ict(shared_data / "models" / "ict-facekit.tar.xz")


def test_ict_counts_and_frame(ict):
    from face3d.converters.ict import ICT_LANDMARKS

    assert ict.id_basis.shape == (100, 9409, 3)
    assert ict.exp_basis.shape == (53, 9409, 3)
    assert ict.triangles.shape == (18460, 3)  # the 9230 face polygons are all quads
    assert ict.albedo_basis.shape == (0, 9409, 3)
    np.testing.assert_array_equal(ict.id_std, 1.0)
    np.testing.assert_array_equal(ict.exp_std, 1.0)
    assert ict.meta["expression_kind"] == "blendshapes"
    assert ict.meta["landmark_source"] == "README.md"
    np.testing.assert_array_equal(ict.landmark_ids, ICT_LANDMARKS)  # README parse = built-in copy
    assert len(set(ict.landmark_ids.tolist())) == 68
    _check_common(ict, 9409)


def test_ict_basis_scales(ict):
    # Identity modes are pre-scaled by their std-dev: a unit coefficient moves the face by
    # millimetres, and earlier modes carry more variance than later ones.
    rms = np.sqrt((ict.id_basis.astype(np.float64) ** 2).sum(-1).mean(1))
    assert 1.5 < rms[0] < 10.0
    assert rms[:10].mean() > 2 * rms[-10:].mean()
    names = ict.meta["expression_names"]
    disp = np.linalg.norm(ict.exp_basis.astype(np.float64), axis=-1)
    assert disp[names.index("jawOpen")].max() > 10.0  # a full jaw opening moves the chin > 1 cm
    # "_L" is the subject's left: eyeBlink_L moves the eye on the viewer's right (x > 0).
    for name, sign in (("eyeBlink_L", 1), ("eyeBlink_R", -1)):
        d = disp[names.index(name)]
        assert sign * (d @ ict.mean_shape[:, 0]) / d.sum() > 20
    # Expressions leave the back of the face region (behind the ears' line) almost still.
    assert np.median(disp.max(0)) < disp.max() / 5


def test_ict_albedo_mask_contours(ict):
    lm = ict.landmark_ids
    alb = ict.mean_albedo
    assert alb.min() >= 0 and alb.max() <= 1
    redness = alb[:, 0] / alb[:, 1]
    v = ict.mean_shape
    mid_lips = [int(np.argmin(np.linalg.norm(v - 0.5 * (v[lm[a]] + v[lm[b]]), axis=1))) for a, b in ((51, 62), (57, 66))]
    assert redness[mid_lips].min() > redness[lm[30]] + 0.5  # lips redder than the nose
    assert ict.skin_mask[lm[30]] == 1 and ict.skin_mask[lm[8]] == 1
    assert 50 < int((ict.skin_mask == 0).sum()) < 2000
    # The contour rows reach the silhouette when the head turns either way.
    rows = [2, 3, 4, 5, 11, 12, 13, 14]
    for yaw in (-30.0, 30.0):
        assert _silhouette_error(ict, yaw, rows) < 3.0


def test_ict_round_trip(ict, tmp_path):
    path = save_model_arrays(ict, tmp_path / "ict.npz")
    back = load_model_arrays(path)
    for key in ("mean_shape", "id_basis", "exp_basis", "triangles", "uvs", "uv_triangles",
                "landmark_ids", "contour_lines", "mean_albedo", "skin_mask"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ict, key))
    assert back.meta["expression_names"] == ict.meta["expression_names"]


def test_ict_source_layouts(tmp_path):
    """Archive members with and without GitHub's top-level folder map to the same names."""
    from face3d.converters.ict import iter_ict_files

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ICT-FaceKit-abc/README.md", "readme")
        zf.writestr("ICT-FaceKit-abc/FaceXModel/jawOpen.obj", "v 0 0 0\n")
        zf.writestr("ICT-FaceKit-abc/FaceXModel/generic_neutral_mesh.obj", "v 1 0 0\n")
        zf.writestr("ICT-FaceKit-abc/Scripts/x.obj", "ignored")
        zf.writestr("ICT-FaceKit-abc/FaceXModel/sub/deep.obj", "ignored")
    (tmp_path / "repo.zip").write_bytes(buf.getvalue())
    names = [n for n, _ in iter_ict_files(tmp_path / "repo.zip")]
    assert names == ["FaceXModel/generic_neutral_mesh.obj", "README.md", "FaceXModel/jawOpen.obj"]
    folder = tmp_path / "plain"
    (folder / "FaceXModel").mkdir(parents=True)
    (folder / "FaceXModel" / "generic_neutral_mesh.obj").write_text("v 1 0 0\n")
    (folder / "LICENSE").write_text("MIT")
    assert [n for n, _ in iter_ict_files(folder)] == ["FaceXModel/generic_neutral_mesh.obj", "LICENSE"]
    bare = folder / "FaceXModel"
    assert [n for n, _ in iter_ict_files(bare)] == ["FaceXModel/generic_neutral_mesh.obj"]
    with pytest.raises(FileNotFoundError, match="vertex_indices.json"):
        from face3d.converters.ict import convert_ict

        convert_ict(tmp_path / "repo.zip")


# -- Surrey Face Model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sfm_dir(shared_data):
    return shared_data / "models" / "eos-sfm"


@pytest.fixture(scope="module")
def sfm(sfm_dir):
    from face3d.converters.sfm import convert_sfm

    return convert_sfm(sfm_dir)


def test_sfm_matches_eos(sfm, sfm_dir):
    eos = pytest.importorskip("eos")
    model = eos.morphablemodel.load_model(str(sfm_dir / "sfm_shape_3448.bin"))
    shape = model.get_shape_model()
    np.testing.assert_array_equal(sfm.mean_shape.reshape(-1), np.asarray(shape.get_mean()))
    basis = sfm.id_basis.reshape(len(sfm.id_basis), -1).T
    np.testing.assert_array_equal(basis, np.asarray(shape.get_orthonormal_pca_basis()))
    np.testing.assert_allclose(sfm.id_std ** 2, np.asarray(shape.get_eigenvalues()), rtol=1e-6)
    np.testing.assert_allclose(basis * sfm.id_std, np.asarray(shape.get_rescaled_pca_basis()), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sfm.triangles, np.asarray(shape.get_triangle_list()))
    tc = np.asarray(model.get_texture_coordinates())
    np.testing.assert_allclose(_per_vertex_uv(sfm)[:, 1], 1 - tc[:, 1], atol=1e-6)
    shapes = eos.morphablemodel.load_blendshapes(str(sfm_dir / "expression_blendshapes_3448.bin"))
    assert sfm.meta["expression_names"] == [b.name for b in shapes]
    for k, b in enumerate(shapes):
        np.testing.assert_array_equal(sfm.exp_basis[k].reshape(-1), np.asarray(b.deformation))


def test_sfm_counts_landmarks(sfm, sfm_dir):
    from face3d.converters.sfm import read_ibug_mapping, read_model_contours

    assert sfm.id_basis.shape == (63, 3448, 3) and sfm.exp_basis.shape == (6, 3448, 3)
    # Orthonormal basis: unit-norm, orthogonal modes; the prior scale sits in id_std (mm).
    b = sfm.id_basis.reshape(63, -1).astype(np.float64)
    np.testing.assert_allclose(b @ b.T, np.eye(63), atol=1e-5)
    assert 100 < sfm.id_std[0] < 400 and np.all(np.diff(sfm.id_std) <= 0)
    mapping, right, left = read_ibug_mapping(sfm_dir / "ibug_to_sfm.txt")
    assert right == list(range(1, 9)) and left == list(range(10, 18))
    for k, vid in mapping.items():
        assert sfm.landmark_ids[k - 1] == vid
    rc, lc = read_model_contours(sfm_dir / "sfm_model_contours.json")
    assert set(sfm.landmark_ids[:8]) <= set(rc) and set(sfm.landmark_ids[9:17]) <= set(lc)
    # Jaw points run from ear level down to the chin on each side.
    y = sfm.mean_shape[sfm.landmark_ids[:17], 1]
    assert np.all(np.diff(y[:9]) < 0) and np.all(np.diff(y[8:]) > 0)
    _check_common(sfm, 3448)
    assert _silhouette_error(sfm, 25.0, [3, 4, 5]) < 3.0  # far side: the cheek becomes the silhouette


def test_eos_reader_newest_version(tmp_path, sfm_dir):
    """A version-4 file written by eos itself (expression blendshapes, landmark definitions,
    texture triangles) reads back identically."""
    eos = pytest.importorskip("eos")
    from face3d.converters.sfm import read_eos_model

    src = eos.morphablemodel.load_model(str(sfm_dir / "sfm_shape_3448.bin"))
    shapes = eos.morphablemodel.load_blendshapes(str(sfm_dir / "expression_blendshapes_3448.bin"))
    tri = src.get_shape_model().get_triangle_list()
    model = eos.morphablemodel.MorphableModel(
        src.get_shape_model(), shapes, eos.morphablemodel.PcaModel(), {"nose.tip": 114, "chin": 33},
        src.get_texture_coordinates(), tri)
    eos.morphablemodel.save_model(model, str(tmp_path / "v4.bin"))
    got = read_eos_model(tmp_path / "v4.bin")
    assert got.version == 4
    assert got.landmark_definitions == {"nose.tip": 114, "chin": 33}
    assert [n for n, _ in got.expression] == [b.name for b in shapes]
    np.testing.assert_array_equal(got.expression[5][1], np.asarray(shapes[5].deformation))
    np.testing.assert_array_equal(got.texture_triangles, np.asarray(tri))
    np.testing.assert_array_equal(got.shape.mean, np.asarray(src.get_shape_model().get_mean()))
    (tmp_path / "bad.bin").write_bytes(b"\x07\x00\x00\x00")
    with pytest.raises(ValueError, match="version 7"):
        read_eos_model(tmp_path / "bad.bin")


# -- BFM (synthetic files in the Deng et al. layout) -----------------------------------------

@pytest.fixture(scope="module")
def bfm_files(tmp_path_factory):
    """A toy model written as 01_MorphableModel.mat + Exp_Pca.bin + helper files, and as the
    BFM_model_front.mat Deng et al.'s transfer would give, with triangles wound clockwise."""
    from scipy.io import savemat

    from face3d.toy_model import make_toy_model

    toy = make_toy_model(seed=3)
    rng = np.random.default_rng(0)
    n = len(toy.mean_shape)
    m_exp, m_full = n + 20, n + 45
    trim = rng.permutation(m_full)[:m_exp]          # exp vertex -> BFM vertex
    front = rng.permutation(m_exp)[:n]              # front vertex -> exp vertex
    full_of_front = trim[front]
    k_id, k_exp, k_tex = toy.id_basis.shape[0], toy.exp_basis.shape[0], toy.albedo_basis.shape[0]

    def embed(per_vertex, ids, total):  # (K, n, 3) -> (3 * total, K), junk elsewhere
        out = rng.normal(size=(total, 3, per_vertex.shape[0]))
        out[ids] = np.moveaxis(per_vertex, 0, -1)
        return out.reshape(3 * total, -1)

    shape_ev = rng.uniform(1e3, 3e4, k_id)           # BFM "EV" are standard deviations
    shape_pc = embed(toy.id_basis.astype(np.float64) * 1e3, full_of_front, m_full) / shape_ev
    shape_mu = embed(toy.mean_shape[None].astype(np.float64) * 1e3, full_of_front, m_full)
    std_exp = rng.uniform(1e3, 5e4, k_exp)
    exp_pc = embed(toy.exp_basis.astype(np.float64) * 1e3, front, m_exp) / std_exp
    srgb = linear_to_srgb(toy.mean_albedo.astype(np.float64))
    tex_mu = embed(srgb[None] * 255, full_of_front, m_full)
    tex_ev = rng.uniform(5, 20, k_tex)
    tex_pc = embed(rng.normal(size=(k_tex, n, 3)) * 0.1, full_of_front, m_full)
    tri_cw = toy.triangles[:, [0, 2, 1]] + 1

    d = tmp_path_factory.mktemp("bfm")
    savemat(d / "01_MorphableModel.mat", {
        "shapeMU": shape_mu.astype(np.float32), "shapePC": shape_pc.astype(np.float32),
        "shapeEV": shape_ev[:, None].astype(np.float32), "texMU": tex_mu.astype(np.float32),
        "texPC": tex_pc.astype(np.float32), "texEV": tex_ev[:, None].astype(np.float32),
        "tl": rng.integers(1, m_full, (30, 3)).astype(np.float64)})
    with open(d / "Exp_Pca.bin", "wb") as fh:
        fh.write(np.int32(k_exp).tobytes())
        fh.write(rng.normal(size=3 * m_exp).astype("<f4").tobytes())   # expMU (unused)
        fh.write(np.ascontiguousarray(exp_pc.T).astype("<f4").tobytes())
    savemat(d / "BFM_exp_idx.mat", {"trimIndex": (trim + 1)[:, None].astype(np.uint16)})
    savemat(d / "BFM_front_idx.mat", {"idx": (front + 1)[:, None].astype(np.float32)})
    savemat(d / "facemodel_info.mat", {
        "tri": tri_cw.astype(np.float32), "keypoints": (toy.landmark_ids + 1)[None].astype(np.float32),
        "point_buf": rng.integers(1, len(tri_cw), (n, 8)).astype(np.float32),
        "skinmask": np.ones((1, n), np.float32)})
    np.savetxt(d / "std_exp.txt", std_exp[None], fmt="%.6g")

    # The front file, following the documented transfer independently of the converter.
    rows = (3 * full_of_front[:, None] + np.arange(3)).reshape(-1)
    erows = (3 * front[:, None] + np.arange(3)).reshape(-1)
    front_dir = tmp_path_factory.mktemp("bfm_front")
    std_exp_read = np.loadtxt(d / "std_exp.txt")
    savemat(front_dir / "BFM_model_front.mat", {
        "meanshape": (shape_mu[rows].T / 1e5).astype(np.float32),
        "idBase": (shape_pc.astype(np.float32).astype(np.float64)[rows] * shape_ev.astype(np.float32)) / 1e5,
        "exBase": (exp_pc.astype(np.float32).astype(np.float64)[erows] * std_exp_read) / 1e5,
        "meantex": tex_mu[rows].T.astype(np.float32),
        "texBase": (tex_pc.astype(np.float32).astype(np.float64)[rows] * tex_ev.astype(np.float32)).astype(np.float32),
        "tri": tri_cw.astype(np.float32), "keypoints": (toy.landmark_ids + 1)[None].astype(np.float32),
        "point_buf": rng.integers(1, len(tri_cw), (n, 8)).astype(np.float32),
        "skinmask": np.ones((1, n), np.float32)})
    return toy, d, front_dir / "BFM_model_front.mat"


def test_bfm_routes_agree_and_recover_toy(bfm_files):
    from face3d.converters.bfm import convert_bfm

    toy, d, front_mat = bfm_files
    a = convert_bfm(front_mat)
    b = convert_bfm(d / "01_MorphableModel.mat")       # Exp_Pca.bin and helpers found beside it
    for arrays in (a, b):
        assert arrays.id_basis.shape == toy.id_basis.shape and arrays.exp_basis.shape == toy.exp_basis.shape
        # Units: µm / dm -> mm reproduce the toy model's millimetres; bases scaled by their std.
        np.testing.assert_allclose(arrays.mean_shape, toy.mean_shape, atol=1e-3)
        np.testing.assert_allclose(arrays.id_basis, toy.id_basis, atol=1e-3)
        np.testing.assert_allclose(arrays.exp_basis, toy.exp_basis, atol=1e-3)
        np.testing.assert_allclose(arrays.mean_albedo, toy.mean_albedo, atol=2e-4)
        np.testing.assert_array_equal(arrays.id_std, 1.0)
        # 1-based -> 0-based, and the clockwise input triangles are flipped back to CCW.
        np.testing.assert_array_equal(arrays.landmark_ids, toy.landmark_ids)
        np.testing.assert_array_equal(arrays.triangles, toy.triangles)
        assert arrays.meta["triangles_flipped"] and arrays.meta["expression_kind"] == "pca"
        np.testing.assert_array_equal(arrays.uv_triangles, arrays.triangles)
        assert arrays.uvs.min() >= 0 and arrays.uvs.max() <= 1
    np.testing.assert_allclose(a.albedo_basis, b.albedo_basis, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.exp_basis, b.exp_basis, rtol=1e-5, atol=1e-5)
    assert a.meta["route"] != b.meta["route"]
    _check_common(b, len(toy.mean_shape))


def test_bfm_bad_inputs(bfm_files, tmp_path):
    from scipy.io import savemat

    from face3d.converters.bfm import convert_bfm, read_exp_pca

    toy, d, _ = bfm_files
    savemat(tmp_path / "other.mat", {"foo": np.zeros(3)})
    with pytest.raises(ValueError, match="neither"):
        convert_bfm(tmp_path / "other.mat")
    with pytest.raises(FileNotFoundError, match="Exp_Pca.bin"):
        convert_bfm(d / "01_MorphableModel.mat", exp_pca=tmp_path / "missing.bin")
    (tmp_path / "short.bin").write_bytes(np.int32(5).tobytes() + b"\0" * 40)
    with pytest.raises(ValueError, match="bytes but K=5"):
        read_exp_pca(tmp_path / "short.bin", 100)


def test_real_bfm_helper_layouts(shared_data):
    """The real helper files have the layouts the 01_MorphableModel route assumes."""
    from scipy.io import loadmat

    h = shared_data / "models" / "deep3d_bfm_helpers"
    trim = loadmat(h / "BFM_exp_idx.mat")["trimIndex"].reshape(-1).astype(np.int64)
    front = loadmat(h / "BFM_front_idx.mat")["idx"].reshape(-1).astype(np.int64)
    info = loadmat(h / "facemodel_info.mat")
    assert trim.size == 53215 and trim.min() == 1 and trim.max() <= 53490
    assert front.size == 35709 and front.min() >= 1 and front.max() <= trim.size
    assert info["tri"].shape[1] == 3 and info["tri"].max() == front.size and info["tri"].min() == 1
    assert info["keypoints"].shape == (1, 68) and info["keypoints"].max() <= front.size
    assert np.loadtxt(h / "std_exp.txt").size == 79  # Exp_Pca.bin holds 79 modes


def test_contour_rows_start_at_landmarks(toy_model):
    cl = jaw_contour_lines(toy_model.mean_shape, toy_model.triangles, toy_model.landmark_ids)
    np.testing.assert_array_equal(cl[:, 0], toy_model.landmark_ids[:17])
    assert cl.shape[0] == 17 and (cl >= 0).sum(1).min() >= 1
