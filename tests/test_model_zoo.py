"""The model cache: install from local copies, pinned-hash verification, "auto" selection,
the anny fallback and the command line. Never touches the network."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from face3d import model_zoo
from face3d.converters.common import sha256_file


@pytest.fixture(scope="module")
def ict_home(shared_data, tmp_path_factory):
    """A FACE3D_HOME with ICT installed from the shared archive (converted once per module)."""
    home = tmp_path_factory.mktemp("face3d_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACE3D_HOME", str(home))
    path = model_zoo.install_ict(shared_data / "models" / "ict-facekit.tar.xz")
    mp.undo()
    return home, path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACE3D_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_paths_follow_face3d_home(home, monkeypatch):
    assert model_zoo.face3d_home() == home
    assert model_zoo.model_path("ict") == home / "models" / "ict.npz"
    assert model_zoo.installed_models() == []
    with pytest.raises(ValueError, match="invalid model name"):
        model_zoo.model_path("../x")
    monkeypatch.delenv("FACE3D_HOME")
    assert model_zoo.face3d_home() == model_zoo.Path.home() / ".cache" / "face3d"


def test_install_ict_from_archive(ict_home, shared_data, monkeypatch):
    home, path = ict_home
    monkeypatch.setenv("FACE3D_HOME", str(home))
    assert path == home / "models" / "ict.npz" and model_zoo.installed_models() == ["ict"]
    model = model_zoo.load_model("ict", dtype=torch.float64)
    assert model.n_vertices == 9409 and model.n_id == 100 and model.n_exp == 53 and model.n_albedo == 0
    assert model.dtype == torch.float64
    archive = shared_data / "models" / "ict-facekit.tar.xz"
    assert model.meta["source_sha256"] == sha256_file(archive)
    assert model.meta["verified_files"] == sorted(model_zoo.ICT_FILE_SHA256)
    assert model.meta["file_sha256"]["FaceXModel/generic_neutral_mesh.obj"] == \
        model_zoo.ICT_FILE_SHA256["FaceXModel/generic_neutral_mesh.obj"]
    # "auto" picks ICT once it is cached; a second install is a no-op.
    assert model_zoo.load_model("auto").name == "ict"
    mtime = path.stat().st_mtime_ns
    assert model_zoo.install_ict(archive) == path and path.stat().st_mtime_ns == mtime
    # Loading by path works too and gives the same numbers.
    same = model_zoo.load_model(str(path))
    assert torch.equal(same.mean_shape, model_zoo.load_model("ict").mean_shape)


def test_corrupt_ict_copy_is_rejected(home, shared_data, tmp_path):
    # A local copy whose neutral mesh differs from the pinned one (any byte change does).
    copy = tmp_path / "ict-copy" / "FaceXModel"
    copy.mkdir(parents=True)
    (copy / "generic_neutral_mesh.obj").write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="generic_neutral_mesh.obj has sha256 .* expected"):
        model_zoo.install_ict(copy.parent)
    assert not model_zoo.is_installed("ict")
    with pytest.raises(ValueError, match="archive .* has sha256"):
        model_zoo.install_ict(shared_data / "models" / "ict-facekit.tar.xz", expected_sha256="0" * 64)


def test_download_verifies_hash(home, tmp_path):
    """download() streams to a temp file and keeps it only if the hash matches (file:// URL)."""
    src = tmp_path / "payload.bin"
    src.write_bytes(b"face3d" * 1000)
    good = sha256_file(src)
    out = model_zoo.download(src.as_uri(), home / "dl" / "p.bin", expected_sha256=good, progress=False)
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(ValueError, match="sha256"):
        model_zoo.download(src.as_uri(), home / "dl" / "q.bin", expected_sha256="f" * 64, progress=False)
    assert not (home / "dl" / "q.bin").exists()
    assert [p.name for p in (home / "dl").iterdir()] == ["p.bin"]  # no temp file left behind


def test_auto_falls_back_to_anny_and_caches_it(home, monkeypatch):
    """Without ICT, "auto" builds the anny model once (here a stand-in builder, since anny's
    converter lives in another module) and caches its npz."""
    from face3d.toy_model import make_toy_model

    calls = []

    def build_anny_model():
        calls.append(1)
        arrays = make_toy_model(seed=1)
        arrays.meta.update(name="anny", licence="test", source="stand-in")
        return arrays

    monkeypatch.setitem(sys.modules, "face3d.converters.anny",
                        types.SimpleNamespace(build_anny_model=build_anny_model))
    first = model_zoo.load_model("auto")
    second = model_zoo.load_model("anny")
    assert first.name == "anny" and len(calls) == 1
    assert model_zoo.is_installed("anny") and torch.equal(first.mean_shape, second.mean_shape)


def test_missing_models_give_clear_errors(home):
    with pytest.raises(FileNotFoundError, match="install sfm --source"):
        model_zoo.load_model("sfm")
    with pytest.raises(ValueError, match="unknown model"):
        model_zoo.load_model("flame")
    with pytest.raises(FileNotFoundError, match="not found"):
        model_zoo.load_model("/nowhere/model.npz")


def test_cli_install_sfm_and_list(home, shared_data, capsys):
    assert model_zoo.main(["install", "sfm", "--source", str(shared_data / "models" / "eos-sfm")]) == 0
    assert capsys.readouterr().out.strip().endswith("sfm.npz")
    model = model_zoo.load_model("sfm")
    assert model.n_vertices == 3448 and model.n_exp == 6
    assert model.meta["source_sha256"] == sha256_file(shared_data / "models" / "eos-sfm" / "sfm_shape_3448.bin")
    assert model_zoo.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "sfm" in out and "not installed" in out
    assert model_zoo.main(["install", "bfm", "--source", str(home / "missing.mat")]) == 1
    assert "not found" in capsys.readouterr().err
    # Model round trip through the cache keeps every array.
    np.testing.assert_array_equal(model.to_arrays().landmark_ids, model_zoo.load_model("sfm").to_arrays().landmark_ids)
