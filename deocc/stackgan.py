"""FD-StackGAN: face de-occlusion with two stacked GANs (Base-Net, then Refine-Net).

Paper: Jabbar et al. 2022, "FD-StackGAN: Face De-occlusion Using Stacked Generative Adversarial
Networks" (``../shared/seeds/fd_stackgan.txt``), §3 (architecture, losses) and §4 (training).

Architecture (:class:`StackGANGenerator`, registered as ``"stackgan"``):

* **Base-Net** G1 (§3.2): a U-Net (skip connections) whose encoder has five stride-2
  convolutions and whose decoder mirrors it with five transposed convolutions, instance
  normalisation, and a stack of dilated-convolution + Squeeze-and-Excitation blocks in the
  middle (:class:`DilatedSEBlock`). It maps the occluded crop I_c to a coarse repair I_o^i.
* **Refine-Net** G2 (§3.4): the same network fed [I_o ‖ I_o^i] — the stage-I input again,
  "to enforce edge consistency at the affected region boundary" — giving the final I_o^f.
* **PatchGAN** discriminators D1, D2 (§3.2, §3.4; :class:`PatchDiscriminator`), conditioned on
  the stage-I input (eq. 7): they score (I_o, image) pairs patch by patch.

Losses (eqs. 2–10): ``L = α·L_r + β·L_p + L_a`` per stage with ``L_r = L1 + (1 − SSIM)``
(eqs. 3–5, :func:`face3d.metrics.ssim`), ``L_p`` the VGG-19 perceptual loss (eq. 6,
:class:`face3d.nn.vgg.PerceptualLoss`; weights from a path, ``None`` turns the term off) and
``L_a`` the log-loss GAN objective (eq. 7/9). α, β = 100, 33 for stage I and 10, 3.3 for stage
II (§4.1); TTUR learning rates G 1e-4, D 4e-4 (§4.2); batch 10 (§4.1); 256² crops.

Where the paper is silent or unclear, our choices (one line each):

* Layer layout: the paper's "relu + convolution + instance norm, tanh for the first and last
  layers" is built as pre-activation layers (ReLU → conv → IN); the first layer is a bare
  convolution of the image, the last a transposed convolution followed by tanh.
* Widths 64·2^k capped at 512 (pix2pix's, which the paper's U-Net [21, 22] follows).
* Middle: four residual blocks, dilations 2, 4, 2, 4 (at the 8×8 bottleneck of a 256² input a
  3×3 kernel dilated by 4 already spans the whole map), SE reduction 16 (Hu et al.'s default).
* PatchGAN with two stride-2 layers: a 34-px receptive field, the closest to the paper's 32-px
  window; conditioned on the stage-I input for both D1 and D2.
* Mask input: the paper's Base-Net sees [I_c ‖ I_m], the occluded image and the binary mask of
  the occluded region (§3.2). The toolkit's generators take an image alone (SPEC: image in →
  image + mask out), so ``mask_input`` defaults to False (Base-Net sees the image alone);
  ``mask_input=True`` reproduces the paper and then needs ``GeneratorInput.mask``.
* Training stages: stage 1 trains G1 + D1; stage 2 trains G2 + D2 with G1 loaded from the
  stage-1 checkpoint (``init``) and frozen (the paper trains the two "alternately").
* Adam β = (0.5, 0.999) (the paper names Adam only; the usual GAN setting of pix2pix / TTUR).

Output: the paper does not compose — the generator's image replaces the whole crop and the L1
is taken over the whole image — so neither do we. The networks predict no mask; the output
mask is :func:`difference_mask` of output and input (thresholded, smoothed |output − input|),
or, with ``mask_input``, the mask the caller gave.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deocc.data import OcclusionDataConfig, build_occlusion_dataset
from face3d.generator import Generator, GeneratorInput, GeneratorOutput, difference_mask, register_generator
from face3d.nn.gan import gan_loss
from face3d.training.config import OptimizerConfig, TrainerConfig
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask

__all__ = ["StackGANConfig", "StackGANTrainConfig", "StackGANGenerator", "DilatedSEUNet", "DilatedSEBlock",
           "SEBlock", "PatchDiscriminator", "StackGANTask", "reconstruction_loss",
           "train_stackgan"]


# --------------------------------------------------------------------------- losses
def reconstruction_loss(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """FD-StackGAN's L_r = L1 + L_SSIM (eqs. 3–5): (mean |output − target|, mean (1 − SSIM)).

    ``output``, ``target`` (B, 3, S, S) in [0, 1], S ≥ 11 (the SSIM window, Wang et al.'s
    11-px Gaussian with σ = 1.5, valid padding: :func:`face3d.metrics.ssim`)."""
    from face3d.metrics import ssim

    return (output - target).abs().mean(), (1.0 - ssim(output, target)).mean()


# --------------------------------------------------------------------------- networks
class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): channel weights σ(W2 ReLU(W1 avgpool(x))) ⊙ x."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w


class DilatedSEBlock(nn.Module):
    """Residual block of two dilated 3×3 convolutions (pre-activation ReLU → conv → IN) and an
    SE recalibration: ``x + SE(IN(conv_d(ReLU(IN(conv_d(ReLU(x)))))))`` (FD-StackGAN §3.2)."""

    def __init__(self, channels: int, dilation: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm2 = nn.InstanceNorm2d(channels, affine=True)
        self.se = SEBlock(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(self.conv1(F.relu(x)))
        h = self.norm2(self.conv2(F.relu(h)))
        return x + self.se(h)


class DilatedSEUNet(nn.Module):
    """FD-StackGAN's generator network (Base-Net and Refine-Net share it, §3.2/§3.4).

    ``layers`` stride-2 convolutions (k 4), dilated-SE blocks at the bottleneck, ``layers``
    transposed convolutions back, each decoder layer fed the previous output concatenated with
    the encoder feature of the same scale (U-Net skips).

    Args:
        in_channels: input channels (3 image [+ 1 mask] for Base-Net, twice the image's for Refine-Net).
        width, max_width: channels of the first layer, doubling per layer up to ``max_width``.
        layers: encoder (and decoder) depth; the input side must be divisible by 2^layers.
        dilations: one dilated-SE block per entry.
        se_reduction: SE bottleneck ratio.

    ``forward``: (B, in_channels, S, S) in [-1, 1] → (B, 3, S, S) in [-1, 1] (tanh).
    """

    def __init__(self, in_channels: int, width: int = 64, max_width: int = 512, layers: int = 5,
                 dilations: Sequence[int] = (2, 4, 2, 4), se_reduction: int = 16) -> None:
        super().__init__()
        ch = [min(width * 2 ** i, max_width) for i in range(layers)]
        self.down = nn.ModuleList()
        for i in range(layers):
            conv = nn.Conv2d(in_channels if i == 0 else ch[i - 1], ch[i], 4, stride=2, padding=1)
            # the first layer convolves the image itself; the others are ReLU → conv → IN
            self.down.append(conv if i == 0 else nn.Sequential(nn.ReLU(), conv, nn.InstanceNorm2d(ch[i], affine=True)))
        self.middle = nn.Sequential(*[DilatedSEBlock(ch[-1], int(d), se_reduction) for d in dilations])
        self.up = nn.ModuleList()
        for j in range(layers):
            cin = ch[layers - 1] if j == 0 else 2 * ch[layers - 1 - j]
            if j < layers - 1:
                cout = ch[layers - 2 - j]
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1),
                                             nn.InstanceNorm2d(cout, affine=True)))
            else:
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, 3, 4, stride=2, padding=1), nn.Tanh()))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = self.middle(x)
        n = len(self.up)
        for j, layer in enumerate(self.up):
            x = layer(x if j == 0 else torch.cat([x, skips[n - 1 - j]], 1))
        return x


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) as FD-StackGAN's D1 / D2: a map of real/fake logits, one per
    overlapping patch.

    ``k4 s2`` conv + LeakyReLU(0.2), ``n_layers − 1`` more ``k4 s2`` conv + IN + LeakyReLU, one
    ``k4 s1`` conv + IN + LeakyReLU and a ``k4 s1`` conv to one channel. With ``n_layers = 2``
    each logit sees 34×34 input pixels (the paper's 32-px window).

    ``forward(condition, image)``: (B, Cc, S, S), (B, 3, S, S) in [0, 1] → (B, 1, h, w) logits
    (the sigmoid of the paper is folded into the log-loss, :func:`gan_loss`).
    """

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 2, max_width: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, n_layers):
            c2 = min(width * 2 ** i, max_width)
            layers += [nn.Conv2d(c, c2, 4, 2, 1), nn.InstanceNorm2d(c2, affine=True), nn.LeakyReLU(0.2)]
            c = c2
        c2 = min(c * 2, max_width)
        layers += [nn.Conv2d(c, c2, 4, 1, 1), nn.InstanceNorm2d(c2, affine=True), nn.LeakyReLU(0.2),
                   nn.Conv2d(c2, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, condition: Tensor, image: Tensor) -> Tensor:
        return self.net(torch.cat([condition * 2 - 1, image * 2 - 1], 1))


# --------------------------------------------------------------------------- the generator
@dataclass
class StackGANConfig:
    """FD-StackGAN's architecture (module doc for the choices the paper leaves open).

    Attributes:
        image_size: crop side S (256 in the paper); a multiple of 2^layers, at least 2^(layers+1).
        width, max_width, layers, dilations, se_reduction: see :class:`DilatedSEUNet`.
        refine: include the Refine-Net (False after stage-1 training: the Base-Net's output
            is the answer).
        mask_input: feed the occlusion mask to the Base-Net as the paper does (then
            ``GeneratorInput.mask`` is required); False: image only.
        mask_threshold, mask_kernel: :func:`difference_mask` settings of the output mask.
    """

    image_size: int = 256
    width: int = 64
    max_width: int = 512
    layers: int = 5
    dilations: tuple[int, ...] = (2, 4, 2, 4)
    se_reduction: int = 16
    refine: bool = True
    mask_input: bool = False
    mask_threshold: float = 0.1
    mask_kernel: int = 5

    def __post_init__(self) -> None:
        if self.layers < 1 or self.image_size % (2 ** self.layers) != 0 or self.image_size < 2 ** (self.layers + 1):
            # instance norm needs at least 2×2 at the bottleneck
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of 2^layers ({2 ** self.layers}) "
                             f"and at least 2^(layers+1)")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 (the SSIM window), got {self.image_size}")
        if self.width < 1 or self.max_width < self.width:
            raise ValueError(f"need 1 <= width <= max_width, got {self.width}, {self.max_width}")
        if any(int(d) < 1 for d in self.dilations):
            raise ValueError(f"dilations must be >= 1, got {self.dilations}")
        if self.mask_kernel < 1 or self.mask_kernel % 2 == 0:
            raise ValueError(f"mask_kernel must be odd and >= 1, got {self.mask_kernel}")


