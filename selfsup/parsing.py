"""Face parsing for Swap-R&R's occlusion mask (CFR-GAN §3.2: "we add masks for eyeglasses and hairs
and subtract eyes area using BiseNet [48]").

Seed paper ``cfr_gan_swap_rr.txt`` §3.2 uses a face parser only in an auxiliary role: a parser
cannot recognise objects it was not trained on (hands, cups), so eq. 5 finds the occluders and
the parser adds glasses and hair and removes the eyes. BiSeNet is Yu et al., "BiSeNet: Bilateral
Segmentation Network for Real-time Semantic Segmentation", ECCV 2018: a *spatial path* (three
stride-2 convolutions keeping 1/8 resolution detail), a *context path* (a ResNet-18 trunk with
attention-refinement modules on its 1/16 and 1/32 maps and a global-average context), and a
*feature-fusion module* joining the two, followed by a classifier upsampled to the input.

Classes follow the 19-label CelebAMask-HQ convention that public face parsers use
(:data:`CLASS_NAMES`). No weights ship or download: :func:`load_face_parser` reads a state dict
of this architecture from a path (``torch.load(weights_only=True)``); tests use random weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from face3d.regressor.backbones import resnet18

__all__ = ["CLASS_NAMES", "EYE_CLASSES", "OCCLUDER_CLASSES", "FaceParserConfig", "FaceParser", "BiSeNet",
           "load_face_parser"]

#: CelebAMask-HQ labels, index = class id
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_glasses", "l_ear", "r_ear",
               "ear_ring", "nose", "mouth", "u_lip", "l_lip", "neck", "necklace", "cloth", "hair", "hat")
#: removed from the occlusion mask
EYE_CLASSES = (4, 5)
#: added to the occlusion mask (glasses, hair; CFR-GAN §3.2)
OCCLUDER_CLASSES = (6, 17)


@dataclass
class FaceParserConfig:
    """BiSeNet settings: ``num_classes`` (19), ``input_size`` (the parser's input side; 512 for the
    public CelebAMask-HQ parsers), ``mid_channels`` of the fused features (256 in BiSeNet)."""

    num_classes: int = 19
    input_size: int = 512
    mid_channels: int = 256


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _AttentionRefinement(nn.Module):
    """ARM: a 3×3 conv, then channel weights from its global average (BiSeNet §3.2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.attention = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        f = self.conv(x)
        return f * self.attention(F.adaptive_avg_pool2d(f, 1))


class _FeatureFusion(nn.Module):
    """FFM: concatenate spatial and context features, 1×1 conv, SE-style re-weighting (BiSeNet §3.3)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout, k=1)
        self.attention = nn.Sequential(nn.Conv2d(cout, cout // 4, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(cout // 4, cout, 1), nn.Sigmoid())

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        f = self.conv(torch.cat([spatial, context], 1))
        return f + f * self.attention(F.adaptive_avg_pool2d(f, 1))


class BiSeNet(nn.Module):
    """BiSeNet for face parsing: (B, 3, H, W) ImageNet-normalised → logits (B, num_classes, H, W)."""

    def __init__(self, config: FaceParserConfig) -> None:
        super().__init__()
        mid = config.mid_channels
        self.spatial = nn.Sequential(_ConvBNReLU(3, 64, 7, 2), _ConvBNReLU(64, 64, 3, 2), _ConvBNReLU(64, 64, 3, 2),
                                     _ConvBNReLU(64, 128, 1))
        self.trunk = resnet18()
        self.arm16 = _AttentionRefinement(256, 128)
        self.arm32 = _AttentionRefinement(512, 128)
        self.global_context = _ConvBNReLU(512, 128, k=1)
        self.up32 = _ConvBNReLU(128, 128)
        self.up16 = _ConvBNReLU(128, 128)
        self.fusion = _FeatureFusion(256, mid)
        self.head = nn.Sequential(_ConvBNReLU(mid, mid), nn.Conv2d(mid, config.num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        t = self.trunk
        f = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        f8 = t.layer2(t.layer1(f))
        f16 = t.layer3(f8)
        f32 = t.layer4(f16)
        ctx = self.global_context(F.adaptive_avg_pool2d(f32, 1))
        c32 = self.arm32(f32) + ctx
        c32 = self.up32(F.interpolate(c32, size=f16.shape[-2:], mode="nearest"))
        c16 = self.arm16(f16) + c32
        c16 = self.up16(F.interpolate(c16, size=f8.shape[-2:], mode="nearest"))
        sp = self.spatial(x)
        fused = self.fusion(sp, F.interpolate(c16, size=sp.shape[-2:], mode="bilinear", align_corners=False))
        return F.interpolate(self.head(fused), size=(h, w), mode="bilinear", align_corners=False)


class FaceParser(nn.Module):
    """A face parser behind one interface: :meth:`parse` turns sRGB crops into label maps.

    ``net`` maps ImageNet-normalised (B, 3, s, s) images (s = ``config.input_size``) to logits.
    """

    def __init__(self, config: FaceParserConfig | None = None, net: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config or FaceParserConfig()
        self.net = net if net is not None else BiSeNet(self.config)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        """Logits (B, num_classes, H, W) for sRGB crops (B, 3, H, W) in [0, 1]."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        s = self.config.input_size
        x = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False) if (h, w) != (s, s) else image
        logits = self.net((x - self.mean.to(x)) / self.std.to(x))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def parse(self, image: Tensor) -> Tensor:
        """Label map (B, 1, H, W) long of class ids (:data:`CLASS_NAMES`)."""
        return self.forward(image).argmax(1, keepdim=True)


def load_face_parser(path: Union[str, os.PathLike], config: FaceParserConfig | None = None,
                     device: Union[str, torch.device, None] = None) -> FaceParser:
    """A :class:`FaceParser` with BiSeNet weights from ``path`` (a state dict of :class:`BiSeNet`, or
    of :class:`FaceParser`), in eval mode.

    Raises:
        FileNotFoundError: no file; ValueError: the weights do not fit the architecture.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such face-parser weights file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    parser = FaceParser(config)
    target = parser if any(k.startswith("net.") for k in state) else parser.net
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the BiSeNet face parser "
                         f"({str(e).strip().splitlines()[0]})") from None
    return parser.to(device).eval()
