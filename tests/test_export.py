"""Mesh export: files written by face3d.export read back by trimesh and parsed by hand."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")  # test-only dependency (pyproject [dev])

from face3d.camera import vertex_normals  # noqa: E402
from face3d.errors import OutputError  # noqa: E402
from face3d.export import (  # noqa: E402
    ExportError, MeshData, UnknownMeshFormatError, export_mesh, write_glb, write_obj, write_ply,
)

TEX_H, TEX_W = 64, 128


def _gradient_texture() -> np.ndarray:
    """R = column index, G = 4 × row index, B = 50: lookups have a closed form."""
    tex = np.zeros((TEX_H, TEX_W, 3), np.uint8)
    tex[..., 0] = np.arange(TEX_W)[None, :]
    tex[..., 1] = 4 * np.arange(TEX_H)[:, None]
    tex[..., 2] = 50
    return tex


def _normals(model) -> np.ndarray:
    v = torch.as_tensor(model.mean_shape)[None]
    return vertex_normals(v, torch.as_tensor(model.triangles))[0].numpy()


@pytest.fixture
def textured(toy_model) -> MeshData:
    return MeshData(toy_model.mean_shape, toy_model.triangles, normals=_normals(toy_model),
                    uvs=toy_model.uvs, uv_triangles=toy_model.uv_triangles, texture=_gradient_texture())


@pytest.fixture
def seamed(toy_model) -> MeshData:
    """The toy mesh with a UV atlas cut down the middle: faces left of x = 0 map to
    u ∈ [0, 0.5], the others to u ∈ [0.5, 1], so the midline vertices carry two UVs."""
    tri, uv = toy_model.triangles, toy_model.uvs
    left = toy_model.mean_shape[tri].mean(1)[:, 0] < 0
    uvs = np.concatenate([uv * [0.5, 1.0], uv * [0.5, 1.0] + [0.5, 0.0]])
    uv_tri = np.where(left[:, None], tri, tri + len(uv))
    return MeshData(toy_model.mean_shape, tri, uvs=uvs, uv_triangles=uv_tri, texture=_gradient_texture())


def _read_glb(path: Path) -> tuple[dict, bytes]:
    """Parse and check the GLB container by hand; return (json, bin chunk)."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and data[:4] == b"glTF"
    assert version == 2
    assert length == len(data)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(data[20:20 + json_len].decode("utf-8"))
    off = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<II", data, off)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0
    assert off + 8 + bin_len == len(data)
    blob = data[off + 8:]
    assert doc["asset"]["version"] == "2.0"
    assert doc["buffers"] == [{"byteLength": bin_len}]
    for view in doc["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= bin_len
    return doc, blob


def _accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5125: "<u4"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc["type"]]
    assert view["byteLength"] == acc["count"] * width * 4
    arr = np.frombuffer(blob, dtype, acc["count"] * width, view["byteOffset"])
    return arr.reshape(acc["count"], width)


# ----------------------------------------------------------------------------- OBJ

def test_obj_textured_round_trip(tmp_path, toy_model, textured):
    path = export_mesh(tmp_path / "face.obj", textured)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face_texture.png"]  # no temp files left
    mtl = (tmp_path / "face.mtl").read_text()
    assert "map_Kd face_texture.png" in mtl and "Kd 1.000000 1.000000 1.000000" in mtl
    assert "mtllib face.mtl" in path.read_text()

    loaded = trimesh.load(path, process=False)
    assert isinstance(loaded.visual, trimesh.visual.texture.TextureVisuals)
    image = loaded.visual.material.image
    assert image.size == (TEX_W, TEX_H)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), _gradient_texture())
    assert loaded.faces.shape == toy_model.triangles.shape
    # trimesh may re-index vertices to one per (v, vt) pair: compare corner by corner
    np.testing.assert_allclose(loaded.vertices[loaded.faces], toy_model.mean_shape[toy_model.triangles], atol=1e-6)
    np.testing.assert_allclose(loaded.visual.uv[loaded.faces], toy_model.uvs[toy_model.uv_triangles], atol=1e-7)
    np.testing.assert_allclose(loaded.vertex_normals[loaded.faces], textured.normals[toy_model.triangles], atol=1e-5)
    assert len(loaded.vertices) == len(toy_model.mean_shape)  # toy UVs are one per vertex: no splitting