class StackGANGenerator(Generator):
    """FD-StackGAN's two generators in one module (``base`` G1, ``refine`` G2; module doc).

    ``forward(GeneratorInput)`` → :class:`~face3d.generator.GeneratorOutput`: ``image`` the
    Refine-Net's output I_o^f (the Base-Net's I_o^i when ``config.refine`` is False),
    ``mask`` the caller's mask (``mask_input``) or :func:`difference_mask` of output and input.
    """

    uses_3d = False

    def __init__(self, config: StackGANConfig) -> None:
        super().__init__(config)
        c = config
        cin = 3 + (1 if c.mask_input else 0)
        self.base = DilatedSEUNet(cin, c.width, c.max_width, c.layers, c.dilations, c.se_reduction)
        self.refine = (DilatedSEUNet(cin + 3, c.width, c.max_width, c.layers, c.dilations, c.se_reduction)
                       if c.refine else None)

    def check_input(self, inputs: GeneratorInput) -> None:
        super().check_input(inputs)
        s = self.image_size
        if self.config.mask_input:
            m = inputs.mask
            if m is None:
                raise ValueError("stackgan was built with mask_input=True (the paper's Base-Net input): "
                                 "pass the occlusion mask")
            if tuple(m.shape) != (inputs.batch, 1, s, s):
                raise ValueError(f"stackgan: mask must be ({inputs.batch}, 1, {s}, {s}), got {tuple(m.shape)}")

    def stage_input(self, inputs: GeneratorInput) -> Tensor:
        """I_o in [-1, 1]: the image, with the mask as a 4th channel when ``mask_input``."""
        x = inputs.image * 2 - 1
        if self.config.mask_input:
            x = torch.cat([x, inputs.mask.to(x) * 2 - 1], 1)
        return x

    def forward(self, inputs: GeneratorInput, return_stages: bool = False, base_grad: bool = True):
        """Repair ``inputs.image``.

        Args:
            inputs: :class:`GeneratorInput` (``image`` (B, 3, S, S); ``mask`` with ``mask_input``).
            return_stages: return ``{"coarse": I_o^i, "final": I_o^f or None}`` (both (B, 3, S, S)
                in [0, 1]) instead of a GeneratorOutput (training).
            base_grad: False runs the Base-Net without a graph (stage 2, frozen G1).
        """
        self.check_input(inputs)
        x = self.stage_input(inputs)
        with torch.set_grad_enabled(base_grad and torch.is_grad_enabled()):
            coarse = self.base(x)
        final = self.refine(torch.cat([x, coarse], 1)) if self.refine is not None else None
        to01 = lambda t: (t + 1) * 0.5  # noqa: E731
        if return_stages:
            return {"coarse": to01(coarse), "final": None if final is None else to01(final)}
        out = to01(final if final is not None else coarse)
        if self.config.mask_input:
            mask = inputs.mask.to(out)
        else:
            mask = difference_mask(out, inputs.image.to(out), self.config.mask_threshold, self.config.mask_kernel)
        return GeneratorOutput(image=out, mask=mask)


