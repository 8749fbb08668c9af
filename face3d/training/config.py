"""Settings of the generic trainer, as dataclasses overridable from YAML and ``--set key=value``
(:mod:`face3d.config`: ``load_config``, ``parse_override``, ``apply_overrides``).

Defaults are those of the first model trained on this foundation, Deng et al. 2019's R-Net
(paper 003 §3.1 builds on it): Adam, learning rate 1e-4, batch size 5, 500k iterations,
constant schedule. Every trainer built on :class:`~face3d.training.trainer.Trainer` ships its
own config with its paper's numbers (e.g. AdamW for CFR-GAN, TTUR rates for FD-StackGAN).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["OptimizerConfig", "ScheduleConfig", "TrainerConfig", "resolve_device", "resolve_amp",
           "resolve_backend"]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "step")
_AMP = ("auto", "off", "fp16", "bf16")


@dataclass
class OptimizerConfig:
    """One optimiser. ``name``: ``adam``, ``adamw`` or ``sgd``; ``momentum`` is SGD's only."""

    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in _OPTIMIZERS:
            raise ValueError(f"optimizer name must be one of {', '.join(_OPTIMIZERS)}, got {self.name!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, a function of the optimiser's step count only.

    * ``warmup_steps``: linear ramp from ``lr/warmup_steps`` to ``lr`` over the first steps.
    * ``name``: ``constant``; ``cosine`` (from ``lr`` down to ``min_lr_ratio·lr`` at
      ``max_steps``); ``step`` (× ``gamma`` every ``step_size`` steps after the warm-up).
    """

    name: str = "constant"
    warmup_steps: int = 0
    step_size: int = 100_000
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in _SCHEDULES:
            raise ValueError(f"schedule name must be one of {', '.join(_SCHEDULES)}, got {self.name!r}")
        if self.warmup_steps < 0 or self.step_size < 1:
            raise ValueError("warmup_steps must be >= 0 and step_size >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be within 0..1, got {self.min_lr_ratio}")


@dataclass
class TrainerConfig:
    """Settings of :class:`~face3d.training.trainer.Trainer`.

    Attributes:
        max_steps: optimiser steps to train for (one step = ``grad_accum`` micro-batches).
        batch_size: samples per optimiser step over all processes; each of the W processes
            sees ``batch_size / W`` per step in ``grad_accum`` micro-batches of
            ``batch_size / (W · grad_accum)`` (must divide exactly).
        grad_accum: micro-batches accumulated per optimiser step.
        optim: default optimiser (a task may give each of its optimisers its own).
        schedule: default learning-rate schedule.
        grad_clip: clip each optimiser's gradient to this global L2 norm (0: off).
        amp: mixed precision: ``auto`` (fp16 with a GradScaler on CUDA, off on the CPU),
            ``off``, ``fp16`` (CUDA only), ``bf16`` (autocast, no scaler; CPU or CUDA).
        log_every, ckpt_every, sample_every: period in steps of the CSV/TensorBoard row,
            the checkpoint and the PNG sample grid (0: never; a checkpoint is always
            written at the end).
        keep_checkpoints: how many of the most recent checkpoints to keep.
        sample_count: images in the sample grid (taken from the start of the dataset).
        out_dir: run folder (``checkpoints/``, ``log.csv``, ``tb/``, ``samples/``).
        resume: ``auto`` (the latest checkpoint of ``out_dir`` if there is one), ``never``,
            or a checkpoint file / folder.
        seed: seeds model initialisation (the same on every process) and then each
            process's random streams (``seed + rank``) and the data order.
        shuffle: shuffle the data each epoch (order a function of ``seed`` and the epoch).
        num_workers: DataLoader worker processes (0: load in the training process).
        device: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``) or a
            torch device string.
        ddp_backend: ``auto`` (``nccl`` on CUDA, ``gloo`` on the CPU), ``gloo`` or ``nccl``.
        find_unused_parameters: passed to DistributedDataParallel (tasks whose modules have
            parameters that some steps do not use).
        progress: tqdm bar on rank 0.
        tensorboard: also log to TensorBoard (``out_dir/tb``) when the package is installed.
        detect_anomaly: raise on a non-finite loss instead of letting the step run (fp32/bf16;
            with fp16 the GradScaler skips such steps itself).
    """

    max_steps: int = 500_000
    batch_size: int = 5
    grad_accum: int = 1
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float = 0.0
    amp: str = "auto"
    log_every: int = 50
    ckpt_every: int = 5000
    sample_every: int = 1000
    keep_checkpoints: int = 3
    sample_count: int = 16
    out_dir: str = "runs/train"
    resume: str = "auto"
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    device: str = "auto"
    ddp_backend: str = "auto"
    find_unused_parameters: bool = False
    progress: bool = True
    tensorboard: bool = True
    detect_anomaly: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be at least 1")
        if self.amp not in _AMP:
            raise ValueError(f"amp must be one of {', '.join(_AMP)}, got {self.amp!r}")
        if self.ddp_backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"ddp_backend must be auto, gloo or nccl, got {self.ddp_backend!r}")
        if min(self.log_every, self.ckpt_every, self.sample_every, self.num_workers, self.sample_count) < 0:
            raise ValueError("log_every, ckpt_every, sample_every, num_workers and sample_count must be >= 0")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be at least 1")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be non-negative, got {self.grad_clip}")

    def micro_batch(self, world_size: int) -> int:
        """Samples per micro-batch on one process."""
        per = self.batch_size // (world_size * self.grad_accum)
        if per * world_size * self.grad_accum != self.batch_size or per < 1:
            raise ValueError(f"batch_size {self.batch_size} must split evenly over {world_size} process(es) "
                             f"× grad_accum {self.grad_accum}")
        return per


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for but no CUDA device is available; use cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None: full precision) for setting ``amp`` on ``device``."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 or off on the CPU")
        return torch.float16
    return torch.bfloat16


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` → ``nccl`` on CUDA, ``gloo`` otherwise."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend
