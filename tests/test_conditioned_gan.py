"""The 3DMM-conditioned GAN (selfsup.conditioned): shapes, inputs and masks, the TV term, the
3DMM synthesis of a batch, both training stages on tiny synthetic data, save → load, and
`train conditioned` on the command line."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deocc.data import OcclusionDataConfig
from face3d.generator import GeneratorInput, build_generator, get_generator, load_generator, save_generator
from face3d.training import TrainerConfig
from face3d.training.task import StepContext
from selfsup.conditioned import (ConditionedGANConfig, ConditionedGANTask, ConditionedGANTrainConfig,
                                 ConditionedGenerator, SilhouetteDiscriminator, total_variation, train_conditioned)

pytestmark = pytest.mark.usefixtures("one_thread")
S = 32
TINY = dict(width=8, max_width=32, image_size=S)


@pytest.fixture(scope="module")
def toy():
    from face3d.morphable_model import MorphableModel
    from face3d.toy_model import make_toy_model

    return MorphableModel(make_toy_model(seed=0))


def _config(out: Path, steps: int, stage: int = 1, init=None, **kw) -> ConditionedGANTrainConfig:
    trainer = TrainerConfig(max_steps=steps, batch_size=4, out_dir=str(out), progress=False, tensorboard=False,
                            log_every=1, sample_every=0, resume="never", seed=0)
    base = dict(trainer=trainer, generator=ConditionedGANConfig(dropout=0.0, **TINY), synthetic=4,
                occlusion=OcclusionDataConfig(image_size=S), stage=stage, init=init, d_width=8,
                lr=(5e-3, 5e-4), flip_prob=0.0)  # tiny nets, few steps: faster than the paper's rates
    base.update(kw)
    return ConditionedGANTrainConfig(**base)


def _log(run: Path, key: str) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f)]


# -- networks -------------------------------------------------------------------------------------
def test_registered_shapes_and_inputs():
    entry = get_generator("conditioned")
    assert entry.cls is ConditionedGenerator and entry.train_config is ConditionedGANTrainConfig
    g = build_generator("conditioned", overrides=TINY).eval()
    assert g.uses_3d and g.config.levels == 5  # down to 1×1 as pix2pix's U-Net-256 (8 levels at 256²)
    assert ConditionedGANConfig().levels == 8
    x, syn = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    with torch.no_grad():
        out = g(GeneratorInput(image=x, render_e=syn))  # no render_p, no face_mask needed
    assert out.image.shape == (2, 3, S, S) and out.mask.shape == (2, 1, S, S)
    assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1
    assert set(torch.unique(out.mask).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="render_e"):
        g(GeneratorInput(image=x))
    with pytest.raises(ValueError, match="must match"):
        g(GeneratorInput(image=x, render_e=torch.rand(2, 3, 16, 16)))
    # the synthesis conditions the output
    with torch.no_grad():
        assert not torch.allclose(g(GeneratorInput(image=x, render_e=1 - syn)).image, out.image)


def test_mask_marks_every_changed_pixel_and_only_those():
    # the paper does not compose: the mask must mark exactly the pixels G changed
    g = build_generator("conditioned", overrides={**TINY, "mask_kernel": 1, "mask_threshold": 0.2}).eval()
    x = torch.rand(3, 3, S, S)
    with torch.no_grad():
        out = g(GeneratorInput(image=x, render_e=torch.rand(3, 3, S, S)))
    d = (out.image - x).abs().mean(1, keepdim=True)
    keep = out.mask == 0
    assert bool(keep.any()) and bool((~keep).any())
    assert float(d[keep].max()) <= 0.2 and float(d[~keep].min()) > 0.2


def test_discriminator_seven_layers_one_logit():
    d = SilhouetteDiscriminator(64, width=8, max_width=32, layers=7)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8  # seven layers + the one mapping to a single output
    assert [c.stride[0] for c in convs[:7]] == [2, 2, 2, 2, 2, 1, 1]  # 64 → 2×2, then stride 1
    assert d(torch.rand(3, 3, 64, 64)).shape == (3,)
    full = SilhouetteDiscriminator()  # the paper's 256²: seven stride-2 layers end at 2×2
    assert [m.stride[0] for m in full.modules() if isinstance(m, torch.nn.Conv2d)][:7] == [2] * 7


def test_total_variation_hand_checked_and_gradcheck():
    img = torch.zeros(2, 3, 5, 6)
    img[..., :, 3:] = 0.5  # a vertical step of 0.5 on every row and channel
    # Σ (∇x)²: 5 rows × 3 channels × 0.25; ∇y = 0
    torch.testing.assert_close(total_variation(img), torch.tensor(5 * 3 * 0.25))
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(total_variation, (x,))


# -- data -----------------------------------------------------------------------------------------
def test_synthesis_and_silhouette_of_a_batch(toy):
    from face3d.coefficients import FaceParams
    from face3d.regressor.losses import render_face
    from deocc.data import build_occlusion_dataset

    cfg = _config(Path("unused"), 1, flip_prob=1.0)
    ds = build_occlusion_dataset(cfg.occlusion, S, None, 2, toy)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("image", "occluded", "params")}
    task = ConditionedGANTask(cfg, toy)
    syn, sil = task.synthesis(batch["params"], S)
    r = render_face(toy, FaceParams.split(batch["params"].to(toy.dtype), toy), S)
    torch.testing.assert_close(syn, r.srgb.clamp(0, 1).float())
    assert set(torch.unique(sil).tolist()) == {0.0, 1.0} and 0.1 < float(sil.mean()) < 0.9
    # the synthesis is the face: it covers the rendered silhouette and is dark outside it
    assert float((syn * (1 - sil)).abs().max()) == 0
    # flip_prob 1: every tensor of the step mirrored together, the same in both phases
    ctx = StepContext(0, "D", 0, 1, 0, torch.device("cpu"))
    prep = task.prepare(batch, ctx)
    assert torch.equal(prep["occluded"], batch["occluded"].flip(-1))
    assert torch.equal(prep["render_e"], syn.flip(-1)) and torch.equal(prep["face_mask"], sil.flip(-1))
    assert task.prepare(batch, StepContext(0, "G", 0, 1, 0, torch.device("cpu"))) is prep


# -- training -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1(tmp_path_factory, toy):
    out = tmp_path_factory.mktemp("cg1")
    trainer = train_conditioned(_config(out, 12), model=toy)
    return out, trainer


def test_stage1_lowers_the_losses(stage1):
    out, trainer = stage1
    assert trainer.step == 12 and set(trainer.modules) == {"generator", "global_d"}
    l1, tv = _log(out, "G/l1"), _log(out, "G/tv")
    assert np.mean(l1[-3:]) < 0.85 * np.mean(l1[:3]), l1  # measured 0.77
    assert all(np.isfinite(tv)) and all(np.isfinite(_log(out, "D/d_global")))
    with open(out / "log.csv") as f:
        assert "G/adv_local" not in next(csv.DictReader(f))  # no local D in stage 1
    assert _log(out, "lr/G")[0] == pytest.approx(5e-3) and _log(out, "lr/D")[0] == pytest.approx(5e-3)


def test_stage1_checkpoint_loads_as_a_generator(stage1, tmp_path):
    out, trainer = stage1
    g = load_generator(out, name="conditioned")
    x, syn = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    mine = trainer.modules["generator"].eval()
    with torch.no_grad():
        a, b = mine(GeneratorInput(image=x, render_e=syn)), g(GeneratorInput(image=x, render_e=syn))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    p = save_generator(g, tmp_path / "g.pt")
    with torch.no_grad():
        assert torch.equal(load_generator(p)(GeneratorInput(image=x, render_e=syn)).image, a.image)


def test_stage2_adds_the_local_discriminator(stage1, tmp_path, toy):
    out1, trainer1 = stage1
    with pytest.raises(ValueError, match="init"):
        ConditionedGANTask(_config(tmp_path / "x", 1, stage=2))
    cfg = _config(tmp_path / "cg2", 3, stage=2, init=str(out1))
    task = ConditionedGANTask(cfg, toy)
    mods = task.build(torch.device("cpu"))
    assert set(mods) == {"generator", "global_d", "local_d"}
    for k, v in trainer1.modules["generator"].state_dict().items():  # G and D_g start from stage 1
        assert torch.equal(mods["generator"].state_dict()[k], v), k
    for k, v in trainer1.modules["global_d"].state_dict().items():
        assert torch.equal(mods["global_d"].state_dict()[k], v), k
    t2 = train_conditioned(cfg, model=toy)
    out2 = Path(cfg.trainer.out_dir)
    row = next(csv.DictReader(open(out2 / "log.csv")))
    assert "G/adv_local" in row and "D/d_local" in row and "G/tv" not in row  # D_l on, TV off
    assert float(row["lr/G"]) == pytest.approx(5e-4)
    assert t2.step == 3 and load_generator(out2).config.image_size == S


def test_cli_train_conditioned_end_to_end(shared_data, toy_model, tmp_path, capsys):
    from face3d.cli import main
    from face3d.morphable_model import save_model_arrays
    from face3d.training.checkpoint import find_checkpoint

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img10.jpg", "img11.jpg"):
        os.symlink(shared_data / "faces" / "deepface" / name, photos / name)
    npz = tmp_path / "toy.npz"
    save_model_arrays(toy_model, npz)
    out = tmp_path / "run"
    sets = [f"generator.{k}={v}" for k, v in TINY.items()] + [
        "d_width=8", f"occlusion.model={npz}", "occlusion.landmarks=dlib", f"occlusion.cache_dir={tmp_path / 'cache'}",
        "trainer.batch_size=2", "trainer.progress=false", "trainer.tensorboard=false", "trainer.sample_every=1"]
    argv = ["train", "conditioned", "--data", str(photos), "--steps", "2", "--out", str(out), "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert find_checkpoint(out / "checkpoints").name == "step_00000002.pt"
    assert any((out / "samples").glob("*.png"))
    g = load_generator(out, name="conditioned")
    assert isinstance(g, ConditionedGenerator) and g.image_size == S
