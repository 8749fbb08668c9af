"""RLA (deocc.rla): 2-D LSTM wavefront vs. a cell-by-cell reference, eq. 13 composition and the
eq. 15 gradient, gradcheck, the four training stages on tiny data, save → load, the CLI."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from deocc.rla import (RLA, LSTMStack, RLAConfig, RLADiscriminator, RLATask, RLATrainConfig, SpatialLSTM2D,
                       composition_mse)
from face3d.generator import GeneratorInput, get_generator, load_generator, save_generator
from face3d.training.config import OptimizerConfig, TrainerConfig
from face3d.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

S = 16


def _tiny(**kw) -> RLA:
    return RLA(RLAConfig(image_size=S, grid=2, hidden_size=16, layers=2, steps=4, **kw))


def _reference_2d_lstm(net: SpatialLSTM2D, x):
    """Eq. 4 cell by cell in raster order (left to right, top to bottom)."""
    B, G = x.shape[:2]
    H = net.hidden_size
    h, c = {}, {}
    z = x.new_zeros(B, H)
    for l in range(net.layers):
        for i in range(G):
            for j in range(G):
                inp = x[:, i, j] if l == 0 else h[(l - 1, i, j)]
                hu, hl = h.get((l, i - 1, j), z), h.get((l, i, j - 1), z)
                cu, cl = c.get((l, i - 1, j), z), c.get((l, i, j - 1), z)
                g = net.inp[l](inp) + net.rec[l](torch.cat([hu, hl], -1))
                i_, o_, g_, fu, fl = g.chunk(5, -1)
                cc = torch.sigmoid(fu) * cu + torch.sigmoid(fl) * cl + torch.sigmoid(i_) * torch.tanh(g_)
                h[(l, i, j)], c[(l, i, j)] = torch.sigmoid(o_) * torch.tanh(cc), cc
    last = G - 1
    return [h[(l, last, last)] for l in range(net.layers)], [c[(l, last, last)] for l in range(net.layers)]


def test_wavefront_matches_cell_by_cell():
    torch.manual_seed(1)
    net = SpatialLSTM2D(7, 5, layers=2).double()
    x = torch.randn(3, 3, 3, 7, dtype=torch.float64)  # a 3×3 grid: diagonals of 1, 2, 3, 2, 1 cells
    h, c = net(x)
    hr, cr = _reference_2d_lstm(net, x)
    for a, b in zip(h + c, hr + cr):
        assert a.shape == (3, 5)
        assert torch.allclose(a, b, atol=1e-12)


def test_lstm_cell_matches_torch():
    """LSTMStack with an input is the textbook LSTM (eq. 1): compare with nn.LSTMCell."""
    torch.manual_seed(2)
    stack = LSTMStack(4, 6, layers=1).double()
    ref = torch.nn.LSTMCell(4, 6).double()
    W, b = stack.cells[0].weight.detach(), stack.cells[0].bias.detach()
    # ours: rows [i, o, g, f], columns [x, h]; torch: rows [i, f, g, o]
    i, o, g, f = W.chunk(4, 0)
    bi, bo, bg, bf = b.chunk(4, 0)
    with torch.no_grad():
        ref.weight_ih.copy_(torch.cat([i, f, g, o])[:, :4])
        ref.weight_hh.copy_(torch.cat([i, f, g, o])[:, 4:])
        ref.bias_ih.copy_(torch.cat([bi, bf, bg, bo]))
        ref.bias_hh.zero_()
    x, h0, c0 = (torch.randn(2, n, dtype=torch.float64) for n in (4, 6, 6))
    hs, cs = stack(x, ([h0], [c0]))
    hr, cr = ref(x, (h0, c0))
    assert torch.allclose(hs[0], hr, atol=1e-12) and torch.allclose(cs[0], cr, atol=1e-12)


def test_shapes_masks_and_steps():
    g = _tiny().eval()
    x = torch.rand(2, 3, S, S)
    out = g(GeneratorInput(x))
    assert out.image.shape == (2, 3, S, S) and out.mask.shape == (2, 1, S, S)
    assert float(out.mask.min()) >= 0.0 and float(out.mask.max()) <= 1.0
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    r = g(x, return_steps=True)
    assert len(r.recon_steps) == len(r.score_steps) == 4
    assert torch.equal(r.recon_steps[-1], r.recon) and torch.equal(r.score_steps[-1], r.score)
    with pytest.raises(ValueError, match="image must be"):
        g(GeneratorInput(torch.rand(1, 3, S + 1, S + 1)))
    with pytest.raises(ValueError, match="multiple of grid"):
        RLAConfig(image_size=15, grid=2)


def test_composition_eq13_keeps_unoccluded_pixels():
    g = _tiny().eval()
    x = torch.rand(2, 3, S, S)
    with torch.no_grad():
        r = g(x)
        assert torch.allclose(r.image, r.recon * r.score + x * (1 - r.score), atol=1e-7)
        # a detector that scores nothing as occluded returns the input exactly
        g.det_out.bias.fill_(-60.0)
        g.det_out.weight.zero_()
        r0 = g(x)
        assert float(r0.score.max()) < 1e-20
        assert torch.equal(r0.image, x)
        # only the top half occluded: the bottom half is the input's, the top half the reconstruction's
        g.det_out.bias.view(S, S)[: S // 2] = 60.0
        r1 = g(x)
        assert torch.equal(r1.image[..., S // 2:, :], x[..., S // 2:, :])
        assert torch.allclose(r1.image[..., : S // 2, :], r1.recon[..., : S // 2, :], atol=1e-6)


def test_eq14_gradients_are_eq15_16():
    """∂L/∂X_rec = (X̃ − X) ⊙ S / K and ∂L/∂S = (X̃ − X) ⊙ (X_rec − X_occ) / K (paper eqs. 15-16)."""
    torch.manual_seed(3)
    K = 3
    rec = torch.rand(K, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    sc = torch.rand(K, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    occ, clean = torch.rand(K, 3, 4, 4, dtype=torch.float64), torch.rand(K, 3, 4, 4, dtype=torch.float64)
    tilde = rec * sc + occ * (1 - sc)
    composition_mse(tilde, clean).backward()
    assert torch.allclose(rec.grad, (tilde - clean).detach() * sc.detach() / K)
    assert torch.allclose(sc.grad, ((tilde - clean) * (rec - occ)).detach().sum(1, keepdim=True) / K)


def test_gradcheck_whole_model():
    torch.manual_seed(4)
    g = RLA(RLAConfig(image_size=4, grid=2, hidden_size=3, layers=2, steps=2)).double()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: g(t).image, (x,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- training
class _Pairs(torch.utils.data.Dataset):
    """Tiny occlusion pairs: smooth random faces, a random square painted grey (mask = 1)."""

    def __init__(self, n: int = 8, size: int = S, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 3, 4, 4, generator=g)
        self.clean = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
        self.mask = torch.zeros(n, 1, size, size)
        for k in range(n):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            self.mask[k, :, y:y + size // 2, x:x + size // 2] = 1
        self.occ = self.clean * (1 - self.mask) + 0.5 * self.mask

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i):
        return {"image": self.clean[i], "occluded": self.occ[i], "mask": self.mask[i]}


def _cfg(tmp_path, stage, steps, init=None, **kw) -> RLATrainConfig:
    trainer = TrainerConfig(max_steps=steps, batch_size=4, log_every=1, ckpt_every=0, sample_every=0,
                            out_dir=str(tmp_path / f"stage{stage}"), resume="never", progress=False,
                            tensorboard=False, device="cpu", optim=OptimizerConfig(lr=3e-3))
    return RLATrainConfig(trainer=trainer, model=RLAConfig(image_size=S, hidden_size=16, steps=4), stage=stage,
                          init=init, **kw)


def _losses(tmp_path, stage, key="loss"):
    import csv

    with open(tmp_path / f"stage{stage}" / "log.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_four_stages_lower_their_losses(tmp_path):
    data = _Pairs()
    t1 = Trainer(RLATask(_cfg(tmp_path, 1, 30)), data, _cfg(tmp_path, 1, 30).trainer).fit()
    l1 = _losses(tmp_path, 1)
    assert sum(l1[-5:]) / 5 < 0.7 * sum(l1[:5]) / 5
    ck1 = str(tmp_path / "stage1")
    # stage 2: only the detection channel moves
    before = {k: v.clone() for k, v in t1.modules["generator"].state_dict().items()}
    t2 = Trainer(RLATask(_cfg(tmp_path, 2, 20, ck1)), data, _cfg(tmp_path, 2, 20).trainer).fit()
    after = t2.modules["generator"].state_dict()
    for k, v in after.items():
        moved = not torch.equal(v, before[k])
        assert moved == k.startswith("det"), k
    l2 = _losses(tmp_path, 2)
    assert sum(l2[-5:]) / 5 < sum(l2[:5]) / 5
    # stage 3: joint training from stage 2
    Trainer(RLATask(_cfg(tmp_path, 3, 20, str(tmp_path / "stage2"))), data, _cfg(tmp_path, 3, 20).trainer).fit()
    l3 = _losses(tmp_path, 3)
    assert sum(l3[-5:]) / 5 < sum(l3[:5]) / 5
    # stage 4: D warm-up steps, then D and G alternate; a random identity CNN adds L_sup
    from face3d.regressor.identity import build_identity_net
    from face3d.regressor.losses import IdentityLoss

    ident = IdentityLoss(build_identity_net("iresnet18", 32))
    cfg4 = _cfg(tmp_path, 4, 12, str(tmp_path / "stage3"), d_warmup_steps=4, d_width=8)
    t4 = Trainer(RLATask(cfg4, identity=ident), data, cfg4.trainer).fit()
    d = _losses(tmp_path, 4, "D/loss")
    g = _losses(tmp_path, 4, "G/loss")
    assert len(d) == 12 and len(g) == 8  # G only after the 4 warm-up steps
    assert sum(d[-3:]) / 3 < sum(d[:3]) / 3
    assert all(v > 0 for v in _losses(tmp_path, 4, "G/sup"))
    assert isinstance(t4.modules["D"], RLADiscriminator)
    # the fine-tuned run folder loads as a generator with the trained weights
    gen = load_generator(tmp_path / "stage4", name="rla")
    x = data.occ[:2]
    with torch.no_grad():
        assert torch.equal(gen(x).image, t4.modules["generator"].eval()(x).image)


def test_stage_needs_init(tmp_path):
    with pytest.raises(ValueError, match="init"):
        RLATask(_cfg(tmp_path, 2, 1))
    with pytest.raises(ValueError, match="stage"):
        RLATrainConfig(stage=5)


def test_save_load_identical(tmp_path):
    g = _tiny().eval()
    p = save_generator(g, tmp_path / "rla.pt")
    h = load_generator(p)
    assert isinstance(h, RLA) and dataclasses.asdict(h.config) == dataclasses.asdict(g.config)
    x = torch.rand(2, 3, S, S)
    with torch.no_grad():
        a, b = g(GeneratorInput(x)), h(GeneratorInput(x))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert get_generator("rla").train is not None


def test_cli_train_end_to_end(shared_data, ict_model, tmp_path, capsys):
    from face3d.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img10.jpg", "img11.jpg"):
        os.symlink(shared_data / "faces" / "deepface" / name, photos / name)
    out = tmp_path / "run"
    code = main(["train", "rla", "--data", str(photos), "--steps", "2", "--out", str(out), "--device", "cpu",
                 "--set", "model.image_size=32", "--set", "model.hidden_size=8", "--set", "model.steps=2",
                 "--set", "trainer.batch_size=2", "--set", "trainer.progress=false",
                 "--set", "trainer.tensorboard=false", "--set", f"occlusion.model={ict_model}",
                 "--set", "occlusion.landmarks=dlib", "--set", f"occlusion.cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    assert "trained 2 steps" in capsys.readouterr().out
    gen = load_generator(out, name="rla")
    assert gen.image_size == 32