@pytest.mark.parametrize("with_normals", [False, True])  # f v/vt and f v/vt/vn
def test_obj_seamed_uvs_and_metres(tmp_path, toy_model, seamed, with_normals):
    if with_normals:
        seamed.normals = _normals(toy_model)
    path = write_obj(tmp_path / "seam face.obj", seamed, units="m")
    assert (tmp_path / "seam_face_texture.png").is_file()  # side-file names carry no spaces
    loaded = trimesh.load(path, process=False)
    np.testing.assert_allclose(loaded.vertices[loaded.faces] * 1e3, seamed.vertices[seamed.triangles], atol=1e-5)
    np.testing.assert_allclose(loaded.visual.uv[loaded.faces], seamed.uvs[seamed.uv_triangles], atol=1e-7)


def test_obj_vertex_colours_round_trip(tmp_path, toy_model):
    colors = np.random.default_rng(1).random((len(toy_model.mean_shape), 3))
    path = export_mesh(tmp_path / "c.obj", MeshData(toy_model.mean_shape, toy_model.triangles, colors=colors))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.obj"]  # no MTL without a texture
    loaded = trimesh.load(path, process=False)
    assert loaded.visual.kind == "vertex"
    np.testing.assert_array_equal(loaded.faces, toy_model.triangles)
    np.testing.assert_allclose(loaded.vertices, toy_model.mean_shape, atol=1e-6)
    got = loaded.visual.vertex_colors[:, :3].astype(np.int64)
    assert np.abs(got - np.round(colors * 255)).max() <= 1


# ----------------------------------------------------------------------------- PLY

def _read_ply(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    n = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    f = int(next(h for h in header if h.startswith("element face")).split()[-1])
    props = [h.split() for h in header if h.startswith("property ") and "list" not in h]
    dt = np.dtype([(p[2], {"float": "<f4", "uchar": "u1"}[p[1]]) for p in props])
    verts = np.frombuffer(data, dt, n, end)
    faces = np.frombuffer(data, np.dtype([("n", "u1"), ("v", "<i4", (3,))]), f, end + n * dt.itemsize)
    assert end + n * dt.itemsize + f * 13 == len(data)
    assert np.all(faces["n"] == 3)
    return header, verts, faces["v"]


def test_ply_round_trip_with_colours(tmp_path, toy_model):
    colors = np.random.default_rng(2).integers(0, 256, (len(toy_model.mean_shape), 3)).astype(np.uint8)
    normals = _normals(toy_model)
    mesh = MeshData(toy_model.mean_shape, toy_model.triangles, normals=normals, colors=colors)
    path = export_mesh(tmp_path / "face.ply", mesh)

    loaded = trimesh.load(path, process=False)
    np.testing.assert_allclose(loaded.vertices, toy_model.mean_shape, atol=1e-5)  # float32 on disk
    np.testing.assert_array_equal(loaded.faces, toy_model.triangles)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], colors)

    header, verts, faces = _read_ply(path)
    assert [h.split()[-1] for h in header if h.startswith("property ") and "list" not in h] == \
        ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    np.testing.assert_allclose(np.stack([verts["nx"], verts["ny"], verts["nz"]], 1), normals, atol=1e-6)
    np.testing.assert_array_equal(faces, toy_model.triangles)


