"""The frontalize / deocclude commands (selfsup.commands) end to end on real photos."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from face3d.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def profile_photo(shared_data) -> Path:
    return shared_data / "faces" / "300wlp" / "examples" / "Data" / "IBUG_image_008_1_0.jpg"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_profile_frontalized_then_refitted_is_frontal(profile_photo, ict_model, tmp_path, capsys):
    from face3d.imageio import load_image
    from face3d.pipeline import ReconstructConfig, Reconstructor
    from selfsup.commands import fit_aligned

    out, js, ov = tmp_path / "front.png", tmp_path / "front.json", tmp_path / "ov.png"
    code, stdout, err = run(["frontalize", profile_photo, "-o", out, "--json", js, "--overlay", ov,
                             "--model", ict_model, "--iterations", "10"], capsys)
    assert code == 0, err
    assert "classical path" in stdout
    doc = json.loads(js.read_text())
    assert abs(doc["pose_before"]["yaw"]) > 30  # a real profile
    assert doc["pose_after"] == {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}
    assert doc["path"] == "classical" and 0 <= doc["mask_area"] < 1 and doc["hole_fraction"] > 0.05
    assert Image.open(out).size == (224, 224) and Image.open(ov).size == (5 * 224, 224)
    # fitted again with the same pipeline, the frontalized face looks at the camera
    recon = Reconstructor(ReconstructConfig(model=str(ict_model)))
    refit = fit_aligned(load_image(out), recon, iterations=1)
    pose = refit.pose_degrees()
    print("yaw before", doc["pose_before"]["yaw"], "after re-fit", pose["yaw"])
    assert abs(pose["yaw"]) < 10, pose


def test_deocclude_pastes_back_or_writes_the_crop(ict_model, shared_data, tmp_path, capsys):
    photo = shared_data / "faces" / "cfrgan_occluded" / "f04258.jpg"
    out = tmp_path / "full.png"
    code, stdout, err = run(["deocclude", photo, "-o", out, "--model", ict_model, "--iterations", "5",
                             "--json", tmp_path / "d.json"], capsys)
    assert code == 0, err
    src, res = Image.open(photo).convert("RGB"), Image.open(out).convert("RGB")
    assert res.size == src.size
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["pose_before"] == doc["pose_after"] and doc["mask_area"] > 0.01  # the blue glasses
    a = torch.tensor(list(src.getdata()), dtype=torch.float32)
    b = torch.tensor(list(res.getdata()), dtype=torch.float32)
    changed = ((a - b).abs().max(1).values > 8).float().mean()
    assert 0.005 < float(changed) < 0.5  # the face area was repaired, the rest is the photo
    code, _, err = run(["deocclude", photo, "-o", tmp_path / "crop.png", "--crop", "--size", "96",
                        "--model", ict_model, "--iterations", "2"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "crop.png").size == (96, 96)


def test_generator_path_uses_the_registered_generator(ict_model, shared_data, tmp_path, capsys):
    from face3d.generator import Generator, GeneratorOutput, register_generator, save_generator

    @dataclass
    class _Cfg:
        image_size: int = 64

    @register_generator("test-render-e", _Cfg)
    class _UseRenderE(Generator):
        """Returns R_e where the given mask is set: enough to see the command's plumbing."""
        uses_3d = True

        def __init__(self, config):
            super().__init__(config)
            self.gain = torch.nn.Parameter(torch.ones(1))

        def forward(self, inputs):
            self.check_input(inputs)
            m = inputs.mask
            return GeneratorOutput(image=(inputs.image * (1 - m) + inputs.render_e * m) * self.gain, mask=m)

    weights = save_generator(_UseRenderE(_Cfg()), tmp_path / "gen.pt")
    photo = shared_data / "faces" / "cfrgan_occluded" / "f04258.jpg"
    code, stdout, err = run(["deocclude", photo, "-o", tmp_path / "g.png", "--crop", "--weights", weights,
                             "--model", ict_model, "--iterations", "2", "--json", tmp_path / "g.json"], capsys)
    assert code == 0, err
    assert "generator test-render-e" in stdout
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["path"] == "generator" and doc["generator"] == "test-render-e"
    code, _, err = run(["deocclude", photo, "-o", tmp_path / "g.png", "--weights", weights,
                        "--generator", "cfrgan-other", "--model", ict_model], capsys)
    assert code != 0 and "error" in err


def test_bad_inputs_give_one_line_and_exit_codes(tmp_path, capsys):
    code, _, err = run(["frontalize", tmp_path / "missing.jpg", "-o", tmp_path / "o.png"], capsys)
    assert code == 3 and "missing.jpg" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["deocclude", tmp_path / "x.jpg", "-o", tmp_path / "o.png", "--generator", "cfrgan"], capsys)
    assert code == 2 and "--weights" in err
    code, _, err = run(["frontalize", tmp_path / "x.jpg", "-o", tmp_path / "nofolder" / "o.png"], capsys)
    assert code == 5
