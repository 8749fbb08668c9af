"""The generic trainer every learned part of the toolkit uses.

``Trainer(task, dataset, config).fit()`` trains a :class:`~face3d.training.task.TrainingTask`
(the task/phase design is described there) and provides:

* **Devices and precision** — ``config.device`` (``auto``: CUDA when present); autocast with
  a :class:`torch.amp.GradScaler` per optimiser for fp16 on CUDA; bf16 autocast on request;
  fp32 on the CPU by default.
* **Distribution** — started with ``torchrun --nproc_per_node=N script.py`` (or any launcher
  that sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``), the trainer
  initialises the process group (``nccl`` on CUDA, ``gloo`` on the CPU), wraps each trained
  module in :class:`~torch.nn.parallel.DistributedDataParallel` and gives each process its
  share of every batch (:class:`~face3d.training.sampler.ResumableSampler`). Gradients are
  averaged, so W processes with ``batch_size`` B take the same steps as one process with B.
  Only rank 0 logs, draws samples and writes checkpoints.
* **Gradient accumulation** — ``grad_accum`` micro-batches per optimiser step, losses divided
  by ``grad_accum`` and DDP synchronisation only on the last micro-batch (``no_sync``).
* **Checkpoints** (:mod:`face3d.training.checkpoint`) — every ``ckpt_every`` steps and at the
  end: modules, optimisers, schedules, grad scalers, the step, the data position (epoch and
  samples consumed), every process's RNG states, the config and the task's own state. A
  resumed run continues bit-for-bit where the interrupted one was (same CPU, same world
  size, ``num_workers=0`` or augmentations that draw from the index; see below).
* **Logs** — ``log.csv`` (one row per ``log_every`` steps: the mean of each loss over those
  steps and all processes, the learning rates, samples/s) and TensorBoard (``tb/``); a tqdm
  bar; sample sheets ``samples/step_XXXXXXXX.png`` every ``sample_every`` steps.

Determinism: the data order is a function of (seed, epoch); model initialisation uses
``seed`` on every process, training randomness (dropout, augmentation in the training
process) continues from per-process streams saved in each checkpoint. DataLoader workers
(``num_workers > 0``) are seeded per epoch, so randomness drawn *inside workers* restarts on
resume — datasets that augment in workers and need exact resumption should seed from the
sample index and epoch.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from face3d.config import config_to_dict
from face3d.imageio import save_image_atomic
from face3d.io_utils import atomic_write
from face3d.training.checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from face3d.training.config import (OptimizerConfig, ScheduleConfig, TrainerConfig, resolve_amp,
                                    resolve_backend, resolve_device)
from face3d.training.grid import make_grid
from face3d.training.logs import CSVLogger, TensorBoardLogger
from face3d.training.sampler import ResumableSampler
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask

__all__ = ["Trainer", "lr_factor", "build_optimizer", "dist_env", "CHECKPOINT_FORMAT"]

log = logging.getLogger("face3d.training")

CHECKPOINT_FORMAT = "face3d.training/1"


def dist_env() -> tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from the launcher's environment (1, 0, 0 without)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def lr_factor(step: int, schedule: ScheduleConfig, max_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    w = schedule.warmup_steps
    if w > 0 and step < w:
        return (step + 1) / w
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        return schedule.gamma ** ((step - w) // schedule.step_size)
    span = max(1, max_steps - w)
    progress = min(1.0, (step - w) / span)
    lo = schedule.min_lr_ratio
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: Any, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names over ``params`` (tensors or param-group dicts)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


class Trainer:
    """Trains ``task`` on ``dataset`` with ``config``; see the module doc.

    Args:
        task: the model, its losses and optimisers.
        dataset: a map-style dataset; items are collated with ``collate_fn``. A dataset with
            a ``prepare()`` method (e.g. :class:`~face3d.training.data.PhotoFolderDataset`)
            is prepared on rank 0 first, then on the other ranks (which then read its cache).
        config: :class:`~face3d.training.config.TrainerConfig`.
        collate_fn: batch collation (default :func:`torch.utils.data.default_collate`).

    After :meth:`fit`, :attr:`step` is the number of optimiser steps done, :attr:`modules`
    the plain trained modules.
    """

    def __init__(self, task: TrainingTask, dataset: Dataset, config: Optional[TrainerConfig] = None,
                 collate_fn=None) -> None:
        self.task = task
        self.dataset = dataset
        self.config = config or TrainerConfig()
        self.collate_fn = collate_fn or default_collate
        self.step = 0
        self.epoch = 0
        self.modules: dict[str, nn.Module] = {}
        self.out_dir = Path(self.config.out_dir)

    # ------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ setup
    def _setup_distributed(self) -> None:
        cfg = self.config
        self.world_size, self.rank, self.local_rank = dist_env()
        self.device = resolve_device(cfg.device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            backend = resolve_backend(cfg.ddp_backend, self.device)
            dist.init_process_group(backend=backend, init_method="env://", world_size=self.world_size,
                                    rank=self.rank)
        if dist.is_initialized():
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _seed(self, seed: int) -> None:
        import random

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _setup_model(self) -> None:
        cfg = self.config
        self._seed(cfg.seed)  # identical initialisation on every process
        plain = self.task.build(self.device)
        if not plain:
            raise ValueError("task.build() returned no modules")
        self.modules = {k: m.to(self.device) for k, m in plain.items()}
        specs = self.task.optimizers(self.modules)
        if not specs:
            raise ValueError("task.optimizers() returned no optimisers")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self._params: dict[str, list[torch.Tensor]] = {}
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        for name, spec in specs.items():
            if not isinstance(spec, OptimizerSpec):
                raise TypeError(f"task.optimizers()[{name!r}] must be an OptimizerSpec")
            ocfg = spec.optim or cfg.optim
            scfg = spec.schedule or cfg.schedule
            opt = build_optimizer(list(spec.params), ocfg)
            params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            if not params:
                raise ValueError(f"optimiser {name!r} has no trainable parameters")
            self.optimizers[name] = opt
            self._params[name] = params
            self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
                opt, functools.partial(lr_factor, schedule=scfg, max_steps=cfg.max_steps))
            self.scalers[name] = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        trained = {id(p) for ps in self._params.values() for p in ps}
        self._trained = [k for k, m in self.modules.items() if any(id(p) in trained for p in m.parameters())]
        self.run_modules: dict[str, nn.Module] = dict(self.modules)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            for k in self._trained:
                self.run_modules[k] = nn.parallel.DistributedDataParallel(
                    self.modules[k], device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
        # distinct training streams per process, the same for every run of this config
        self._seed((cfg.seed * 1_000_003 + 7919 * (self.rank + 1)) % 2**63)

    def _setup_data(self) -> None:
        cfg = self.config
        self.micro = cfg.micro_batch(self.world_size)
        self.sampler = ResumableSampler(self.dataset, self.world_size, self.rank, shuffle=cfg.shuffle, seed=cfg.seed)
        if self.sampler.num_samples < self.micro:
            raise ValueError(f"the dataset ({len(self.dataset)} samples) is too small for a micro-batch of "
                             f"{self.micro} on each of {self.world_size} process(es)")
        self.samples_in_epoch = 0  # this process's samples consumed in the current epoch
        self._iter: Optional[Iterator] = None

    def _loader(self) -> Iterator:
        cfg = self.config
        self.sampler.set_position(self.epoch, self.samples_in_epoch)
        # the loader draws its workers' base seed from this generator (not the global RNG),
        # so creating an iterator at a resume point does not shift the training streams
        g = torch.Generator()
        g.manual_seed((cfg.seed * 1_000_003 + self.epoch * 7919 + self.rank * 104_729 + 1) % 2**63)
        loader = DataLoader(self.dataset, batch_size=self.micro, sampler=self.sampler, drop_last=True,
                            num_workers=cfg.num_workers, collate_fn=self.collate_fn, generator=g,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        return iter(loader)

    def _next_batch(self) -> tuple[Any, int]:
        while True:
            if self._iter is None:
                self._iter = self._loader()
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.samples_in_epoch = 0
                continue
            epoch = self.epoch
            self.samples_in_epoch += self.micro
            return batch, epoch

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The full training state (gathers every process's RNG state; call on all ranks)."""
        rng = capture_rng_state()
        if self.distributed:
            states: list[Any] = [None] * self.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch * self.world_size,
            "world_size": self.world_size,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "rng": states,
            "log_window": {k: [float(v[0]), int(v[1])] for k, v in self._window.items()},
            "log_window_steps": self._window_steps,
            "config": config_to_dict(self.config),
            "task": self.task.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (modules, optimisers, …, RNG, data position)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a trainer checkpoint (format {state.get('format')!r})")
        for k, m in self.modules.items():
            if k not in state["modules"]:
                raise ValueError(f"checkpoint has no module {k!r} (has {', '.join(state['modules'])})")
            m.load_state_dict(state["modules"][k])
        for group in ("optimizers", "schedulers", "scalers"):
            mine = getattr(self, group)
            for k, obj in mine.items():
                if k not in state[group]:
                    raise ValueError(f"checkpoint has no {group[:-1]} {k!r}")
                obj.load_state_dict(state[group][k])
        self.task.load_state_dict(state.get("task", {}))
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        consumed = int(state["samples_in_epoch"])
        self.samples_in_epoch = min(consumed // self.world_size, self.sampler.num_samples)
        self._iter = None
        self._window = {k: [torch.tensor(v[0], dtype=torch.float64), int(v[1])]
                        for k, v in state.get("log_window", {}).items()}
        self._window_steps = int(state.get("log_window_steps", 0))
        rng = state["rng"]
        if int(state.get("world_size", 1)) == self.world_size and len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            log.warning("checkpoint was written by %s process(es), this run has %d: random streams re-seeded",
                        state.get("world_size"), self.world_size)
            self._seed((self.config.seed * 1_000_003 + 7919 * (self.rank + 1) + self.step) % 2**63)
        saved = state.get("config", {})
        now = config_to_dict(self.config)
        diff = sorted(k for k in now if k in saved and saved[k] != now[k] and k not in ("resume", "out_dir"))
        if diff and self.is_main:
            log.warning("resuming with settings that differ from the checkpoint's: %s", ", ".join(diff))

    def save_checkpoint(self) -> Optional[Path]:
        """Write a checkpoint of the current state (rank 0 writes; every rank must call)."""
        state = self.state_dict()
        path = None
        if self.is_main:
            path = self.ckpt.save(self.step, state)
        self._barrier()
        self._last_ckpt_step = self.step
        return path

    def _resume(self) -> Optional[int]:
        what = self.config.resume
        if what == "never":
            return None
        src = self.ckpt.folder if what == "auto" else Path(what)
        if what == "auto" and self.ckpt.latest() is None:
            return None
        state = load_checkpoint(src, map_location=self.device)
        self.load_state_dict(state)
        if self.is_main:
            log.info("resumed from step %d (%s)", self.step, src)
        return self.step

    # ------------------------------------------------------------------ training
    def _no_sync(self, skip_sync: bool):
        stack = contextlib.ExitStack()
        if skip_sync and self.distributed:
            for k in self._trained:
                stack.enter_context(self.run_modules[k].no_sync())
        return stack

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self) -> None:
        cfg, n = self.config, self.config.grad_accum
        micro = [self._next_batch() for _ in range(n)]
        names = self.task.phases(self.step) or list(self.optimizers)
        multi = len(self.optimizers) > 1
        for k in self._trained:
            self.modules[k].train()
        for phase in names:
            if phase not in self.optimizers:
                raise ValueError(f"task.phases() named {phase!r}; optimisers are {', '.join(self.optimizers)}")
            opt, scaler, params = self.optimizers[phase], self.scalers[phase], self._params[phase]
            for i, (batch, epoch) in enumerate(micro):
                ctx = StepContext(self.step, phase, i, n, epoch, self.device, self.rank, self.world_size)
                batch = _to_device(batch, self.device)
                with self._no_sync(i < n - 1):
                    with self._autocast():
                        losses = self.task.training_step(self.run_modules, batch, ctx)
                    if not isinstance(losses, Mapping) or "loss" not in losses:
                        raise ValueError("task.training_step() must return a dict with a 'loss' entry")
                    loss = losses["loss"]
                    if cfg.detect_anomaly and not scaler.is_enabled() and not bool(torch.isfinite(loss.detach())):
                        raise FloatingPointError(f"step {self.step}, phase {phase!r}: the loss is {float(loss.detach())}")
                    scaled = loss.float() / n
                    if scaler.is_enabled():
                        scaled = scaler.scale(scaled)
                    torch.autograd.backward(scaled, inputs=params)
                for key, v in losses.items():
                    name = f"{phase}/{key}" if multi else key
                    v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                    acc = self._window.setdefault(name, [torch.zeros((), dtype=torch.float64), 0])
                    acc[0] = acc[0].to(v.device) + v.double() / n
                    if i == n - 1:
                        acc[1] += 1
            if scaler.is_enabled():
                scaler.unscale_(opt)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)  # a plain opt.step() when the scaler is disabled
            scaler.update()
            opt.zero_grad(set_to_none=True)
            self.schedulers[phase].step()
        self._window_steps += 1

    def _log(self) -> dict[str, float]:
        keys = sorted(self._window)
        if keys:
            sums = torch.stack([self._window[k][0].to(self.device) for k in keys]).double()
            counts = torch.tensor([self._window[k][1] for k in keys], dtype=torch.float64, device=self.device)
            if self.distributed:
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            means = (sums / counts.clamp_min(1)).tolist()
        else:
            means = []
        row = {"epoch": self.epoch}
        row.update({k: float(v) for k, v in zip(keys, means)})
        for name, opt in self.optimizers.items():
            row["lr" if len(self.optimizers) == 1 else f"lr/{name}"] = float(opt.param_groups[0]["lr"])
        now = time.perf_counter()
        row["samples_per_s"] = self._window_steps * self.config.batch_size / max(now - self._window_t0, 1e-9)
        self._window, self._window_steps, self._window_t0 = {}, 0, now
        if self.is_main:
            self.csv.write(self.step, row)
            self.tb.scalars(self.step, {k: v for k, v in row.items() if k != "epoch"})
        return row

    def _sample_batch(self) -> Any:
        n = min(self.config.sample_count, len(self.dataset))
        return self.collate_fn([self.dataset[i] for i in range(n)]) if n > 0 else None

    def _write_samples(self) -> Optional[Path]:
        if not self.is_main or self._samples is None:
            return None
        rng = capture_rng_state()  # sampling must not move the training streams
        modes = {k: m.training for k, m in self.modules.items()}
        try:
            for m in self.modules.values():
                m.eval()
            with torch.no_grad(), self._autocast():
                images = self.task.sample(self.modules, _to_device(self._samples, self.device))
        finally:
            for k, m in self.modules.items():
                m.train(modes[k])
            restore_rng_state(rng)
        if images is None:
            return None
        grid = make_grid(images.float()) if images.ndim == 4 else images.float()
        path = self.out_dir / "samples" / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_atomic(path, grid.clamp(0, 1).cpu())
        self.tb.image("samples", grid, self.step)
        return path

    def fit(self) -> "Trainer":
        """Train until ``config.max_steps`` (resuming first when ``config.resume`` says so)."""
        cfg = self.config
        self._setup_distributed()
        pbar = None
        self.csv = self.tb = None
        try:
            if hasattr(self.dataset, "prepare"):
                if self.is_main:
                    self.dataset.prepare()
                self._barrier()
                if not self.is_main:
                    self.dataset.prepare()
            self._setup_data()
            self._setup_model()
            self._window: dict[str, list] = {}
            self._window_steps = 0
            self._last_ckpt_step = -1
            self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep=cfg.keep_checkpoints)
            resumed = self._resume()
            if resumed is not None:
                self._last_ckpt_step = resumed
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                with atomic_write(self.out_dir / "config.yaml") as tmp:
                    tmp.write_text(_yaml(config_to_dict(cfg)))
            self.csv = CSVLogger(self.out_dir / "log.csv", resume_step=resumed) if self.is_main else None
            self.tb = TensorBoardLogger(self.out_dir / "tb", resume_step=resumed,
                                        enabled=cfg.tensorboard and self.is_main)
            self._samples = self._sample_batch() if cfg.sample_every > 0 and self.is_main else None
            self._window_t0 = time.perf_counter()
            if self.is_main and cfg.progress:
                from tqdm.auto import tqdm

                pbar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
            while self.step < cfg.max_steps:
                self._train_step()
                self.step += 1
                if pbar is not None:
                    pbar.update(1)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    row = self._log()
                    if pbar is not None:
                        pbar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if "loss" in k}, refresh=False)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._write_samples()
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
            if self._last_ckpt_step != self.step:
                self.save_checkpoint()
        finally:
            if pbar is not None:
                pbar.close()
            if self.tb is not None:
                self.tb.close()
            # The process group is left for the process's lifetime, not destroyed here: under
            # torchrun a second init_process_group in the same process reuses the launcher's
            # store, whose keys from the first group are still there, and the ranks can then
            # wait for each other forever (seen: 1 run in 3 hung in DDP's first collective).
        return self


def _yaml(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False)
