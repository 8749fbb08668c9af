"""What a model plugs into :class:`~face3d.training.trainer.Trainer`: a :class:`TrainingTask`.

The design, in one paragraph: a task owns its networks and losses; the trainer owns
everything else (devices, distribution, precision, accumulation, optimisers, schedules,
checkpoints, logs). A task declares **named optimisers** (:meth:`TrainingTask.optimizers`),
and each optimiser is one **phase** of a training step. For every phase, in order, the trainer
calls :meth:`TrainingTask.training_step` on each micro-batch of the step, back-propagates the
returned ``"loss"`` *into that optimiser's parameters only* (``torch.autograd.backward(...,
inputs=params)``), and then steps that optimiser (unscale, clip, step, zero the gradients,
advance its schedule) before the next phase starts.

* A regressor has one optimiser, ``{"model": ...}``: one phase per step.
* A GAN has ``{"D": ..., "G": ...}``: the D phase computes the discriminator loss on every
  micro-batch and updates D; the G phase then sees the *updated* D, computes the generator
  loss and updates G — the alternating update of the papers, exactly as with one large
  batch, whatever ``grad_accum`` is. Because each backward reaches only its own optimiser's
  parameters, the G loss leaves no stray gradients in D (no ``requires_grad`` toggling), and
  under DistributedDataParallel only the phase's own modules synchronise.
* :meth:`TrainingTask.phases` may choose the phases per step (e.g. 5 D steps per G step for
  WGAN critics); the micro-batches of a step are drawn once and shared by its phases.

``training_step`` receives the modules as the trainer runs them (wrapped in
DistributedDataParallel when there are several processes): call them, do not keep the
objects :meth:`TrainingTask.build` returned for training. :meth:`TrainingTask.sample` gets
the plain modules, in eval mode, without gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from face3d.training.config import OptimizerConfig, ScheduleConfig

__all__ = ["TrainingTask", "OptimizerSpec", "StepContext"]


@dataclass
class OptimizerSpec:
    """One named optimiser of a task.

    Attributes:
        params: parameters, or torch param-group dicts (``{"params": [...], "lr": ...}``;
            a group's ``lr`` overrides the optimiser's and follows the same schedule).
        optim: optimiser settings; None: the trainer config's ``optim``.
        schedule: learning-rate schedule; None: the trainer config's ``schedule``.
    """

    params: Iterable[Union[Tensor, dict[str, Any]]]
    optim: Optional[OptimizerConfig] = None
    schedule: Optional[ScheduleConfig] = None


@dataclass(frozen=True)
class StepContext:
    """Where a call of :meth:`TrainingTask.training_step` stands.

    Attributes:
        step: index of the optimiser step being computed (0 for the first).
        phase: name of the optimiser whose loss is asked for.
        micro: index of the micro-batch within the step (0 … grad_accum − 1).
        grad_accum: micro-batches per step.
        epoch: data epoch the micro-batch comes from.
        device: the training device.
        rank, world_size: this process and the number of processes.
    """

    step: int
    phase: str
    micro: int
    grad_accum: int
    epoch: int
    device: torch.device
    rank: int = 0
    world_size: int = 1


class TrainingTask:
    """Base class of training tasks; subclasses implement the first three methods."""

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        """Create the networks (called once, with the same seed on every process).

        Returns:
            name → module. Modules whose parameters appear in an optimiser are trained
            (put in train mode each step, wrapped for DDP, checkpointed); the others (frozen
            teachers, identity networks) are left in the mode the task set and are
            checkpointed too.
        """
        raise NotImplementedError

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        """Named optimisers, in phase order (``modules`` are the plain modules of :meth:`build`)."""
        raise NotImplementedError

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Losses of phase ``ctx.phase`` on one micro-batch (already on ``ctx.device``).

        Returns:
            A dict with ``"loss"`` (a scalar tensor, the mean over the micro-batch, to be
            minimised by optimiser ``ctx.phase``) and any other scalars to log. Do not call
            ``backward``: the trainer does (scaled for AMP and accumulation).
        """
        raise NotImplementedError

    def phases(self, step: int) -> Optional[list[str]]:
        """Optimisers to run at ``step`` (None: all of them, in declaration order)."""
        return None

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        """Images for the sample sheet: ``(B, 3, H, W)`` (tiled by the trainer) or one
        ``(3, H, W)`` grid, values in [0, 1]; None for no sheet. ``batch`` is the fixed
        sample batch (the first ``sample_count`` items of the dataset)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Extra state of the task to checkpoint (tensors, numbers, strings only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
