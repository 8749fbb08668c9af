"""VGG-19 features (Simonyan & Zisserman 2015) and the perceptual loss built on them.

The perceptual loss of CFR-GAN (``../shared/seeds/cfr_gan_swap_rr.txt`` §3.3, eq. 12:
``L_per = Σ_i ‖F_vgg^(i)(I) − F_vgg^(i)(G(·))‖_1`` over an ImageNet-trained VGG-19) and of the
other generators of the toolkit use this module.

torchvision is not a dependency (its wheels are tied to one torch build), so the network is
written here with **torchvision's layer layout**: ``VGG19().features`` is an ``nn.Sequential``
whose indices are those of ``torchvision.models.vgg19().features`` (configuration "E", no batch
norm): convolutions at 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34, each followed
by its ReLU, max-pools at 4, 9, 18, 27, 36. A torchvision ``vgg19`` state dict
(``features.N.weight`` …; the ``classifier.*`` keys are dropped) or a bare ``features`` state
dict (``N.weight`` …) loads by key with :func:`load_vgg19`.

Layer names follow the usual ``reluB_K`` convention (block B, K-th convolution of the block),
see :data:`VGG19_LAYERS`. Inputs are sRGB images in [0, 1]; the module applies ImageNet's
mean / std normalisation itself. No weights are ever downloaded: pass a path, or None for a
randomly initialised network (tests; the loss is then only a feature-space distance of an
untrained net).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["VGG19", "VGG19_LAYERS", "load_vgg19", "PerceptualLoss", "IMAGENET_MEAN", "IMAGENET_STD",
           "DEFAULT_PERCEPTUAL_LAYERS", "DEFAULT_PERCEPTUAL_WEIGHTS"]

#: ImageNet statistics of the torchvision classifiers' inputs (RGB in [0, 1])
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's configuration "E": channel count per convolution, "M" for a 2×2 max-pool
_CFG_E = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names() -> dict[str, int]:
    names: dict[str, int] = {}
    idx, block, conv = 0, 1, 0
    for v in _CFG_E:
        if v == "M":
            names[f"pool{block}"] = idx
            idx, block, conv = idx + 1, block + 1, 0
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = idx
            names[f"relu{block}_{conv}"] = idx + 1
            idx += 2
    return names


#: layer name (``convB_K``, ``reluB_K``, ``poolB``) → index in ``VGG19.features``
VGG19_LAYERS: dict[str, int] = _layer_names()

#: pix2pixHD's perceptual layers and weights (Wang et al. 2018), which CFR-GAN's discriminator
#: and generator build on; the paper does not list its N_vgg layers, so these are the default
DEFAULT_PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGG19(nn.Module):
    """VGG-19 convolutional trunk (torchvision ``features`` layout), a named-layer feature extractor.

    Args:
        normalize_input: map [0, 1] sRGB inputs to ImageNet-normalised ones inside
            :meth:`forward` (True), or take already normalised inputs (False).
    """

    def __init__(self, normalize_input: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _CFG_E:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.normalize_input = normalize_input
        # non-persistent: the state dict keeps exactly torchvision's keys
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # torchvision's initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def normalize(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) sRGB in [0, 1] → ImageNet-normalised."""
        return (image - self.mean.to(image)) / self.std.to(image)

    def forward(self, image: Tensor, layers: Sequence[str] = DEFAULT_PERCEPTUAL_LAYERS) -> dict[str, Tensor]:
        """Feature maps of ``layers`` (names of :data:`VGG19_LAYERS`).

        Args:
            image: (B, 3, H, W) sRGB in [0, 1] (or normalised, see ``normalize_input``).
            layers: layer names; the network runs only up to the deepest of them.

        Returns:
            name → (B, C, H / 2^k, W / 2^k) feature map (k = pools before the layer).
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"VGG19 expects (B, 3, H, W) images, got {tuple(image.shape)}")
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; names look like relu3_1, conv5_4, pool2")
        wanted = {VGG19_LAYERS[n]: n for n in layers}
        out: dict[str, Tensor] = {}
        x = self.normalize(image) if self.normalize_input else image
        last = max(wanted) if wanted else -1
        for i, module in enumerate(self.features):
            if i > last:
                break
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


def _features_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of a torchvision vgg19 / features-only / DataParallel state dict → ``features.N.*``."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("classifier.") or k.startswith("avgpool"):
            continue  # the fully connected head is not part of the feature extractor
        if not k.startswith("features."):
            k = "features." + k
        out[k] = v
    return out


def load_vgg19(source: Union[str, os.PathLike, Mapping[str, Tensor], None] = None,
               device: Union[str, torch.device, None] = None, normalize_input: bool = True) -> VGG19:
    """A frozen VGG-19 (``requires_grad=False``, eval mode) on ``device``.

    Args:
        source: a torchvision-layout state dict or a path to one (read with
            ``torch.load(weights_only=True)``); None: random torchvision-style initialisation
            (for tests — a perceptual loss on it is not ImageNet-perceptual).
        normalize_input: see :class:`VGG19`.

    Raises:
        FileNotFoundError: no file at ``source``; ValueError: unreadable file or weights that
        do not fit the layout.
    """
    net = VGG19(normalize_input=normalize_input)
    if source is not None:
        if isinstance(source, (str, os.PathLike)):
            from face3d.regressor.backbones import load_state_file

            state = load_state_file(source)
            if not isinstance(state, Mapping):
                raise ValueError(f"{os.fspath(source)}: not a state dict")
        else:
            state = source
        from face3d.regressor.backbones import load_frozen

        return load_frozen(net, _features_state(state), "VGG-19", device)
    net.requires_grad_(False).eval()
    return net.to(device)


class PerceptualLoss(nn.Module):
    """``Σ_i w_i · mean|F_i(x) − F_i(y)|`` over VGG-19 layers (CFR-GAN eq. 12, weighted as pix2pixHD).

    Each term is the L1 distance averaged over the elements of that layer's map (so the loss
    does not grow with the image size). The VGG stays frozen and in eval mode whatever
    ``train()`` is called with; gradients flow to the images.

    Args:
        layers: VGG-19 layer names (:data:`VGG19_LAYERS`).
        weights: one weight per layer.
        vgg: the network (e.g. :func:`load_vgg19` of a path); None: a randomly initialised one.
        target_grad: also back-propagate into the second argument (off: its features are
            computed without a graph, the usual case of a fixed target).
    """

    def __init__(self, layers: Sequence[str] = DEFAULT_PERCEPTUAL_LAYERS,
                 weights: Optional[Sequence[float]] = DEFAULT_PERCEPTUAL_WEIGHTS,
                 vgg: Optional[VGG19] = None, target_grad: bool = False) -> None:
        super().__init__()
        layers = tuple(layers)
        weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * len(layers)))
        if not layers or len(weights) != len(layers):
            raise ValueError(f"PerceptualLoss needs one weight per layer, got {len(layers)} layers, "
                             f"{len(weights)} weights")
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; names look like relu3_1, conv5_4, pool2")
        self.layers, self.weights = layers, weights
        self.vgg = (vgg if vgg is not None else load_vgg19(None)).requires_grad_(False).eval()
        self.target_grad = target_grad

    def train(self, mode: bool = True) -> "PerceptualLoss":  # the feature net stays frozen
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Scalar loss between (B, 3, H, W) sRGB images ``x`` (e.g. the output) and ``y`` (the target)."""
        if x.shape != y.shape:
            raise ValueError(f"PerceptualLoss: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        fx = self.vgg(x, self.layers)
        if self.target_grad:
            fy = self.vgg(y, self.layers)
        else:
            with torch.no_grad():
                fy = self.vgg(y, self.layers)
        loss = x.new_zeros(())
        for name, w in zip(self.layers, self.weights):
            loss = loss + w * (fx[name] - fy[name]).abs().mean()
        return loss