def test_ply_bakes_colours_from_texture(tmp_path, toy_model):
    mesh = MeshData(toy_model.mean_shape, toy_model.triangles, uvs=toy_model.uvs,
                    uv_triangles=toy_model.uv_triangles, texture=_gradient_texture())
    _, verts, _ = _read_ply(write_ply(tmp_path / "baked.ply", mesh))
    uv = toy_model.uvs  # one UV per vertex in the toy model
    # bilinear lookup of the linear ramps, texel centres at (j + 0.5) / W, row 0 at v = 1
    red = np.clip(uv[:, 0] * TEX_W - 0.5, 0, TEX_W - 1)
    green = 4 * np.clip((1 - uv[:, 1]) * TEX_H - 0.5, 0, TEX_H - 1)
    assert np.abs(verts["red"] - red).max() <= 0.5 + 1e-9
    assert np.abs(verts["green"] - green).max() <= 0.5 + 1e-9
    assert np.all(verts["blue"] == 50)


# ----------------------------------------------------------------------------- GLB

def test_glb_structure_and_trimesh_load(tmp_path, toy_model, textured):
    path = export_mesh(tmp_path / "face.glb", textured)
    doc, blob = _read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}  # no COLOR_0 over a texture
    pos = _accessor(doc, blob, prim["attributes"]["POSITION"])
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_allclose(acc["min"], pos.min(0))
    np.testing.assert_allclose(acc["max"], pos.max(0))
    idx = _accessor(doc, blob, prim["indices"])[:, 0].reshape(-1, 3)
    np.testing.assert_allclose(pos[idx] * 1e3, toy_model.mean_shape[toy_model.triangles], atol=1e-4)
    nrm = _accessor(doc, blob, prim["attributes"]["NORMAL"])
    np.testing.assert_allclose(nrm[idx], textured.normals[toy_model.triangles], atol=1e-6)
    uv = _accessor(doc, blob, prim["attributes"]["TEXCOORD_0"])
    np.testing.assert_allclose(uv[idx] * [1, -1] + [0, 1], toy_model.uvs[toy_model.uv_triangles], atol=1e-6)
    image_view = doc["bufferViews"][doc["images"][0]["bufferView"]]
    png = blob[image_view["byteOffset"]:image_view["byteOffset"] + image_view["byteLength"]]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]["index"] == 0

    scene = trimesh.load(path)
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 1
    mesh = next(iter(scene.geometry.values()))
    np.testing.assert_allclose(mesh.vertices[mesh.faces] * 1e3, toy_model.mean_shape[toy_model.triangles], atol=1e-4)
    np.testing.assert_allclose(mesh.vertex_normals[mesh.faces], textured.normals[toy_model.triangles], atol=1e-5)
    np.testing.assert_allclose(mesh.visual.uv[mesh.faces], toy_model.uvs[toy_model.uv_triangles], atol=1e-6)
    assert mesh.visual.material.baseColorTexture.size == (TEX_W, TEX_H)


