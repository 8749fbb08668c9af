"""Coarse-to-fine blind face completion (deocc.c2f, deocc.c2f_nets): attention modules against
brute force and hand-built cases, eq. 2 composition, crops and discriminators, eqs. 5-12 losses,
both training steps on tiny data, save → load, the CLI."""
from __future__ import annotations

import csv
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from deocc.c2f import (C2F, C2FConfig, C2FDiscriminators, C2FLossConfig, C2FTask, C2FTrainConfig, FeatureExtractor,
                       _flip, crop_regions, gram_matrix, masked_l1, perceptual_loss, region_centres, style_loss)
from deocc.c2f_nets import (DMFB, ConvDiscriminator, PixelSelfAttention, log_probs, patch_cross_attention,
                            pixel_self_attention)
from face3d.generator import GeneratorInput, load_generator, save_generator
from face3d.training.config import OptimizerConfig, TrainerConfig
from face3d.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

S = 32


# --------------------------------------------------------------------------- attention
def test_cross_attention_hand_case():
    """4×4 map, top-left 2×2 block occluded; its query equals the key patch at (row 1, col 2)."""
    k = torch.zeros(1, 2, 4, 4)
    k[0, 0] = torch.arange(16.0).view(4, 4)
    k[0, 1] = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1.0]])
    v = torch.randn(1, 2, 4, 4)
    q = torch.randn(1, 2, 4, 4)
    q[..., :2, :2] = 2.0 * k[..., 1:3, 2:4]  # scaled: cosine still 1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0
    out, idx = patch_cross_attention(q, k, v, mask, return_index=True)
    assert idx[0, 0, 0].item() == 1 * 3 + 2
    assert torch.equal(out[..., :2, :2], v[..., 1:3, 2:4])
    keep = (mask == 0).expand_as(v)
    assert torch.equal(out[keep], v[keep])  # eq. 2: unoccluded features untouched
    # nothing visible: no usable key, V is returned
    out_all, idx_all = patch_cross_attention(q, k, v, torch.ones(1, 1, 4, 4), return_index=True)
    assert torch.equal(out_all, v) and bool((idx_all == -1).all())


