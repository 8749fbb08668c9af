"""Image backbones for the coefficient regressor, with torchvision-compatible parameter names.

torchvision itself is not a dependency (its PyPI wheels are tied to one torch build), so
ResNet-18/34/50 (He et al. 2016, the "v1.5" variant with the stride on the 3×3 convolution
of a bottleneck) and MobileNetV2 (Sandler et al. 2018) are written here. Module names,
parameter shapes and buffer names are those of ``torchvision.models.resnet*`` /
``mobilenet_v2``, so a ``state_dict`` saved from torchvision (ImageNet weights) or from a
network built on it (Deng et al.'s R-Net, whose trunk is torchvision's ResNet-50) loads
with ``load_state_dict`` as is:

* ResNet: ``conv1``, ``bn1``, ``layer1.0.conv1`` …, ``layerK.0.downsample.{0,1}``, ``fc``.
* MobileNetV2: ``features.0.{0,1}`` (stem conv + BN), ``features.1..17.conv.…`` (inverted
  residuals), ``features.18.{0,1}`` (last 1×1 conv + BN), ``classifier.1`` (the Linear; index
  0 is the dropout).

Every backbone exposes, besides torchvision's ``forward`` (logits):

* :meth:`feature_maps` — the 4 top feature maps before the classifier, finest first (ResNet:
  the outputs of ``layer1`` … ``layer4``; MobileNetV2: the last block of each of the
  resolutions 1/4, 1/8, 1/16, 1/32, i.e. ``features[3]``, ``[6]``, ``[13]``, ``[18]``). These
  feed CFR-GAN's perceptual teaching loss (eq. 3).
* :meth:`head_from_map` — global pooling and the classifier applied to the last map.
* :attr:`head` — the final ``nn.Linear``; :meth:`reset_head` replaces it.

No weights are ever downloaded; load them from a path with :func:`load_backbone_state`.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Backbone", "BasicBlock", "Bottleneck", "ResNet", "MobileNetV2", "InvertedResidual",
    "resnet18", "resnet34", "resnet50", "mobilenet_v2", "build_backbone", "BACKBONES",
    "load_backbone_state", "load_state_file",
]


class Backbone(nn.Module):
    """Interface shared by the backbones (see the module doc)."""

    #: channels of the 4 maps returned by :meth:`feature_maps`
    feature_channels: tuple[int, int, int, int]
    #: total stride of each of the 4 maps
    feature_strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def feature_maps(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def head_from_map(self, last_map: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def head(self) -> nn.Linear:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_head(self, out_features: int, zero: bool = False) -> nn.Linear:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised image → (B, out_features), like torchvision's forward."""
        return self.head_from_map(self.feature_maps(x)[-1])


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + skip)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, the "v1.5" placement), 1×1 expand ×4, residual (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + skip)


class ResNet(Backbone):
    """ResNet with torchvision's module names; ``layers`` blocks per stage."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"a ResNet has 4 stages, got layers={list(layers)}")
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.feature_channels = tuple(c * block.expansion for c in (64, 128, 256, 512))  # type: ignore[assignment]
        # torchvision's initialisation (He et al. 2015 for convolutions, BN as identity)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(_conv1x1(self._inplanes, out, stride), nn.BatchNorm2d(out))
        mods = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = out
        mods += [block(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Outputs of layer1..layer4: (B, C_k, H/4·2^-k, W/4·2^-k), C = :attr:`feature_channels`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def head_from_map(self, last_map: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(last_map), 1))

    @property
    def head(self) -> nn.Linear:
        return self.fc

    def reset_head(self, out_features: int, zero: bool = False) -> nn.Linear:
        self.fc = nn.Linear(self.fc.in_features, out_features).to(self.fc.weight)
        if zero:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
        return self.fc


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going 10% below ``v`` (MobileNet rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class ConvBNReLU6(nn.Sequential):
    """conv → BN → ReLU6; indices 0, 1, 2 as torchvision's ``Conv2dNormActivation``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand (if t ≠ 1), 3×3 depthwise, 1×1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


#: (t expansion, c channels, n repeats, s stride of the first) — Sandler et al. 2018, Table 2
_MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(Backbone):
    """MobileNetV2 with torchvision's module names (``features``, ``classifier``)."""

    #: indices in ``features`` whose outputs are the 4 maps (resolutions 1/4, 1/8, 1/16, 1/32)
    TAPS = (3, 6, 13, 18)

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in _MOBILENET_V2_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))
        chans = []
        for i in self.TAPS:
            m = self.features[i]
            chans.append(m.out_channels if isinstance(m, InvertedResidual) else last)
        self.feature_channels = tuple(chans)  # type: ignore[assignment]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Outputs of ``features[3]``, ``[6]``, ``[13]``, ``[18]`` (strides 4, 8, 16, 32)."""
        maps = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.TAPS:
                maps.append(x)
        return maps

    def head_from_map(self, last_map: Tensor) -> Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(last_map, 1), 1))

    @property
    def head(self) -> nn.Linear:
        return self.classifier[1]

    def reset_head(self, out_features: int, zero: bool = False) -> nn.Linear:
        old = self.classifier[1]
        self.classifier[1] = nn.Linear(old.in_features, out_features).to(old.weight)
        if zero:
            nn.init.zeros_(self.classifier[1].weight)
            nn.init.zeros_(self.classifier[1].bias)
        return self.classifier[1]


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2), 11.7 M parameters with the 1000-way fc."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3): the trunk of Deng et al.'s R-Net."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2, width 1.0 (3.5 M parameters with the 1000-way classifier)."""
    return MobileNetV2(num_classes)


BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2,
}


def build_backbone(name: str, num_classes: int = 1000) -> Backbone:
    """A randomly initialised backbone by name (see :data:`BACKBONES`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](num_classes)


def load_backbone_state(backbone: Backbone, source: Mapping[str, Tensor] | str | os.PathLike,
                        skip_head: bool = True) -> list[str]:
    """Load torchvision-layout weights (a state dict, or a ``.pth`` path read with
    ``torch.load(weights_only=True)``) into ``backbone``.

    ``skip_head`` leaves the classifier alone (ImageNet's 1000-way fc does not fit a regressor).
    Every other parameter and buffer must be present with its shape; returns the names of the
    ignored extra keys. Raises ``ValueError`` naming the first missing or mis-shaped key.
    """
    state = load_state_file(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    head_prefix = "fc." if isinstance(backbone, ResNet) else "classifier.1."
    own = backbone.state_dict()
    wanted = {k: v for k, v in own.items() if not (skip_head and k.startswith(head_prefix))}
    for k, v in wanted.items():
        if k not in state:
            raise ValueError(f"backbone weights lack '{k}' ({type(backbone).__name__} in torchvision layout expected)")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"backbone weight '{k}' has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    backbone.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return sorted(k for k in state if k not in own and not k.startswith(head_prefix))


def load_frozen(net: nn.Module, state: Mapping[str, Tensor], what: str,
                device: torch.device | str | None = None) -> nn.Module:
    """Load ``state`` into ``net`` exactly (every key, every shape) and freeze it
    (``requires_grad=False``, eval mode) on ``device``: the fixed feature networks of the
    losses (identity, perceptual). Raises ``ValueError`` "``what`` weights do not fit: …" in
    one line on any mismatch."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{what} weights do not fit: {str(exc).strip().splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ValueError(f"{what} weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    net.requires_grad_(False).eval()
    return net.to(device)


def load_state_file(path: str | os.PathLike) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a clear error for a missing file."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"weights file not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in several types
        raise ValueError(f"cannot read weights from {p}: {exc}") from None
