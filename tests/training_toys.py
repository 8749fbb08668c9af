"""Toy tasks for tests/test_training.py, and its torchrun worker.

Run as a script under ``python -m torch.distributed.run --nproc_per_node=N`` it trains one
toy task with the settings given as JSON in argv[1] and rank 0 writes the final parameters
(and each rank its own, to compare) to the folder in the settings.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from face3d.training import OptimizerSpec, StepContext, TrainerConfig, Trainer, TrainingTask


class Regression(Dataset):
    """y = W·x + b + noise, 8 → 3, fixed by ``seed``; items are dicts."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        w = torch.randn(8, 3, generator=g)
        self.y = self.x @ w + 0.5 + 0.01 * torch.randn(n, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": i}


class MLPTask(TrainingTask):
    """A small MLP regressor; ``dropout`` > 0 makes training random (tests RNG restore).

    ``record`` collects (step, parameter vector) at the start of each step's first phase.
    ``augment`` adds input noise from ``random`` and ``numpy.random`` (tests their restore).
    ``fail_at`` raises inside ``training_step`` at that step (a simulated crash).
    """

    def __init__(self, dropout: float = 0.0, hidden: int = 32, fail_at: int | None = None,
                 record: bool = False, augment: bool = False) -> None:
        self.dropout, self.hidden, self.fail_at = dropout, hidden, fail_at
        self.record, self.augment = record, augment
        self.params_at: dict[int, torch.Tensor] = {}

    def build(self, device):
        net = nn.Sequential(nn.Linear(8, self.hidden), nn.Tanh(), nn.Dropout(self.dropout),
                            nn.Linear(self.hidden, 3))
        return {"net": net.to(device)}

    def optimizers(self, modules):
        return {"net": OptimizerSpec(modules["net"].parameters())}

    def training_step(self, modules, batch, ctx: StepContext):
        if self.fail_at is not None and ctx.step == self.fail_at:
            raise RuntimeError("simulated crash")
        if self.record and ctx.micro == 0:
            net = modules["net"]
            net = getattr(net, "module", net)
            self.params_at[ctx.step] = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        x = batch["x"]
        if self.augment:  # input noise drawn from Python's and NumPy's generators
            noise = torch.from_numpy(np.random.standard_normal(tuple(x.shape))).to(x)
            x = x + 0.05 * random.random() * noise
        pred = modules["net"](x)
        loss = ((pred - batch["y"]) ** 2).mean()
        return {"loss": loss, "mae": (pred - batch["y"]).abs().mean()}

    def sample(self, modules, batch):
        pred = modules["net"](batch["x"])  # (B, 3) → one coloured 4×4 tile per sample
        img = torch.sigmoid(pred)[:, :, None, None].expand(-1, -1, 4, 4)
        return img


class Points(Dataset):
    """Real 2D points from N((2, −1), 0.5²) with a fixed latent code z per item."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.real = torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0])
        self.z = torch.randn(n, 4, generator=g)

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, i: int) -> dict:
        return {"real": self.real[i], "z": self.z[i]}


class GANTask(TrainingTask):
    """A non-saturating GAN on 2D points: two optimisers, D then G each step.

    ``stray`` records whether D had gradients when the G phase started (it must not).
    """

    def __init__(self) -> None:
        self.stray_grad = False

    def build(self, device):
        G = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        D = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        return {"G": G.to(device), "D": D.to(device)}

    def optimizers(self, modules):
        return {"D": OptimizerSpec(modules["D"].parameters()),
                "G": OptimizerSpec(modules["G"].parameters())}

    def training_step(self, modules, batch, ctx):
        G, D = modules["G"], modules["D"]
        sp = nn.functional.softplus
        if ctx.phase == "D":
            with torch.no_grad():
                fake = G(batch["z"])
            loss = sp(-D(batch["real"])).mean() + sp(D(fake)).mean()
            return {"loss": loss}
        d = getattr(D, "module", D)
        if ctx.micro == 0 and any(p.grad is not None for p in d.parameters()):
            self.stray_grad = True
        loss = sp(-D(G(batch["z"]))).mean()
        return {"loss": loss}


def params_of(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for m in trainer.modules.values() for p in m.parameters()])


def main() -> None:
    import torch.distributed as dist

    opts = json.loads(sys.argv[1])
    out = Path(opts.pop("out"))
    rank = int(os.environ.get("RANK", "0"))
    for kind in opts.pop("tasks", ["mlp"]):
        cfg = TrainerConfig(**{**dict(progress=False, tensorboard=False, sample_every=0,
                                      out_dir=str(out / kind)), **opts})
        task, data = (GANTask(), Points(64)) if kind == "gan" else (MLPTask(), Regression(64))
        trainer = Trainer(task, data, cfg).fit()
        # the trainer leaves the group it created for later trainers of this process to reuse
        assert dist.is_initialized() == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
        torch.save({"params": params_of(trainer), "stray": getattr(task, "stray_grad", False)},
                   out / f"{kind}_rank{rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
