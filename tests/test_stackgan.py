"""FD-StackGAN (deocc.stackgan): shapes and masks, the difference mask, losses, both training
stages on tiny synthetic data, save → load, and `train stackgan` on the command line."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deocc.data import OcclusionDataConfig
from deocc.stackgan import (PatchDiscriminator, StackGANConfig, StackGANGenerator, StackGANTask, StackGANTrainConfig,
                            reconstruction_loss, train_stackgan)
from face3d.generator import (GeneratorInput, build_generator, difference_mask, get_generator, load_generator,
                              save_generator)
from face3d.training import TrainerConfig
from face3d.training.task import StepContext

pytestmark = pytest.mark.usefixtures("one_thread")
S = 32
TINY = dict(layers=3, width=8, max_width=32, image_size=S)  # in an order each --set of it validates


@pytest.fixture(scope="module")
def toy():
    from face3d.morphable_model import MorphableModel
    from face3d.toy_model import make_toy_model

    return MorphableModel(make_toy_model(seed=0))


def _trainer(out: Path, steps: int, **kw) -> TrainerConfig:
    base = dict(max_steps=steps, batch_size=4, out_dir=str(out), progress=False, tensorboard=False, log_every=1,
                sample_every=0, resume="never", seed=0)
    base.update(kw)
    return TrainerConfig(**base)


def _config(out: Path, steps: int, stage: int = 1, init=None, **kw) -> StackGANTrainConfig:
    trainer = _trainer(out, steps)
    trainer.optim.lr = 2e-3  # tiny nets, few steps: a faster generator than the paper's 1e-4
    return StackGANTrainConfig(trainer=trainer, generator=StackGANConfig(**TINY), synthetic=4,
                               occlusion=OcclusionDataConfig(image_size=S), stage=stage, init=init, **kw)


def _log(run: Path, key: str) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f)]


# -- networks, masks ------------------------------------------------------------------------------
def test_registered_and_shapes():
    entry = get_generator("stackgan")
    assert entry.cls is StackGANGenerator and entry.train_config is StackGANTrainConfig
    g = build_generator("stackgan", overrides=TINY).eval()
    assert not g.uses_3d
    x = torch.rand(2, 3, S, S)
    out = g(GeneratorInput(image=x))
    assert out.image.shape == (2, 3, S, S) and out.mask.shape == (2, 1, S, S)
    assert float(out.image.detach().min()) >= 0 and float(out.image.detach().max()) <= 1
    assert set(torch.unique(out.mask).tolist()) <= {0.0, 1.0}
    st = g(GeneratorInput(image=x), return_stages=True)
    assert st["coarse"].shape == st["final"].shape == (2, 3, S, S)
    torch.testing.assert_close(st["final"], out.image)
    # the Refine-Net is fed [input ‖ coarse]: 3 + 3 channels; Base-Net 3
    assert g.base.down[0].in_channels == 3 and g.refine.down[0].in_channels == 6
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        g(GeneratorInput(image=torch.rand(2, 3, 16, 16)))
    # the paper's default layout at 256² (5 encoder layers, bottleneck 8×8) builds
    assert StackGANConfig().image_size == 256 and StackGANConfig().layers == 5
    with pytest.raises(ValueError, match="2\\^layers"):
        StackGANConfig(image_size=32, layers=5)


def test_mask_input_is_the_papers_layout():
    g = build_generator("stackgan", overrides={**TINY, "mask_input": True, "refine": False}).eval()
    assert g.base.down[0].in_channels == 4 and g.refine is None
    x, m = torch.rand(2, 3, S, S), (torch.rand(2, 1, S, S) > 0.5).float()
    with pytest.raises(ValueError, match="mask_input=True"):
        g(GeneratorInput(image=x))
    out = g(GeneratorInput(image=x, mask=m))
    assert torch.equal(out.mask, m)  # the mask the caller gave is the one it repaired
    # the mask is an input: changing it changes the output
    assert not torch.allclose(g(GeneratorInput(image=x, mask=1 - m)).image, out.image)


def test_difference_mask_hand_checked():
    img = torch.rand(1, 3, 24, 24)
    out = img.clone()
    out[:, :, 8:14, 6:12] += 0.4  # a 6×6 replaced patch
    out[:, :, 20, 20] += 0.05  # below the threshold
    m1 = difference_mask(out, img, threshold=0.1, kernel=1)
    expect = torch.zeros(1, 1, 24, 24)
    expect[..., 8:14, 6:12] = 1
    assert torch.equal(m1, expect)
    m3 = difference_mask(out, img, threshold=0.1, kernel=3)
    assert bool((m3[..., 8:14, 6:12] == 1).all())
    grown = torch.zeros(1, 1, 24, 24)
    grown[..., 6:16, 4:14] = 1  # the box filter and the dilation each reach one pixel further
    assert float((m3 * (1 - grown)).sum()) == 0 and float(m3.sum()) > 36
    with pytest.raises(ValueError, match="odd"):
        difference_mask(out, img, kernel=2)


def test_mask_marks_every_changed_pixel_and_only_those():
    # no composition (the paper replaces the whole crop), so the mask must mark exactly the
    # pixels the generator changed: outside it the input is kept to within the threshold
    g = build_generator("stackgan", overrides={**TINY, "mask_kernel": 1, "mask_threshold": 0.2}).eval()
    x = torch.rand(3, 3, S, S)
    with torch.no_grad():
        out = g(GeneratorInput(image=x))
    d = (out.image - x).abs().mean(1, keepdim=True)
    keep = out.mask == 0
    assert bool(keep.any()) and bool((~keep).any())
    assert float(d[keep].max()) <= 0.2 and float(d[~keep].min()) > 0.2


def test_patch_discriminator_and_losses():
    d = PatchDiscriminator(6, width=8, n_layers=2)
    logits = d(torch.rand(2, 3, S, S), torch.rand(2, 3, S, S))
    assert logits.shape == (2, 1, 6, 6)  # 32 → 16 → 8 → 7 → 6 (two stride-2, two 4×4 stride-1)
    x = torch.rand(2, 3, S, S)
    l1, ls = reconstruction_loss(x, x)
    assert float(l1) == 0 and abs(float(ls)) < 1e-5
    y = (x + 0.1).clamp(0, 1)
    l1, ls = reconstruction_loss(y, x)
    torch.testing.assert_close(l1, (y - x).abs().mean())
    assert 0 < float(ls) < 1


# -- training -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1(tmp_path_factory, toy):
    out = tmp_path_factory.mktemp("sg1")
    trainer = train_stackgan(_config(out, 12), model=toy)
    return out, trainer


def test_stage1_lowers_the_losses(stage1):
    out, trainer = stage1
    assert trainer.step == 12 and set(trainer.modules) == {"generator", "D1"}
    g = trainer.modules["generator"]
    assert g.refine is None  # stage 1 trains the Base-Net alone
    l1, ssim_l = _log(out, "G/l1"), _log(out, "G/ssim")
    assert np.mean(l1[-3:]) < 0.8 * np.mean(l1[:3]), l1  # measured 0.74 (1 − SSIM: 0.62)
    assert np.mean(ssim_l[-3:]) < np.mean(ssim_l[:3]), ssim_l
    assert all(np.isfinite(_log(out, "D/loss")))
    # TTUR: D at 4e-4, G at the generator's rate
    lr_d, lr_g = _log(out, "lr/D"), _log(out, "lr/G")
    assert lr_d[0] == pytest.approx(4e-4) and lr_g[0] == pytest.approx(2e-3)


def test_stage1_checkpoint_loads_as_a_generator(stage1, tmp_path):
    out, trainer = stage1
    g = load_generator(out)
    assert isinstance(g, StackGANGenerator) and g.refine is None
    x = torch.rand(2, 3, S, S)
    mine = trainer.modules["generator"].eval()
    with torch.no_grad():
        a, b = mine(GeneratorInput(image=x)), g(GeneratorInput(image=x))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    # and through a generator file
    p = save_generator(g, tmp_path / "g.pt")
    with torch.no_grad():
        c = load_generator(p)(GeneratorInput(image=x))
    assert torch.equal(c.image, a.image)


def test_stage2_refines_with_a_frozen_base(stage1, tmp_path, toy):
    out1, trainer1 = stage1
    with pytest.raises(ValueError, match="init"):
        StackGANTask(_config(tmp_path / "x", 1, stage=2))
    out2 = tmp_path / "sg2"
    t2 = train_stackgan(_config(out2, 6, stage=2, init=str(out1)), model=toy)
    assert set(t2.modules) == {"generator", "D2"}
    g2 = t2.modules["generator"]
    assert g2.refine is not None
    base1 = trainer1.modules["generator"].base.state_dict()
    for k, v in g2.base.state_dict().items():  # G1 loaded from stage 1 and left untouched
        assert torch.equal(v, base1[k]), k
    assert all(np.isfinite(_log(out2, "G/loss")))
    g = load_generator(out2)
    assert g.refine is not None and g.config.refine
    x = torch.rand(1, 3, S, S)
    with torch.no_grad():
        assert torch.equal(g(GeneratorInput(image=x)).image, g2.eval()(GeneratorInput(image=x)).image)


def test_perceptual_term_with_a_random_vgg(toy):
    from face3d.nn.vgg import PerceptualLoss, load_vgg19

    cfg = _config(Path("unused"), 1)
    task = StackGANTask(cfg, PerceptualLoss(vgg=load_vgg19(None)))
    mods = task.build(torch.device("cpu"))
    from deocc.data import build_occlusion_dataset

    ds = build_occlusion_dataset(cfg.occlusion, S, None, 2, toy)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("image", "occluded", "mask")}
    ctx = StepContext(0, "G", 0, 1, 0, torch.device("cpu"))
    res = task.training_step(mods, batch, ctx)
    assert float(res["perceptual"]) > 0
    alpha, beta = cfg.alpha[0], cfg.beta[0]
    expect = alpha * (res["l1"] + res["ssim"]) + beta * res["perceptual"] + res["adv"]
    torch.testing.assert_close(res["loss"].detach(), expect)
    res["loss"].backward()
    assert mods["generator"].base.down[0].weight.grad.abs().sum() > 0


def test_cli_train_stackgan_end_to_end(shared_data, toy_model, tmp_path, capsys):
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
        f"occlusion.model={npz}", "occlusion.landmarks=dlib", f"occlusion.cache_dir={tmp_path / 'cache'}",
        "trainer.batch_size=2", "trainer.progress=false", "trainer.tensorboard=false", "trainer.sample_every=1"]
    argv = ["train", "stackgan", "--data", str(photos), "--steps", "2", "--out", str(out), "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert find_checkpoint(out / "checkpoints").name == "step_00000002.pt"
    assert any((out / "samples").glob("*.png"))
    g = load_generator(out, name="stackgan")
    assert g.image_size == S