def test_glb_splits_vertices_on_uv_seams(tmp_path, seamed):
    doc, blob = _read_glb(write_glb(tmp_path / "seam.glb", seamed))
    prim = doc["meshes"][0]["primitives"][0]
    pos = _accessor(doc, blob, prim["attributes"]["POSITION"])
    uv = _accessor(doc, blob, prim["attributes"]["TEXCOORD_0"])
    idx = _accessor(doc, blob, prim["indices"])[:, 0].reshape(-1, 3)
    pairs = {(int(v), int(t)) for v, t in zip(seamed.triangles.ravel(), seamed.uv_triangles.ravel())}
    n_seam = len(pairs) - len(seamed.vertices)
    assert n_seam > 10  # the midline really is a seam
    assert len(pos) == len(pairs)
    np.testing.assert_allclose(pos[idx] * 1e3, seamed.vertices[seamed.triangles], atol=1e-4)
    np.testing.assert_allclose(1 - uv[idx][..., 1], seamed.uvs[seamed.uv_triangles][..., 1], atol=1e-6)
    np.testing.assert_allclose(uv[idx][..., 0], seamed.uvs[seamed.uv_triangles][..., 0], atol=1e-6)
    # computed smooth normals are shared across the seam: split copies have equal normals
    nrm = _accessor(doc, blob, prim["attributes"]["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-6)
    by_vertex: dict[int, np.ndarray] = {}
    for corner_v, corner_new in zip(seamed.triangles.ravel(), idx.ravel()):
        np.testing.assert_array_equal(by_vertex.setdefault(int(corner_v), nrm[corner_new]), nrm[corner_new])


def test_glb_vertex_colours_are_linear(tmp_path, toy_model):
    colors = np.full((len(toy_model.mean_shape), 3), [0.5, 0.04, 1.0])
    doc, blob = _read_glb(write_glb(tmp_path / "c.glb", MeshData(toy_model.mean_shape, toy_model.triangles,
                                                                  colors=colors)))
    prim = doc["meshes"][0]["primitives"][0]
    col = _accessor(doc, blob, prim["attributes"]["COLOR_0"])
    # sRGB decode: 0.5 → ((0.5 + 0.055) / 1.055) ** 2.4 = 0.21404; 0.04 is on the linear toe
    np.testing.assert_allclose(col[0], [0.2140411, 0.04 / 12.92, 1.0], atol=1e-6)
    assert "images" not in doc


# ----------------------------------------------------------------------------- inputs and errors

def test_torch_batch_of_one_is_accepted(tmp_path, toy_model):
    v = torch.as_tensor(toy_model.mean_shape, dtype=torch.float32)[None]
    mesh = MeshData(v, torch.as_tensor(toy_model.triangles), texture=torch.rand(1, 3, 8, 16),
                    uvs=torch.as_tensor(toy_model.uvs)[None], uv_triangles=torch.as_tensor(toy_model.uv_triangles))
    assert mesh.vertices.shape == toy_model.mean_shape.shape and mesh.texture.shape == (8, 16, 3)
    assert mesh.texture.dtype == np.uint8
    loaded = trimesh.load(write_ply(tmp_path / "b.ply", mesh), process=False)
    np.testing.assert_allclose(loaded.vertices, toy_model.mean_shape, atol=1e-5)


def test_batch_of_several_meshes_is_an_error(toy_model):
    v = torch.as_tensor(toy_model.mean_shape)[None].repeat(2, 1, 1)
    with pytest.raises(ValueError, match="batch of 2"):
        MeshData(v, toy_model.triangles)


def test_unknown_extension(tmp_path, toy_model):
    with pytest.raises(ValueError, match=r"\.obj, \.ply, \.glb") as info:
        export_mesh(tmp_path / "face.stl", MeshData(toy_model.mean_shape, toy_model.triangles))
    assert isinstance(info.value, UnknownMeshFormatError) and info.value.exit_code == OutputError.exit_code
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(toy_model):
    with pytest.raises(ValueError, match="out of range"):
        MeshData(toy_model.mean_shape, toy_model.triangles + 1)
    with pytest.raises(ValueError, match="needs uvs"):
        MeshData(toy_model.mean_shape, toy_model.triangles, texture=_gradient_texture())
    with pytest.raises(ValueError, match="colors must be"):
        MeshData(toy_model.mean_shape, toy_model.triangles, colors=np.zeros((5, 3)))


def test_unwritable_destination(tmp_path, textured):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")  # a file where a directory should be: fails even for root
    for ext in (".obj", ".ply", ".glb"):
        with pytest.raises(OSError, match="cannot write") as info:
            export_mesh(blocker / f"face{ext}", textured)
        assert isinstance(info.value, ExportError) and isinstance(info.value, OutputError)
        # (a textured OBJ fails on its PNG, written first)
        assert str(info.value) == f"cannot write {blocker / 'face'}{'_texture.png' if ext == '.obj' else ext}: " \
                                  f"{blocker} is a file, not a directory"


def test_failed_replace_leaves_no_temp_file(tmp_path, textured):
    (tmp_path / "face.glb").mkdir()  # os.replace onto a directory fails after the temp file exists
    with pytest.raises(ExportError, match="face.glb"):
        export_mesh(tmp_path / "face.glb", textured)
    assert [p.name for p in tmp_path.iterdir()] == ["face.glb"]
