"""The training foundation (face3d/training): trainer, checkpoints, sampler, logs, configs.

Toy tasks live in tests/training_toys.py (also the torchrun worker of the 2-process test).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face3d.config import apply_overrides, load_config, parse_override
from face3d.errors import UsageError
from face3d.training import (CheckpointManager, OptimizerConfig, ResumableSampler, ScheduleConfig, Trainer,
                             TrainerConfig, capture_rng_state, load_checkpoint, make_grid, restore_rng_state)
from face3d.training.checkpoint import CheckpointError
from face3d.training.logs import CSVLogger, read_csv_log
from face3d.training.trainer import lr_factor

sys.path.insert(0, str(Path(__file__).parent))
from training_toys import GANTask, MLPTask, Points, Regression, params_of  # noqa: E402

QUIET = dict(progress=False, tensorboard=False, sample_every=0)


def _cfg(tmp: Path, **kw) -> TrainerConfig:
    return TrainerConfig(**{**QUIET, "out_dir": str(tmp), "log_every": 1, **kw})


def _rows(run: Path) -> list[dict]:
    """CSV rows without the wall-clock column."""
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_csv_log(run / "log.csv")]


# --------------------------------------------------------------------------- training


def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = _cfg(tmp_path, max_steps=30, batch_size=8, log_every=5, optim=OptimizerConfig(lr=1e-2))
    Trainer(MLPTask(), Regression(64), cfg).fit()
    losses = [float(r["loss"]) for r in _rows(tmp_path)]
    assert len(losses) == 6
    assert losses[-1] < 0.25 * losses[0], losses


def test_bf16_autocast_on_cpu_trains(tmp_path):
    cfg = _cfg(tmp_path, max_steps=30, batch_size=8, log_every=5, amp="bf16", optim=OptimizerConfig(lr=1e-2))
    Trainer(MLPTask(), Regression(64), cfg).fit()
    losses = [float(r["loss"]) for r in _rows(tmp_path)]
    assert losses[-1] < 0.35 * losses[0], losses


def test_interrupted_and_resumed_run_matches_uninterrupted_step_for_step(tmp_path):
    """Dropout, shuffling, input noise from python/numpy RNGs, warm-up + cosine schedule and
    gradient accumulation; a crash at step 8 after the checkpoint of step 6 (mid-epoch:
    5 steps per epoch), then a resumed run: every logged value and the parameters at the
    start of every later step are bit-identical to an uninterrupted run's."""
    common = dict(max_steps=13, batch_size=8, grad_accum=2, ckpt_every=3,
                  optim=OptimizerConfig(lr=5e-3), schedule=ScheduleConfig(name="cosine", warmup_steps=3))
    ref_task = MLPTask(dropout=0.3, record=True, augment=True)
    ref = Trainer(ref_task, Regression(40), _cfg(tmp_path / "ref", **common)).fit()

    crash = MLPTask(dropout=0.3, augment=True, fail_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(crash, Regression(40), _cfg(tmp_path / "run", **common)).fit()
    assert [r["step"] for r in _rows(tmp_path / "run")] == [str(i) for i in range(1, 9)]
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest().name == "step_00000006.pt"

    resumed_task = MLPTask(dropout=0.3, record=True, augment=True)
    resumed = Trainer(resumed_task, Regression(40), _cfg(tmp_path / "run", **common)).fit()
    assert sorted(resumed_task.params_at) == list(range(6, 13))
    for step, p in resumed_task.params_at.items():
        assert torch.equal(p, ref_task.params_at[step]), step
    assert torch.equal(params_of(resumed), params_of(ref))
    assert _rows(tmp_path / "run") == _rows(tmp_path / "ref")  # rows 7-8 of the crashed run were dropped
    # and the resumed run really was random: dropout masks and noise vary step to step
    assert len({r["loss"] for r in _rows(tmp_path / "ref")}) == 13


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    """2 micro-batches of B/2 per step = one batch of B (model without batch-dependent layers),
    for a regressor and for the two-phase GAN."""
    for name, task_cls, data_cls in [("mlp", MLPTask, Regression), ("gan", GANTask, Points)]:
        runs = []
        for accum in (1, 2):
            cfg = _cfg(tmp_path / f"{name}{accum}", max_steps=12, batch_size=8, grad_accum=accum,
                       optim=OptimizerConfig(lr=1e-2))
            runs.append(params_of(Trainer(task_cls(), data_cls(40), cfg).fit()))
        moved = (runs[0] - params_of_init(task_cls)).abs().max()
        assert moved > 1e-2  # the runs trained
        assert (runs[0] - runs[1]).abs().max() < 1e-5, name


def params_of_init(task_cls) -> torch.Tensor:
    torch.manual_seed(0)
    mods = task_cls().build(torch.device("cpu"))
    return torch.cat([p.detach().flatten() for m in mods.values() for p in m.parameters()])


def test_gan_phases_update_d_then_g_without_stray_gradients(tmp_path):
    task = GANTask()
    tr = Trainer(task, Points(64), _cfg(tmp_path, max_steps=5, batch_size=8, grad_accum=2)).fit()
    assert not task.stray_grad  # the G loss left no gradient in D
    row = _rows(tmp_path)[-1]
    assert {"D/loss", "G/loss", "lr/D", "lr/G"} <= set(row)
    assert all(p.grad is None for m in tr.modules.values() for p in m.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes (gloo), 2 micro-batches each: both ranks end with the same
    parameters, equal to a 1-process run with the full batch, for the MLP and the GAN."""
    opts = {"out": str(tmp_path), "tasks": ["mlp", "gan"], "max_steps": 10, "batch_size": 8, "grad_accum": 2,
            "log_every": 5}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(Path(__file__).parent / "training_toys.py"), json.dumps(opts)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    for kind, task_cls, data_cls in [("mlp", MLPTask, Regression), ("gan", GANTask, Points)]:
        r0 = torch.load(tmp_path / f"{kind}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{kind}_rank1.pt", weights_only=True)
        assert torch.equal(r0["params"], r1["params"]), kind
        assert not r0["stray"] and not r1["stray"]
        single = Trainer(task_cls(), data_cls(64), _cfg(tmp_path / f"single_{kind}", max_steps=10, batch_size=8,
                                                          log_every=5)).fit()
        assert (params_of(single) - r0["params"]).abs().max() < 1e-6, kind
        # rank 0 logged the mean over both processes: the same losses as the single run
        two = [float(r["loss"] if kind == "mlp" else r["G/loss"]) for r in _rows(tmp_path / kind)]
        one = [float(r["loss"] if kind == "mlp" else r["G/loss"]) for r in _rows(tmp_path / f"single_{kind}")]
        assert np.allclose(two, one, rtol=1e-5), (two, one)
    mlp_losses = [float(r["loss"]) for r in _rows(tmp_path / "mlp")]
    assert len(mlp_losses) == 2 and mlp_losses[-1] < mlp_losses[0] * 1.5  # sanity: finite, logged twice


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path):
    Trainer(MLPTask(dropout=0.2), Regression(32), _cfg(tmp_path, max_steps=4, batch_size=8, ckpt_every=2)).fit()
    mgr = CheckpointManager(tmp_path / "checkpoints")
    f = mgr.latest()
    assert f.name == "step_00000004.pt"
    state = torch.load(f, weights_only=True)  # nothing but tensors, numbers, strings
    assert state["step"] == 4 and state["world_size"] == 1
    assert set(state) >= {"modules", "optimizers", "schedulers", "scalers", "rng", "config", "epoch",
                          "samples_in_epoch"}
    assert state["config"]["optim"]["lr"] == 1e-4 and isinstance(state["config"]["optim"]["betas"], list)
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    # RNG capture/restore round trip: the same draws after restoring
    import random

    snap = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(torch.load(_save_tmp(tmp_path, snap), weights_only=True))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _save_tmp(tmp: Path, obj) -> Path:
    p = tmp / "obj.pt"
    torch.save(obj, p)
    return p


class Foreign:
    """An arbitrary class: its pickle must not be loaded from a checkpoint."""


def test_foreign_or_broken_checkpoints_are_refused(tmp_path):
    torch.save({"x": Foreign()}, tmp_path / "step_00000001.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "step_00000001.pt")
    (tmp_path / "step_00000002.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="step_00000002.pt"):
        load_checkpoint(tmp_path / "step_00000002.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path / "ck", keep=2)
    mgr.save(1, {"step": 1, "w": torch.arange(4.0)})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # half the bytes reach the disk, then the process "dies"
        real_save(obj, f, *a, **k)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, {"step": 2, "w": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["latest", "step_00000001.pt"]  # no partial file, no temporary left
    state = mgr.load()
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0))


def test_keep_last_k_and_latest_pointer(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for s in (1, 2, 3, 10):
        mgr.save(s, {"step": s})
    assert [p.name for p in mgr.checkpoints()] == ["step_00000003.pt", "step_00000010.pt"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000010.pt"
    assert mgr.load()["step"] == 10


# --------------------------------------------------------------------------- outputs


def test_run_writes_csv_samples_config_and_tensorboard(tmp_path, caplog):
    cfg = TrainerConfig(out_dir=str(tmp_path), max_steps=6, batch_size=4, log_every=2, sample_every=3,
                        sample_count=5, progress=True, tensorboard=True)
    Trainer(MLPTask(), Regression(16), cfg).fit()
    rows = read_csv_log(tmp_path / "log.csv")
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert {"loss", "mae", "lr", "epoch", "samples_per_s"} <= set(rows[0])
    pngs = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert pngs == ["step_00000003.png", "step_00000006.png"]
    im = Image.open(tmp_path / "samples" / pngs[0])
    assert im.size == (5 * 4 + 6 * 2, 4 + 2 * 2)  # 5 tiles of 4×4 in one row, 2 px padding
    assert load_config(TrainerConfig(), tmp_path / "config.yaml") == cfg
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in caplog.text
    else:
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_csv_logger_widens_header_and_truncates_on_resume(tmp_path):
    p = tmp_path / "log.csv"
    log = CSVLogger(p)
    log.write(1, {"loss": 0.5})
    log.write(2, {"loss": 0.25, "extra": 1.0})
    log.write(3, {"loss": 0.125})
    rows = read_csv_log(p)
    assert rows[0] == {"step": "1", "loss": "0.5", "extra": ""} and rows[1]["extra"] == "1.0"
    CSVLogger(p, resume_step=2)
    assert [r["step"] for r in read_csv_log(p)] == ["1", "2"]


def test_make_grid_layout():
    imgs = torch.stack([torch.full((3, 2, 3), float(i) / 10) for i in range(5)])
    g = make_grid(imgs, nrow=3, padding=1, pad_value=1.0)
    assert g.shape == (3, 2 * 3 + 1, 3 * 4 + 1)
    assert torch.all(g[:, 1:3, 1:4] == 0.0) and torch.all(g[:, 1:3, 5:8] == 0.1)
    assert torch.all(g[:, 4:6, 5:8] == 0.4) and torch.all(g[:, 4:6, 9:12] == 1.0)  # empty slot = padding
    assert make_grid(torch.zeros(2, 1, 4, 4)).shape[0] == 3
    with pytest.raises(ValueError, match="expected"):
        make_grid(torch.zeros(2, 2, 4, 4))


# --------------------------------------------------------------------------- sampler, schedule, config


def test_sampler_partitions_like_one_process_and_resumes():
    data = list(range(23))
    full = list(ResumableSampler(data, 1, 0, shuffle=True, seed=5))
    r0 = list(ResumableSampler(data, 2, 0, shuffle=True, seed=5))
    r1 = list(ResumableSampler(data, 2, 1, shuffle=True, seed=5))
    assert len(r0) == len(r1) == 11
    assert r0 == full[0:22:2] and r1 == full[1:22:2]
    s = ResumableSampler(data, 2, 1, shuffle=True, seed=5)
    s.set_position(epoch=0, start=4)
    assert list(s) == r1[4:] and len(s) == 7
    s.set_position(epoch=1)
    e1 = list(s)
    other = ResumableSampler(data, 2, 0, shuffle=True, seed=5)
    other.set_epoch(1)
    assert e1 != r1 and len(set(e1) | set(other)) == 22  # a new order, still a partition


def test_lr_schedules():
    const = ScheduleConfig(name="constant", warmup_steps=4)
    assert [lr_factor(s, const, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = ScheduleConfig(name="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cos, 100) == 1.0 and abs(lr_factor(50, cos, 100) - 0.55) < 1e-12
    assert abs(lr_factor(100, cos, 100) - 0.1) < 1e-12
    step = ScheduleConfig(name="step", step_size=10, gamma=0.5)
    assert [lr_factor(s, step, 100) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_config_from_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("max_steps: 7\noptim:\n  name: adamw\n  lr: 0.001\nschedule:\n  name: cosine\n")
    cfg = load_config(TrainerConfig(), y)
    cfg = apply_overrides(cfg, parse_override("optim.betas=[0.5, 0.9]"))
    cfg = apply_overrides(cfg, parse_override("batch_size=4"))
    assert (cfg.max_steps, cfg.optim.name, cfg.optim.lr, cfg.schedule.name, cfg.optim.betas, cfg.batch_size) == \
        (7, "adamw", 1e-3, "cosine", (0.5, 0.9), 4)
    with pytest.raises(UsageError, match="unknown setting 'optim.lrr'"):
        apply_overrides(cfg, parse_override("optim.lrr=1"))
    with pytest.raises(UsageError, match="optimizer name"):
        apply_overrides(cfg, parse_override("optim.name=rmsprop"))
    with pytest.raises(ValueError, match="split evenly"):
        TrainerConfig(batch_size=6, grad_accum=4).micro_batch(1)


def test_bad_task_outputs_are_clear_errors(tmp_path):
    class NoLoss(MLPTask):
        def training_step(self, modules, batch, ctx):
            return {"mae": torch.tensor(1.0)}

    with pytest.raises(ValueError, match="'loss'"):
        Trainer(NoLoss(), Regression(16), _cfg(tmp_path / "a", max_steps=1, batch_size=4)).fit()

    class NaN(MLPTask):
        def training_step(self, modules, batch, ctx):
            out = super().training_step(modules, batch, ctx)
            return {"loss": out["loss"] * float("nan")}

    with pytest.raises(FloatingPointError, match="step 0"):
        Trainer(NaN(), Regression(16), _cfg(tmp_path / "b", max_steps=1, batch_size=4)).fit()