def test_cross_attention_matches_brute_force():
    torch.manual_seed(0)
    B, C, H, W = 2, 3, 6, 8
    q, k, v = torch.randn(B, C, H, W), torch.randn(B, C, H, W), torch.randn(B, C, H, W)
    mask = (torch.rand(B, 1, H, W) > 0.6).float()
    out, idx = patch_cross_attention(q, k, v, mask, return_index=True)
    km = k * (1 - mask)
    expect = v.clone()
    for b in range(B):
        for qi in range(H // 2):
            for qj in range(W // 2):
                qp = q[b, :, 2 * qi:2 * qi + 2, 2 * qj:2 * qj + 2].flatten()
                best, arg = -2.0, None
                for ki in range(H - 1):
                    for kj in range(W - 1):
                        if bool((mask[b, 0, ki:ki + 2, kj:kj + 2] > 0.5).all()):
                            continue  # wholly occluded key patch
                        kp = km[b, :, ki:ki + 2, kj:kj + 2].flatten()
                        cos = float(qp @ kp / (qp.norm().clamp_min(1e-12) * kp.norm().clamp_min(1e-12)))
                        if cos > best + 1e-9:
                            best, arg = cos, (ki, kj)
                assert idx[b, qi, qj].item() == arg[0] * (W - 1) + arg[1]
                blk = v[b, :, arg[0]:arg[0] + 2, arg[1]:arg[1] + 2]
                m = mask[b, :, 2 * qi:2 * qi + 2, 2 * qj:2 * qj + 2]
                expect[b, :, 2 * qi:2 * qi + 2, 2 * qj:2 * qj + 2] = (1 - m) * v[b, :, 2 * qi:2 * qi + 2,
                                                                                 2 * qj:2 * qj + 2] + m * blk
    assert torch.allclose(out, expect, atol=1e-6)


def test_self_attention_against_loops_and_hand_case():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 2, 3), torch.randn(2, 4, 2, 3)
    out = pixel_self_attention(q, k, v)
    for b in range(2):
        for y in range(4):
            for x in range(5):
                w = torch.softmax(torch.tensor([float(q[b, :, y, x] @ k[b, :, i, j]) for i in range(2)
                                                for j in range(3)]), 0)
                assert torch.allclose(out[b, :, y, x], (v[b].flatten(1) * w).sum(1), atol=1e-5)
    # one-hot attention: a query aligned with one key (large scale) copies that key's value
    k1 = torch.zeros(1, 2, 1, 2)
    k1[0, 0, 0, 0], k1[0, 1, 0, 1] = 50.0, 50.0
    q1 = torch.zeros(1, 2, 1, 1)
    q1[0, 1] = 1.0
    v1 = torch.tensor([[[[3.0, 7.0]]]])
    assert torch.allclose(pixel_self_attention(q1, k1, v1), torch.tensor(7.0), atol=1e-6)
    # the module is a residual: zero output conv → identity; shapes kept
    m = PixelSelfAttention(16)
    torch.nn.init.zeros_(m.out.weight)
    torch.nn.init.zeros_(m.out.bias)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(m(x), x)


def test_dmfb_residual_and_shape():
    d = DMFB(16)
    x = torch.randn(2, 16, 9, 9)
    assert d(x).shape == x.shape
    torch.nn.init.zeros_(d.out.weight)
    torch.nn.init.zeros_(d.out.bias)
    assert torch.equal(d(x), x)
    with pytest.raises(ValueError, match="divisible by 4"):
        DMFB(10)


# --------------------------------------------------------------------------- generator
def _tiny() -> C2F:
    return C2F(C2FConfig(image_size=S, width=8))


def test_shapes_masks_and_composition():
    g = _tiny().eval()
    x = torch.rand(2, 3, S, S)
    out = g(GeneratorInput(x))
    assert out.image.shape == (2, 3, S, S) and out.mask.shape == (2, 1, S, S)
    assert 0 <= float(out.mask.min()) and float(out.mask.max()) <= 1
    assert 0 <= float(out.image.min()) and float(out.image.max()) <= 1
    r = g(x)
    for t in (r.coarse, r.coarse_r, r.fine, r.image):
        assert t.shape == (2, 3, S, S)
    assert torch.allclose(r.image, (1 - r.mask) * x + r.mask * r.fine, atol=1e-6)  # eq. 2
    assert torch.allclose(r.coarse_r, (1 - r.mask) * x + r.mask * r.coarse, atol=1e-6)
    with torch.no_grad():  # a mask branch that sees no occlusion returns the input
        g.coarse.mask_out.weight.zero_()
        g.coarse.mask_out.bias.fill_(-60.0)
        r0 = g(x)
    assert torch.allclose(r0.image, x, atol=1e-6)
    assert g(x, coarse_only=True).image is None
    with pytest.raises(ValueError, match="multiple of 8"):
        C2FConfig(image_size=60)


def test_paper_sizes():
    """At 112², the cross-attention sees 56² maps and the self-attention 28² (keys 14²)."""
    g = C2F()
    seen = {}
    g.fine.cross.register_forward_hook(lambda m, i, o: seen.update(cross=(i[0].shape, o.shape)))
    g.fine.attn.register_forward_hook(lambda m, i, o: seen.update(self=i[0].shape))
    with torch.no_grad():
        g(torch.rand(1, 3, 112, 112))
    assert seen["cross"] == (torch.Size([1, 128, 56, 56]), torch.Size([1, 64, 56, 56]))
    assert seen["self"] == torch.Size([1, 256, 28, 28])


def test_crops_flip_and_discriminators():
    x = torch.arange(2 * 3 * S * S, dtype=torch.float32).view(2, 3, S, S)
    lm = torch.zeros(2, 68, 2)
    lm[:, 36:42] = torch.tensor([10.0, 12.0])
    lm[:, 42:48] = torch.tensor([22.0, 12.0])
    lm[:, 27:36] = torch.tensor([16.0, 18.0])
    lm[:, 48:68] = torch.tensor([16.0, 31.0])  # near the border: the crop is shifted inside
    c = region_centres(lm)
    crops = crop_regions(x, c, 8)
    assert [t.shape[1:] for t in crops] == [(3, S, S)] * 2 + [(3, 8, 8)] * 4 + [(6, 8, 8)]
    assert torch.equal(crops[2], x[..., 8:16, 6:14]) and torch.equal(crops[3], x[..., 8:16, 18:26])
    assert torch.equal(crops[5], x[..., 24:32, 12:20])
    assert torch.equal(crops[6][:, 3:], crops[3].flip(-1))
    # flipping mirrors the images and swaps the eyes
    batch = {"image": x, "occluded": x + 1, "mask": x[:, :1]}
    fb, fc = _flip(batch, c, torch.tensor([True, False]))
    assert torch.equal(fb["image"][0], x[0].flip(-1)) and torch.equal(fb["image"][1], x[1])
    assert torch.allclose(fc[0, 0], torch.tensor([S - 1 - 22.0, 12.0])) and torch.equal(fc[1], c[1])
    # discriminator output sizes and the patch probability = mean of the pixel sigmoids
    assert ConvDiscriminator(6, S, "global", 8)(torch.randn(2, 6, S, S)).shape == (2, 1, 1, 1)
    assert ConvDiscriminator(6, 8, "patch", 8)(torch.randn(2, 6, 8, 8)).shape == (2, 1, 2, 2)
    z = torch.randn(3, 1, 4, 4) * 5
    lp, ln = log_probs(z)
    p = torch.sigmoid(z).flatten(1).mean(1)
    assert torch.allclose(lp.exp(), p, atol=1e-6) and torch.allclose(ln.exp(), 1 - p, atol=1e-6)
    D = C2FDiscriminators(S, 8)
    out = D(torch.rand(2, 3, S, S), torch.rand(2, 3, S, S), c)
    assert len(out) == 7 and all(a.shape == (2,) and bool((a < 0).all()) for a, _ in out)


def test_losses_hand_checked():
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    w = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert masked_l1(pred, target, w).item() == pytest.approx((1 + 4) / 2)  # eq. 6: per masked value
    assert masked_l1(pred, target, 1 - w).item() == pytest.approx((2 + 3) / 2)
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C = 2, H·W = 2
    assert torch.allclose(gram_matrix(f), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)
    a, b = [torch.randn(2, 4, 3, 3)], [torch.randn(2, 4, 3, 3)]
    assert perceptual_loss(a, a).item() == 0 and style_loss(a, a).item() == 0
    assert perceptual_loss(a, b).item() == pytest.approx(float((a[0] - b[0]).abs().mean()))


# --------------------------------------------------------------------------- training
class _Faces(torch.utils.data.Dataset):
    """Tiny blind-completion items: smooth random faces, a coloured rectangle (C2F eq. 1)."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.clean = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(S, S), mode="bilinear",
                                   align_corners=False)
        self.mask = torch.zeros(n, 1, S, S)
        for k in range(n):
            y, x = torch.randint(0, S // 2, (2,), generator=g).tolist()
            self.mask[k, :, y:y + S // 3, x:x + S // 2] = 1
        colour = torch.rand(n, 3, 1, 1, generator=g)
        self.occ = self.clean * (1 - self.mask) + colour * self.mask
        base = torch.zeros(68, 2)
        base[36:42], base[42:48], base[27:36], base[48:68] = (torch.tensor(v) for v in
                                                               ([11.0, 12.0], [21.0, 12.0], [16.0, 17.0],
                                                                [16.0, 23.0]))
        self.lm = base

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i):
        return {"image": self.clean[i], "occluded": self.occ[i], "mask": self.mask[i], "landmarks": self.lm}


def _cfg(tmp_path, stage, steps, init=None, **kw) -> C2FTrainConfig:
    trainer = TrainerConfig(max_steps=steps, batch_size=8, log_every=1, ckpt_every=0, sample_every=0,
                            out_dir=str(tmp_path / f"step{stage}"), resume="never", progress=False,
                            tensorboard=False, device="cpu", optim=OptimizerConfig(lr=1e-3))
    return C2FTrainConfig(trainer=trainer, model=C2FConfig(image_size=S, width=8), stage=stage, init=init,
                          stage1_lr=2e-3, coarse_lr=5e-4, d_width=8, **kw)


def _log(tmp_path, stage, key):
    with open(tmp_path / f"step{stage}" / "log.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_two_training_steps_lower_their_losses(tmp_path):
    data = _Faces()
    cfg1 = _cfg(tmp_path, 1, 20, hflip=False)  # one full batch per step, no flips: a clean trend
    t1 = Trainer(C2FTask(cfg1), data, cfg1.trainer).fit()
    l1 = _log(tmp_path, 1, "loss")
    assert sum(l1[-5:]) / 5 < 0.9 * sum(l1[:5]) / 5
    coarse1 = {k: v.clone() for k, v in t1.modules["generator"].coarse.state_dict().items()}
    # step 2 from step 1: D, then G (coarse at its own rate); perceptual + style on a random face net
    from face3d.regressor.identity import IResNet

    feats = FeatureExtractor(IResNet((1, 1, 1, 1), 16, input_size=S), "identity", ("layer1", "layer3"))
    # a random network's feature magnitudes are arbitrary (style ~1e6 here): scale λ_per, λ_style so
    # the terms are O(1) next to the others, as the paper's weights make them with trained features
    cfg2 = _cfg(tmp_path, 2, 12, init=str(tmp_path / "step1"), pixel_loss_on_fine=True, hflip=False,
                loss2=C2FLossConfig(per=1e-5, style=1e-6))
    task = C2FTask(cfg2, features=feats)
    built = task.build(torch.device("cpu"))["generator"]  # step 2 starts from step 1's coarse net
    assert all(torch.equal(v, coarse1[k]) for k, v in built.coarse.state_dict().items())
    t2 = Trainer(task, data, cfg2.trainer).fit()
    lrs = sorted(g["lr"] for g in t2.optimizers["G"].param_groups)
    assert lrs == pytest.approx([5e-4, 1e-3])
    d, m, g = _log(tmp_path, 2, "D/loss"), _log(tmp_path, 2, "G/m"), _log(tmp_path, 2, "G/loss")
    assert len(d) == 12 and all(v > 0 for v in _log(tmp_path, 2, "G/style"))
    for series in (d, m, g):
        assert sum(series[-3:]) / 3 < sum(series[:3]) / 3
    gen = load_generator(tmp_path / "step2", name="c2f")
    with torch.no_grad():
        assert torch.equal(gen(data.occ[:2]).image, t2.modules["generator"].eval()(data.occ[:2]).image)


def test_step2_needs_init(tmp_path):
    with pytest.raises(ValueError, match="init"):
        C2FTask(_cfg(tmp_path, 2, 1))
    with pytest.raises(ValueError, match="stage"):
        C2FTrainConfig(stage=3)


def test_save_load_identical(tmp_path):
    g = _tiny().eval()
    h = load_generator(save_generator(g, tmp_path / "c2f.pt"))
    assert isinstance(h, C2F) and dataclasses.asdict(h.config) == dataclasses.asdict(g.config)
    x = torch.rand(2, 3, S, S)
    with torch.no_grad():
        a, b = g(GeneratorInput(x)), h(GeneratorInput(x))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)


def test_cli_two_steps_end_to_end(shared_data, ict_model, tmp_path, capsys):
    from face3d.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img10.jpg", "img11.jpg"):
        os.symlink(shared_data / "faces" / "deepface" / name, photos / name)
    common = ["--data", str(photos), "--steps", "2", "--device", "cpu", "--set", "model.image_size=32",
              "--set", "model.width=8", "--set", "d_width=8", "--set", "trainer.batch_size=2",
              "--set", "trainer.progress=false", "--set", "trainer.log_every=1", "--set", "trainer.tensorboard=false",
              "--set", f"occlusion.model={ict_model}", "--set", "occlusion.landmarks=dlib",
              "--set", f"occlusion.cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "c2f", "--stage", "1", "--out", str(tmp_path / "s1"), *common]) == 0
    assert main(["train", "c2f", "--stage", "2", "--init", str(tmp_path / "s1"), "--out", str(tmp_path / "s2"),
                 *common]) == 0
    assert capsys.readouterr().out.count("trained 2 steps") == 2
    # 2 faces, batch 2: one step per epoch, so the rate is ×0.1 after the first step (paper: per epoch)
    with open(tmp_path / "s2" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    lr_keys = [k for k in rows[0] if "lr" in k and "D" in k]
    assert lr_keys and float(rows[1][lr_keys[0]]) == pytest.approx(0.1 * float(rows[0][lr_keys[0]]))
    gen = load_generator(tmp_path / "s2", name="c2f")
    assert gen.image_size == 32
