"""Face-recognition network for the perceptual identity loss (Deng et al. 2019, §3.2).

The loss compares embeddings of the input photo and of the rendered face with a
pre-trained face-recognition network. No such network ships with the toolkit: the user
gives a weights file. :class:`IResNet` reproduces the "improved ResNet" of ArcFace
(Deng, Guo et al., CVPR 2019) in the module layout of InsightFace's ``arcface_torch``
(``conv1``, ``bn1``, ``prelu``, ``layer1..4`` of pre-activation blocks ``bn1, conv1, bn2,
prelu, conv2, bn3, downsample``, then ``bn2``, ``dropout``, ``fc`` over the flattened 7×7
map and ``features`` = BatchNorm1d), so such a backbone file loads as is; it is also what
Deng et al.'s PyTorch release uses for this loss. Input: 112×112 RGB scaled to [-1, 1].

Tests build the same architecture randomly initialised (:func:`build_identity_net`).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from face3d.regressor.backbones import load_frozen, load_state_file

__all__ = ["IBasicBlock", "IResNet", "IDENTITY_ARCHS", "build_identity_net", "load_identity_net"]

#: blocks per stage of each depth (ArcFace's IResNet family)
IDENTITY_ARCHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """BN → 3×3 conv → BN → PReLU → 3×3 conv (strided) → BN, plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + skip


class IResNet(nn.Module):
    """ArcFace IResNet: (B, 3, 112, 112) in [-1, 1] → (B, ``embedding_dim``) (not normalised)."""

    def __init__(self, layers: tuple[int, int, int, int], embedding_dim: int = 512, input_size: int = 112,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size // 16
        self.fc = nn.Linear(512 * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        down = nn.Sequential(nn.Conv2d(self._inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
        mods = [IBasicBlock(self._inplanes, planes, 2, down)]
        self._inplanes = planes
        mods += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"IResNet expects {self.input_size}² input, got {tuple(x.shape[-2:])}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def build_identity_net(arch: str = "iresnet50", embedding_dim: int = 512) -> IResNet:
    """A randomly initialised identity network (for tests, or to load weights into)."""
    if arch not in IDENTITY_ARCHS:
        raise ValueError(f"unknown identity network {arch!r}; choose one of {', '.join(IDENTITY_ARCHS)}")
    return IResNet(IDENTITY_ARCHS[arch], embedding_dim)


def load_identity_net(source: str | os.PathLike | Mapping[str, Tensor], arch: str = "iresnet50",
                      device: torch.device | str | None = None) -> IResNet:
    """An identity network with weights from ``source`` (a path read with
    ``torch.load(weights_only=True)``, or a state dict; ``module.`` prefixes are stripped),
    frozen (``requires_grad=False``) and in eval mode, as the loss uses it."""
    state = load_state_file(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if "fc.weight" not in state:
        raise ValueError("identity weights lack 'fc.weight' (an arcface_torch IResNet backbone state dict expected)")
    net = build_identity_net(arch, embedding_dim=int(state["fc.weight"].shape[0]))
    return load_frozen(net, state, f"identity ({arch})", device)
