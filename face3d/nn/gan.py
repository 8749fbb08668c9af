"""Adversarial losses shared by the generators' trainers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gan_loss"]


def gan_loss(logits: Tensor, real: bool) -> Tensor:
    """The log-loss of the GAN objective on discriminator logits (``−log σ`` for real,
    ``−log(1 − σ)`` for fake), averaged over every element (batch and patches)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
