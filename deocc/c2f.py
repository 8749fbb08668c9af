"""Coarse-to-fine blind face completion: the generator, its seven discriminators, losses and training.

Paper: Hörmann, Xia, Knoche, Rigoll, "A Coarse-to-Fine Dual Attention Network for Blind Face
Completion" (``../shared/seeds/c2f_blind_face_completion.txt``), §III (architecture, eqs. 1-12)
and §IV-A (training). The networks are in :mod:`deocc.c2f_nets`.

Generator (:class:`C2F`, registered as ``"c2f"``): the coarse net predicts a rough face I_c and
the occlusion mask M; **eq. 2** ``I_{c,r} = (1 − M) ⊙ I + M ⊙ I_c`` keeps the unoccluded
pixels; the fine net refines I_{c,r} (cross-attention fed with M) into I_f and eq. 2 again gives
``I_{f,r}``, the output. No mask is given: completion is blind.

Discriminators (:class:`C2FDiscriminators`, §III-B.2): a global one and six patch ones — the
whole face, left eye, right eye, nose, mouth (S/4 crops around the landmark centroids) and the
left eye next to the horizontally flipped right eye (eye-colour consistency). Each sees the
(cropped) output or ground truth concatenated with the (cropped) occluded input.

Losses (:class:`C2FLossConfig`, eq. 4): BCE of the mask (eq. 5); L1 on the coarse face inside
and outside the true occlusion, each normalised by its area (eqs. 6-7; we also divide by the 3
channels so the terms are per-value means); perceptual (eqs. 8-9) and style (eq. 10) losses on
the feature maps of a pre-trained network for I_f and I_{f,r}; the adversarial losses of eqs.
11-12 averaged over the seven discriminators.

The feature extractor: the paper's is a ResNet50-v2 face-recognition net (VGGFace2), features
after blocks 1 and 3. Here ``features="identity"`` uses the toolkit's ArcFace IResNet
(:mod:`face3d.regressor.identity`, a face-recognition ResNet as well; ``layer1`` and ``layer3``)
and ``features="vgg"`` the VGG-19 of :mod:`face3d.nn.vgg`; weights come from ``feature_net``
(None switches the perceptual and style terms off — no weights can be downloaded).

Training (:class:`C2FTask`, two steps, §IV-A): **step 1** trains the coarse net alone (Adam
2·10⁻⁴, λ_m = λ_nocc = 1, λ_occ = 3, one epoch); **step 2** loads it (``init``) and trains the
whole generator against the discriminators, alternating D and G (coarse net 5·10⁻⁵, new
weights 10⁻⁴, ×0.1 per epoch, batch 8, 5 epochs; λ_m = 10, λ_occ = 3, λ_nocc = 1, λ_per = 0.1,
λ_style = 240, λ_adv = 1). Faces are flipped horizontally at random (§IV-A).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from face3d.generator import Generator, GeneratorOutput, generator_state, register_generator
from face3d.training.config import OptimizerConfig, ScheduleConfig, TrainerConfig
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask
from deocc.data import OcclusionDataConfig
from deocc.c2f_nets import CoarseNet, ConvDiscriminator, FineNet, log_probs

__all__ = ["C2FConfig", "C2FResult", "C2F", "REGIONS", "region_centres", "crop_regions", "C2FDiscriminators",
           "FeatureExtractor", "build_feature_extractor", "perceptual_loss", "style_loss", "gram_matrix",
           "masked_l1", "C2FLossConfig", "C2FTrainConfig", "C2FTask", "train_c2f"]

#: 68-point iBUG landmark ranges of the cropped regions (image-left eye first)
REGIONS: dict[str, tuple[int, int]] = {"left_eye": (36, 42), "right_eye": (42, 48), "nose": (27, 36),
                                       "mouth": (48, 68)}


@dataclass
class C2FConfig:
    """Architecture of :class:`C2F` (paper: 112² input, 64 base channels).

    Attributes:
        image_size: S, divisible by 8 (the cross-attention's 2×2 patches at S/2, keys pooled at S/8).
        width: channels of the first convolutions (64); the nets double them per halving.
    """

    image_size: int = 112
    width: int = 64

    def __post_init__(self) -> None:
        if self.image_size % 8 or self.image_size < 16:
            raise ValueError(f"c2f image_size must be a multiple of 8 (>= 16), got {self.image_size}")
        if self.width < 8 or self.width % 8:
            raise ValueError(f"c2f width must be a positive multiple of 8, got {self.width}")


@dataclass
class C2FResult:
    """Everything the generator computes; images (B, 3, S, S) in [0, 1], masks (B, 1, S, S).

    Attributes:
        coarse: I_c; coarse_r: I_{c,r} (eq. 2); mask: M (σ of ``mask_logits``, 1 = occluded);
        fine: I_f; image: I_{f,r} (eq. 2), the output (None for fine / image when only the
        coarse net ran).
    """

    coarse: Tensor
    coarse_r: Tensor
    mask: Tensor
    mask_logits: Tensor
    fine: Optional[Tensor] = None
    image: Optional[Tensor] = None


class C2F(Generator):
    """Coarse-to-fine blind face completion (module doc); input/output per :mod:`face3d.generator`."""

    uses_3d = False

    def __init__(self, config: Optional[C2FConfig] = None) -> None:
        super().__init__(config or C2FConfig())
        self.coarse = CoarseNet(self.config.width)
        self.fine = FineNet(self.config.width)

    def complete(self, image: Tensor, coarse_only: bool = False) -> C2FResult:
        """(B, 3, S, S) occluded faces in [0, 1] → :class:`C2FResult`."""
        x = image * 2.0 - 1.0
        ic, logits = self.coarse(x)
        m = torch.sigmoid(logits)
        icr = (1.0 - m) * x + m * ic  # eq. 2 after the coarse net
        res = C2FResult((ic + 1.0) / 2.0, (icr + 1.0) / 2.0, m, logits)
        if coarse_only:
            return res
        f = self.fine(icr, m)
        ifr = (1.0 - m) * x + m * f  # eq. 2 after the fine net
        res.fine, res.image = (f + 1.0) / 2.0, (ifr + 1.0) / 2.0
        return res

    def forward(self, inputs, coarse_only: bool = False):
        """A :class:`GeneratorInput` → :class:`GeneratorOutput` (I_{f,r}, M); a bare tensor →
        the :class:`C2FResult` (what training calls through the trainer's module wrappers)."""
        if isinstance(inputs, Tensor):
            return self.complete(inputs, coarse_only)
        self.check_input(inputs)
        r = self.complete(inputs.image)
        return GeneratorOutput(r.image, r.mask)


# --------------------------------------------------------------------------- crops and discriminators
def region_centres(landmarks: Tensor) -> Tensor:
    """(B, 68, 2) landmarks (crop px) → (B, 4, 2) centroids of left eye, right eye, nose, mouth."""
    return torch.stack([landmarks[:, a:b].mean(1) for a, b in REGIONS.values()], 1)


def _crop(x: Tensor, centre: Tensor, size: int) -> Tensor:
    """Square ``size`` crops of (B, C, H, W) around (B, 2) centres (x, y), shifted to stay inside."""
    B, C, H, W = x.shape
    x0 = (centre[:, 0].round().long() - size // 2).clamp(0, W - size)
    y0 = (centre[:, 1].round().long() - size // 2).clamp(0, H - size)
    ar = torch.arange(size, device=x.device)
    rows = (y0[:, None] + ar)[:, :, None].expand(B, size, size)
    cols = (x0[:, None] + ar)[:, None, :].expand(B, size, size)
    b = torch.arange(B, device=x.device)[:, None, None].expand(B, size, size)
    return x.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)


def crop_regions(image: Tensor, centres: Tensor, size: int) -> list[Tensor]:
    """The seven discriminator inputs C_i(image) of (B, C, S, S): whole, whole, left eye, right
    eye, nose, mouth, [left eye ‖ flipped right eye] (2C channels)."""
    le, re, no, mo = (_crop(image, centres[:, i], size) for i in range(4))
    return [image, image, le, re, no, mo, torch.cat([le, re.flip(-1)], 1)]


class C2FDiscriminators(nn.Module):
    """The global and six patch discriminators; :meth:`forward` gives per-discriminator
    ``(log D, log(1 − D))`` for a face and its occluded input."""

    NAMES = ("global", "face", "left_eye", "right_eye", "nose", "mouth", "eye_pair")

    def __init__(self, image_size: int = 112, width: int = 64) -> None:
        super().__init__()
        s, c = image_size, image_size // 4
        self.crop = c
        self.nets = nn.ModuleDict({
            "global": ConvDiscriminator(6, s, "global", width), "face": ConvDiscriminator(6, s, "patch", width),
            "left_eye": ConvDiscriminator(6, c, "patch", width), "right_eye": ConvDiscriminator(6, c, "patch", width),
            "nose": ConvDiscriminator(6, c, "patch", width), "mouth": ConvDiscriminator(6, c, "patch", width),
            "eye_pair": ConvDiscriminator(12, c, "patch", width)})

    def forward(self, face: Tensor, occluded: Tensor, centres: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``face``, ``occluded`` (B, 3, S, S) in [0, 1]; ``centres`` (B, 4, 2) → seven (B,) pairs."""
        x = torch.cat([face, occluded], 1) * 2.0 - 1.0
        crops = crop_regions(x, centres, self.crop)
        # the eye pair's channels: [face, occluded] of the left eye, then of the flipped right eye
        return [log_probs(self.nets[n](c)) for n, c in zip(self.NAMES, crops)]


# --------------------------------------------------------------------------- feature losses
class FeatureExtractor(nn.Module):
    """Frozen feature maps of a pre-trained network: (B, 3, H, W) in [0, 1] → list of maps.

    ``kind="identity"``: an ArcFace IResNet (outputs of ``layers`` among layer1..layer4; input
    resized to its 112² and mapped to [−1, 1]); ``kind="vgg"``: :class:`face3d.nn.vgg.VGG19`
    (``layers`` by name, e.g. relu2_1).
    """

    def __init__(self, net: nn.Module, kind: str, layers: Sequence[str]) -> None:
        super().__init__()
        if kind not in ("identity", "vgg"):
            raise ValueError(f"feature extractor kind must be identity or vgg, got {kind!r}")
        self.net, self.kind, self.layers = net.requires_grad_(False).eval(), kind, tuple(layers)

    def train(self, mode: bool = True) -> "FeatureExtractor":  # the network stays frozen
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, image: Tensor) -> list[Tensor]:
        if self.kind == "vgg":
            out = self.net(image, self.layers)
            return [out[n] for n in self.layers]
        net = self.net
        s = net.input_size
        if image.shape[-2:] != (s, s):
            image = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        x = net.prelu(net.bn1(net.conv1(image * 2.0 - 1.0)))
        feats: dict[str, Tensor] = {}
        deepest = max(int(n[-1]) for n in self.layers)
        for i in range(1, deepest + 1):
            x = getattr(net, f"layer{i}")(x)
            feats[f"layer{i}"] = x
        return [feats[n] for n in self.layers]


_DEFAULT_LAYERS = {"identity": ("layer1", "layer3"), "vgg": ("relu2_1", "relu4_1")}


def build_feature_extractor(kind: str, path: Optional[str], layers: Optional[Sequence[str]] = None,
                            arch: str = "iresnet50") -> Optional[FeatureExtractor]:
    """The loss network from a weights file (None: no extractor, the terms are off)."""
    if path is None:
        return None
    layers = tuple(layers) if layers else _DEFAULT_LAYERS.get(kind, ())
    if kind == "vgg":
        from face3d.nn.vgg import load_vgg19

        return FeatureExtractor(load_vgg19(path), kind, layers)
    from face3d.regressor.identity import load_identity_net

    return FeatureExtractor(load_identity_net(path, arch), kind, layers)


def perceptual_loss(feats: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Eq. 8: ``Σ_d ‖Ψ_d(I) − Ψ_d(I_gt)‖₁ / N(Ψ_d(I_gt))`` (batch mean)."""
    return sum((f - t.detach()).abs().mean() for f, t in zip(feats, target))


def gram_matrix(feat: Tensor) -> Tensor:
    """Eq. 10: (B, C, H, W) → (B, C, C) ``Φᵀ Φ / (H·W·C)``."""
    B, C, H, W = feat.shape
    phi = feat.reshape(B, C, H * W)
    return phi @ phi.transpose(1, 2) / (C * H * W)


def style_loss(feats: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Eq. 8 with Gram matrices in place of the feature maps."""
    return sum((gram_matrix(f) - gram_matrix(t.detach())).abs().mean() for f, t in zip(feats, target))


def masked_l1(pred: Tensor, target: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Eqs. 6-7: ``‖(pred − target) ⊙ w‖₁ / ‖w‖₁`` over the batch, w (B, 1, H, W) broadcast to
    the channels (and counted per channel, so the value is a per-value mean)."""
    return ((pred - target).abs() * weight).sum() / (weight.sum() * pred.shape[1]).clamp_min(eps)


# --------------------------------------------------------------------------- training
@dataclass
class C2FLossConfig:
    """The λ of eq. 4 (default: step 2's, §IV-A; step 1 uses ``C2FTrainConfig.loss1``)."""

    m: float = 10.0
    occ: float = 3.0
    nocc: float = 1.0
    per: float = 0.1
    style: float = 240.0
    adv: float = 1.0


def _step1_loss() -> C2FLossConfig:
    return C2FLossConfig(m=1.0, occ=3.0, nocc=1.0, per=0.0, style=0.0, adv=0.0)


@dataclass
class C2FTrainConfig:
    """A training run of C2F (``python cli.py train c2f --data DIR --stage 1|2 [--init CKPT]``).

    Attributes:
        trainer: trainer settings: Adam at 10⁻⁴ (step 2's rate of new weights and of the
            discriminators), batch 8; the learning rate falls ×0.1 per epoch (``decay_per_epoch``).
        model: :class:`C2FConfig`.
        data, synthetic, occlusion: the synthetic-occlusion data (:mod:`deocc.data`; the
            paper's occluders: rectangles and text of random colour, §III-A).
        stage: 1 (coarse net alone) or 2 (whole generator + discriminators; needs ``init``).
        init: the step-1 checkpoint (trainer run folder / file or a generator file).
        loss1, loss2: λ of eq. 4 in step 1 and step 2.
        stage1_lr: step 1's rate (2·10⁻⁴); coarse_lr: the pre-trained coarse net's rate in step 2 (5·10⁻⁵).
        decay_per_epoch: multiply the rates by 0.1 after every epoch of the data (paper).
        hflip: random horizontal flips of the training faces (paper).
        pixel_loss_on_fine: also apply eqs. 6-7 to I_f (the "∗" variant of the paper's Table I).
        features, feature_net, feature_layers, feature_arch: the perceptual / style network
            (module doc); ``feature_net`` None switches those terms off.
        d_width: channels of the discriminators' first convolution (paper silent; 64).
    """

    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        out_dir="runs/c2f", batch_size=8, optim=OptimizerConfig(name="adam", lr=1e-4)))
    model: C2FConfig = field(default_factory=C2FConfig)
    data: Optional[str] = None
    synthetic: int = 0
    occlusion: OcclusionDataConfig = field(default_factory=lambda: OcclusionDataConfig(kinds=("rectangle", "text")))
    stage: int = 1
    init: Optional[str] = None
    loss1: C2FLossConfig = field(default_factory=_step1_loss)
    loss2: C2FLossConfig = field(default_factory=C2FLossConfig)
    stage1_lr: float = 2e-4
    coarse_lr: float = 5e-5
    decay_per_epoch: bool = True
    hflip: bool = True
    pixel_loss_on_fine: bool = False
    features: str = "identity"
    feature_net: Optional[str] = None
    feature_layers: Optional[tuple[str, ...]] = None
    feature_arch: str = "iresnet50"
    d_width: int = 64

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"c2f stage must be 1 (coarse) or 2 (coarse + fine), got {self.stage}")
        if self.features not in ("identity", "vgg"):
            raise ValueError(f"c2f features must be identity or vgg, got {self.features!r}")


def _flip(batch: Mapping[str, Tensor], centres: Tensor, which: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Mirror the items ``which`` (B,) bool: images left-right, centres x → S − 1 − x with the
    two eyes swapped."""
    out = dict(batch)
    for key in ("image", "occluded", "mask"):
        if key in out:
            out[key] = torch.where(which[:, None, None, None], out[key].flip(-1), out[key])
    size = batch["image"].shape[-1]
    c = centres.clone()
    c[..., 0] = size - 1 - c[..., 0]
    c = c[:, [1, 0, 2, 3]]
    return out, torch.where(which[:, None, None], c, centres)


class C2FTask(TrainingTask):
    """C2F's two training steps on the trainer (module doc).

    Modules: ``generator`` (:class:`C2F`); step 2 also ``D`` (:class:`C2FDiscriminators`) and,
    with a feature network, the frozen ``features``. Optimisers: step 1 ``generator`` (coarse
    net only); step 2 ``D`` then ``G`` (coarse at ``coarse_lr``, fine at the trainer's rate).
    Batches: dicts with ``occluded``, ``image`` (clean), ``mask`` (1 = occluded) and
    ``landmarks`` (B, 68, 2) crop pixels.

    Args:
        config: the run's settings.
        features: a :class:`FeatureExtractor` (default: from ``config.feature_net`` or none).
    """

    def __init__(self, config: C2FTrainConfig, features: Optional[FeatureExtractor] = None) -> None:
        if config.stage == 2 and not config.init:
            raise ValueError("c2f step 2 starts from the coarse net of step 1: give init (--init CKPT)")
        self.config = config
        if features is None and config.stage == 2:
            features = build_feature_extractor(config.features, config.feature_net, config.feature_layers,
                                               config.feature_arch)
        self.features = features

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        from deocc.rla import _load_init

        cfg = self.config
        gen = C2F(cfg.model)
        if cfg.init:
            _load_init(gen, cfg.init)
        self._generator = gen
        mods: dict[str, nn.Module] = {"generator": gen.to(device)}
        if cfg.stage == 2:
            mods["D"] = C2FDiscriminators(cfg.model.image_size, cfg.d_width).to(device)
            if self.features is not None:
                mods["features"] = self.features.to(device)
        return mods

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        gen: C2F = modules["generator"]  # type: ignore[assignment]
        base = self.config.trainer.optim
        if self.config.stage == 1:
            gen.fine.requires_grad_(False)  # unused in step 1: frozen, so DDP does not wait for it
            return {"generator": OptimizerSpec(gen.coarse.parameters(),
                                               optim=dataclasses.replace(base, lr=self.config.stage1_lr))}
        groups = [{"params": list(gen.coarse.parameters()), "lr": self.config.coarse_lr},
                  {"params": list(gen.fine.parameters())}]
        return {"D": OptimizerSpec(modules["D"].parameters()), "G": OptimizerSpec(groups)}

    def _inputs(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        b = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
        centres = region_centres(b["landmarks"].float())
        if self.config.hflip:
            # one draw per item per step, shared by the D and G phases (same step → same seed)
            g = torch.Generator().manual_seed(self._step_seed)
            which = torch.rand(b["image"].shape[0], generator=g) < 0.5
            b, centres = _flip(b, centres, which.to(b["image"].device))
        return b, centres

    def pixel_losses(self, r: C2FResult, batch: Mapping[str, Tensor], lam: C2FLossConfig) -> dict[str, Tensor]:
        """λ-weighted eqs. 5-7 (and 6-7 on I_f with ``pixel_loss_on_fine``); unweighted terms."""
        clean, mgt = batch["image"], batch["mask"].float()
        terms = {"m": F.binary_cross_entropy_with_logits(r.mask_logits, mgt),  # eq. 5
                 "occ": masked_l1(r.coarse, clean, mgt), "nocc": masked_l1(r.coarse, clean, 1.0 - mgt)}
        if self.config.pixel_loss_on_fine and r.fine is not None:
            terms["occ"] = terms["occ"] + masked_l1(r.fine, clean, mgt)
            terms["nocc"] = terms["nocc"] + masked_l1(r.fine, clean, 1.0 - mgt)
        return terms

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        self._step_seed = (self.config.trainer.seed * 1_000_003 + ctx.step * 1000 + ctx.micro + 1) % 2**62
        cfg = self.config
        b, centres = self._inputs(batch)
        occ, clean = b["occluded"], b["image"]
        gen = modules["generator"]
        if cfg.stage == 1:
            lam = cfg.loss1
            r = gen(occ, coarse_only=True)
            t = self.pixel_losses(r, b, lam)
            loss = lam.m * t["m"] + lam.occ * t["occ"] + lam.nocc * t["nocc"]
            return {"loss": loss, **{k: v.detach() for k, v in t.items()}}
        lam = cfg.loss2
        D = modules["D"]
        if ctx.phase == "D":
            with torch.no_grad():
                fake = gen(occ).image
            real_lp = D(clean, occ, centres)
            fake_lp = D(fake, occ, centres)
            # eq. 12: −1/7 Σ [log(1 − D(fake)) + log D(real)]
            loss = -sum(f[1].mean() + r_[0].mean() for f, r_ in zip(fake_lp, real_lp)) / len(real_lp)
            return {"loss": loss, "d_real": torch.stack([r_[0].exp().mean() for r_ in real_lp]).mean().detach(),
                    "d_fake": torch.stack([f[0].exp().mean() for f in fake_lp]).mean().detach()}
        r = gen(occ)
        t = self.pixel_losses(r, b, lam)
        lp = D(r.image, occ, centres)
        t["adv"] = -sum(p[0].mean() for p in lp) / len(lp)  # eq. 11
        if "features" in modules and (lam.per > 0 or lam.style > 0):
            fx = modules["features"]
            with torch.no_grad():
                ft = fx(clean)
            ff, ffr = fx(r.fine), fx(r.image)
            t["per"] = perceptual_loss(ff, ft) + perceptual_loss(ffr, ft)  # eq. 9
            t["style"] = style_loss(ff, ft) + style_loss(ffr, ft)
        loss = sum(getattr(lam, k) * v for k, v in t.items())
        return {"loss": loss, **{k: v.detach() for k, v in t.items()}}

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        from face3d.training.grid import make_grid

        occ, clean = batch["occluded"].float(), batch["image"].float()
        r = modules["generator"](occ, coarse_only=self.config.stage == 1)
        out = r.coarse_r if r.image is None else r.image
        tiles = torch.stack([occ, r.coarse, r.mask.expand_as(occ), out, clean], 1).flatten(0, 1)
        return make_grid(tiles.clamp(0, 1), nrow=5)

    def state_dict(self) -> dict[str, Any]:
        from face3d.config import config_to_dict

        return {"generator": generator_state(self._generator), "c2f_config": config_to_dict(self.config)}


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def train_c2f(cfg: C2FTrainConfig):
    """Build task and data of ``cfg``, train, return the :class:`~face3d.training.trainer.Trainer`."""
    from face3d.training.trainer import Trainer
    from deocc.rla import _build_dataset

    dataset = _build_dataset(cfg.data, cfg.model.image_size, cfg.occlusion, cfg.synthetic)
    trainer_cfg = cfg.trainer
    if cfg.decay_per_epoch:
        spe = _steps_per_epoch(len(dataset), trainer_cfg.batch_size)
        trainer_cfg = dataclasses.replace(trainer_cfg, schedule=ScheduleConfig(
            name="step", warmup_steps=trainer_cfg.schedule.warmup_steps, step_size=spe, gamma=0.1))
    return Trainer(C2FTask(cfg), dataset, trainer_cfg).fit()


register_generator("c2f", C2FConfig, train_config=C2FTrainConfig, train=train_c2f,
                   summary="coarse-to-fine blind face completion: DMFB U-Nets, dual attention, 7 discriminators "
                           "(Hörmann et al., image only)")(C2F)