# --------------------------------------------------------------------------- training
@dataclass
class StackGANTrainConfig:
    """An FD-StackGAN training run (YAML / ``--set`` overridable); the paper's numbers (§4).

    Attributes:
        trainer: the trainer's settings; ``optim`` is the generators' Adam (lr 1e-4, TTUR),
            batch 10.
        generator: the architecture (``refine`` is set by the stage: False in stage 1).
        data: folder of face photos (:class:`deocc.data.OccludedFaceDataset` occludes them).
        synthetic: number of synthetic 3DMM faces added to the photos (0: none).
        occlusion: synthetic-occlusion settings of :mod:`deocc.data` (``image_size`` follows
            ``generator``; ``occlusion.model`` is the 3DMM of the synthetic faces and photo fits).
        stage: 1 (Base-Net G1 + D1) or 2 (Refine-Net G2 + D2, G1 from ``init``, frozen).
        init: stage-1 checkpoint (trainer checkpoint / run folder / generator file); stage 2 needs it.
        alpha, beta: (stage I, stage II) weights of L_r and L_p: (100, 10), (33, 3.3).
        d_lr: the discriminators' learning rate (TTUR: 4e-4); other settings as ``trainer.optim``.
        d_layers: PatchGAN stride-2 layers (2: 34-px patches).
        vgg: VGG-19 weights for L_p (torchvision layout, a path); None: the term is off.
        perceptual_layers: VGG-19 layers of L_p (the paper lists none: pix2pixHD's five,
            unit weights as eq. 6 sums them).
    """

    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        out_dir="runs/stackgan", batch_size=10, optim=OptimizerConfig(lr=1e-4, betas=(0.5, 0.999))))
    generator: StackGANConfig = field(default_factory=StackGANConfig)
    data: Optional[str] = None
    synthetic: int = 0
    occlusion: OcclusionDataConfig = field(default_factory=OcclusionDataConfig)
    stage: int = 1
    init: Optional[str] = None
    alpha: tuple[float, float] = (100.0, 10.0)
    beta: tuple[float, float] = (33.0, 3.3)
    d_lr: float = 4e-4
    d_layers: int = 2
    vgg: Optional[str] = None
    perceptual_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if len(self.alpha) != 2 or len(self.beta) != 2:
            raise ValueError("alpha and beta are (stage I, stage II) pairs")
        if self.d_lr <= 0 or self.d_layers < 1 or self.synthetic < 0:
            raise ValueError("d_lr must be > 0, d_layers >= 1, synthetic >= 0")


class StackGANTask(TrainingTask):
    """One FD-StackGAN stage on the trainer (module doc).

    Modules: ``generator`` (:class:`StackGANGenerator`; stage 1 without the Refine-Net) and
    ``D1`` (stage 1) or ``D2`` (stage 2). Optimisers (phases, in order): ``D`` (lr ``d_lr``),
    ``G`` (``trainer.optim``). Batches: dicts with ``occluded`` (B, 3, S, S), ``image`` (the
    clean target) and ``mask`` (B, 1, S, S), as :class:`deocc.data.OccludedFaceDataset` gives.

    Logged terms: D phase ``loss_real``, ``loss_fake``; G phase ``l1``, ``ssim``,
    ``perceptual``, ``adv`` (of the trained stage) and ``loss``.

    Args:
        config: the run's settings.
        perceptual: a :class:`~face3d.nn.vgg.PerceptualLoss` to use (tests: a random VGG);
            default: from ``config.vgg``, or none.
    """

    def __init__(self, config: StackGANTrainConfig, perceptual: Optional[nn.Module] = None) -> None:
        self.config = config
        if config.stage == 2:
            if not config.init:
                raise ValueError("stackgan stage 2 needs the stage-1 weights: give init (--init CKPT)")
            if not Path(config.init).exists():
                raise FileNotFoundError(f"{config.init}: no such checkpoint (stage-1 weights for stage 2)")
        if perceptual is None and config.vgg:
            from face3d.nn.vgg import PerceptualLoss, load_vgg19

            perceptual = PerceptualLoss(config.perceptual_layers, None, vgg=load_vgg19(config.vgg))
        self.perceptual = perceptual
        self.d_name = "D1" if config.stage == 1 else "D2"
        self._gen_config = dataclasses.replace(config.generator, refine=config.stage == 2)

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        cfg = self.config
        gen = StackGANGenerator(self._gen_config)
        if cfg.stage == 2:
            from face3d.generator import load_generator

            src = load_generator(cfg.init, name="stackgan")
            try:
                gen.base.load_state_dict(src.base.state_dict())
            except RuntimeError as e:
                raise ValueError(f"{cfg.init}: its Base-Net does not fit this configuration "
                                 f"({str(e).strip().splitlines()[0]})") from None
            gen.base.requires_grad_(False)  # G1 is frozen in stage 2
        cond = 3 + (1 if self._gen_config.mask_input else 0)
        d = PatchDiscriminator(cond + 3, self._gen_config.width, cfg.d_layers, self._gen_config.max_width)
        if self.perceptual is not None:
            self.perceptual.to(device)
        return {"generator": gen.to(device), self.d_name: d.to(device)}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        cfg = self.config
        g_params = [p for p in modules["generator"].parameters() if p.requires_grad]
        d_optim = dataclasses.replace(cfg.trainer.optim, lr=cfg.d_lr)
        return {"D": OptimizerSpec(modules[self.d_name].parameters(), optim=d_optim),
                "G": OptimizerSpec(g_params)}

    def _inputs(self, batch: Mapping[str, Tensor]) -> GeneratorInput:
        return GeneratorInput(image=batch["occluded"].float(), mask=batch["mask"].float())

    def _condition(self, gen_input: GeneratorInput) -> Tensor:
        x = gen_input.image
        if self._gen_config.mask_input:
            x = torch.cat([x, gen_input.mask], 1)
        return x

    def _output(self, stages: Mapping[str, Optional[Tensor]]) -> Tensor:
        return stages["coarse"] if self.config.stage == 1 else stages["final"]

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.config
        gin = self._inputs(batch)
        target = batch["image"].float()
        cond = self._condition(gin)
        gen, disc = modules["generator"], modules[self.d_name]
        frozen_base = cfg.stage == 2
        if ctx.phase == "D":
            with torch.no_grad():
                fake = self._output(gen(gin, return_stages=True, base_grad=not frozen_base))
            real_l = gan_loss(disc(cond, target), True)
            fake_l = gan_loss(disc(cond, fake), False)
            return {"loss": real_l + fake_l, "loss_real": real_l.detach(), "loss_fake": fake_l.detach()}
        out = self._output(gen(gin, return_stages=True, base_grad=not frozen_base))
        k = cfg.stage - 1
        l1, lssim = reconstruction_loss(out, target)
        adv = gan_loss(disc(cond, out), True)
        total = cfg.alpha[k] * (l1 + lssim) + adv
        perc = out.new_zeros(())
        if self.perceptual is not None and cfg.beta[k] > 0:
            perc = self.perceptual(out, target)
            total = total + cfg.beta[k] * perc
        return {"loss": total, "l1": l1.detach(), "ssim": lssim.detach(), "perceptual": perc.detach(),
                "adv": adv.detach()}

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        from face3d.training.grid import make_grid

        gin = self._inputs(batch)
        st = modules["generator"](gin, return_stages=True)
        cols = [gin.image, st["coarse"]] + ([st["final"]] if st["final"] is not None else []) + [batch["image"].float()]
        tiles = torch.stack(cols, 1).flatten(0, 1)
        return make_grid(tiles.clamp(0, 1), nrow=len(cols))

    def state_dict(self) -> dict[str, Any]:
        from face3d.config import config_to_dict

        # what face3d.generator.generator_state gives for the trained generator (its config is fixed at init)
        return {"generator": {"name": StackGANGenerator.name, "config": config_to_dict(self._gen_config)},
                "train_config": config_to_dict(self.config)}


def train_stackgan(config: StackGANTrainConfig, perceptual: Optional[nn.Module] = None, model: Any = None):
    """Train one FD-StackGAN stage as ``config`` says; returns the finished
    :class:`~face3d.training.trainer.Trainer`. ``perceptual``: a PerceptualLoss to use instead
    of ``config.vgg``'s; ``model``: the 3DMM of the data instead of ``config.occlusion.model``."""
    from face3d.training.trainer import Trainer

    task = StackGANTask(config, perceptual)
    dataset = build_occlusion_dataset(config.occlusion, config.generator.image_size, config.data,
                                      config.synthetic, model)
    return Trainer(task, dataset, config.trainer).fit()


register_generator("stackgan", StackGANConfig, train_config=StackGANTrainConfig, train=train_stackgan,
                   summary="FD-StackGAN (Jabbar et al. 2022): Base-Net + Refine-Net U-Nets with dilated-SE "
                           "blocks, PatchGAN, L1 + SSIM + VGG + adversarial, TTUR; image only")(StackGANGenerator)
