"""The 3DMM-conditioned face de-occlusion GAN (Yuan & Park).

Paper: ``../shared/seeds/3dmm_conditioned_gan_sfs.txt`` §4 (generator, discriminators, eqs. 3–8)
and §5.2 (training). The generator sees the occluded crop I concatenated with the 3DMM
synthesis I_s of the face fitted to it — the model's albedo under the estimated light, free of
occluders by construction (``GeneratorInput.render_e``) — and outputs the occlusion-free crop.

* **Generator** (§4.1, :class:`ConditionedUNet`): the encoder-decoder with skips of pix2pix
  ([12], Isola et al. 2017): Convolution-BatchNorm-ReLU modules (4×4, stride 2; LeakyReLU 0.2 in
  the encoder), down to 1×1 for a 256² input (8 levels), U-Net skips, dropout 0.5 in the
  three innermost decoder layers, tanh output.
* **Discriminators** (§4.2, :class:`SilhouetteDiscriminator`): a global D_g on the whole crop
  and a local D_l on ``M ⊙ image``, M the 3DMM's projected face silhouette
  (``GeneratorInput.face_mask``); each "seven convolution layers" then a convolution to one
  output and a sigmoid (eqs. 5–6).
* **Losses** (eq. 8): ``λ1 L_gen + λ2 L_tv + λ3 L_adv_g + λ4 L_adv_l + λ5 L_Dl + λ6 L_Dg`` with
  λ = 10, 1e-5, 1, 1, 1, 1 (§5.2); L_gen = |G(I, I_s) − I_g|₁ (eq. 3), L_tv the squared
  image gradients (eq. 4), the log-loss GAN terms (eqs. 5–7).
* **Training** (§5.2): batch 5, Adam; stage 1 trains G and D_g with TV at learning rate 2e-4
  (100 epochs); stage 2 adds D_l, drops TV and fine-tunes at 5e-5 (10 epochs). Random
  horizontal flips (§5.1).

Where the paper is silent, our choices (one line each):

* L1 is the per-pixel mean on [0, 1] images; L_tv is the *sum* of squared forward differences
  over pixels and channels, averaged over the batch (with λ2 = 1e-5 a per-pixel mean would make
  the term vanish, whereas the sum gives it the small, non-zero weight the paper describes).
* Discriminator layers: 4×4 convolutions, stride 2 while the map is larger than 2×2 (stride 1,
  3×3 after that), widths 64·2^k up to 512, BatchNorm (not on the first) and LeakyReLU 0.2; the
  last convolution covers the remaining map to give one logit. The sigmoid is folded into the
  numerically stable log-loss (``binary_cross_entropy_with_logits``).
* Adam β = (0.5, 0.999) (pix2pix's, the paper names Adam only). No random crops: the
  synthesis must stay registered with the crop.
* Stage 2 starts G and D_g from the stage-1 checkpoint (``init``); D_l starts fresh.

Output: the paper does not compose (L_gen covers the whole image), so ``image`` is G's output
as is; the generator predicts no mask, so ``mask`` is
:func:`face3d.generator.difference_mask` of output and input (where G changed the crop).

Data: :class:`deocc.data.OccludedFaceDataset` items (``image`` clean, ``occluded``, ``params``
the 3DMM fit); the synthesis and silhouette are rendered in the training step with
:func:`face3d.regressor.losses.render_face` (sRGB, clamped to [0, 1]) and its coverage mask.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from deocc.data import OcclusionDataConfig, build_occlusion_dataset
from face3d.generator import Generator, GeneratorInput, GeneratorOutput, difference_mask, register_generator
from face3d.nn.gan import gan_loss
from face3d.training.checkpoint import module_state
from face3d.training.config import OptimizerConfig, TrainerConfig
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask

__all__ = ["ConditionedGANConfig", "ConditionedGANTrainConfig", "ConditionedGenerator", "ConditionedUNet",
           "SilhouetteDiscriminator", "ConditionedGANTask", "total_variation", "train_conditioned"]


# --------------------------------------------------------------------------- networks
class ConditionedUNet(nn.Module):
    """pix2pix's U-Net ([12] of the paper) on [occluded ‖ synthesis].

    Encoder level i: (LeakyReLU 0.2 →) conv 4×4 s2 (→ BN); the first level has neither
    activation nor BN, the innermost no BN (a 1×1 map). Decoder level j: ReLU → transposed conv
    4×4 s2 → BN (→ dropout for j < 3), fed the previous output ‖ the encoder feature of the same
    scale; the outermost ends in tanh.

    Args:
        in_channels: 6 (two RGB images).
        width, max_width: first-level channels, doubling up to ``max_width``.
        depth: number of levels (the input side must be divisible by 2^depth).
        dropout: decoder dropout of the three innermost levels.

    ``forward``: (B, in_channels, S, S) in [-1, 1] → (B, 3, S, S) in [-1, 1].
    """

    def __init__(self, in_channels: int = 6, width: int = 64, max_width: int = 512, depth: int = 8,
                 dropout: float = 0.5) -> None:
        super().__init__()
        ch = [min(width * 2 ** i, max_width) for i in range(depth)]
        self.down = nn.ModuleList()
        for i in range(depth):
            conv = nn.Conv2d(in_channels if i == 0 else ch[i - 1], ch[i], 4, stride=2, padding=1,
                             bias=i == 0 or i == depth - 1)
            if i == 0:
                self.down.append(conv)
            elif i == depth - 1:
                self.down.append(nn.Sequential(nn.LeakyReLU(0.2), conv))
            else:
                self.down.append(nn.Sequential(nn.LeakyReLU(0.2), conv, nn.BatchNorm2d(ch[i])))
        self.up = nn.ModuleList()
        for j in range(depth):
            cin = ch[depth - 1] if j == 0 else 2 * ch[depth - 1 - j]
            if j < depth - 1:
                cout = ch[depth - 2 - j]
                layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                                           nn.BatchNorm2d(cout)]
                if j < 3 and dropout > 0:
                    layers.append(nn.Dropout(dropout))
                self.up.append(nn.Sequential(*layers))
            else:
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, 3, 4, 2, 1), nn.Tanh()))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        n = len(self.up)
        for j, layer in enumerate(self.up):
            x = layer(x if j == 0 else torch.cat([x, skips[n - 1 - j]], 1))
        return x


class SilhouetteDiscriminator(nn.Module):
    """D_g / D_l of the paper (§4.2): seven convolution layers, then a convolution to one logit.

    Args:
        image_size: input side S.
        width, max_width: channels of the first layer, doubling up to ``max_width``.
        layers: convolution layers before the output one (7 in the paper).

    ``forward``: (B, 3, S, S) in [0, 1] (for D_l already multiplied by the silhouette) →
    (B,) logits; ``sigmoid`` of them is the paper's probability of "real".
    """

    def __init__(self, image_size: int = 256, width: int = 64, max_width: int = 512, layers: int = 7) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c, size = 3, image_size
        for i in range(layers):
            c2 = min(width * 2 ** i, max_width)
            if size > 2:  # halve down to a 2×2 map
                conv = nn.Conv2d(c, c2, 4, 2, 1, bias=i == 0)
                size //= 2
            else:
                conv = nn.Conv2d(c, c2, 3, 1, 1, bias=i == 0)
            mods += [conv] + ([] if i == 0 else [nn.BatchNorm2d(c2)]) + [nn.LeakyReLU(0.2)]
            c = c2
        mods.append(nn.Conv2d(c, 1, size))  # covers the remaining size×size map: one logit
        self.net = nn.Sequential(*mods)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image * 2 - 1).flatten(1).squeeze(1)


def total_variation(image: Tensor) -> Tensor:
    """Eq. 4: Σ (∇x I)² + Σ (∇y I)² over pixels and channels (forward differences), mean over
    the batch. ``image`` (B, C, H, W) → scalar."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return (dx.pow(2).flatten(1).sum(1) + dy.pow(2).flatten(1).sum(1)).mean()


# --------------------------------------------------------------------------- the generator
@dataclass
class ConditionedGANConfig:
    """The generator's architecture.

    Attributes:
        image_size: crop side S (256 in the paper); a multiple of 2^depth (at least 4).
        width, max_width: U-Net channels (pix2pix: 64 … 512).
        depth: U-Net levels; None: as many halvings as S allows, up to 8 (256² → 1×1 as
            pix2pix's U-Net-256).
        dropout: decoder dropout (pix2pix: 0.5; off in eval mode).
        mask_threshold, mask_kernel: :func:`face3d.generator.difference_mask` of the output mask.
    """

    image_size: int = 256
    width: int = 64
    max_width: int = 512
    depth: Optional[int] = None
    dropout: float = 0.5
    mask_threshold: float = 0.1
    mask_kernel: int = 5

    def __post_init__(self) -> None:
        d = self.levels
        if d < 2 or self.image_size % (2 ** d) != 0:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of 2^depth ({2 ** d}), depth >= 2")
        if self.width < 1 or self.max_width < self.width:
            raise ValueError(f"need 1 <= width <= max_width, got {self.width}, {self.max_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be within [0, 1), got {self.dropout}")
        if self.mask_kernel < 1 or self.mask_kernel % 2 == 0:
            raise ValueError(f"mask_kernel must be odd and >= 1, got {self.mask_kernel}")

    @property
    def levels(self) -> int:
        """U-Net levels: ``depth``, or as many halvings as ``image_size`` allows, at most 8
        (256² → 1×1 as pix2pix; 224² → 5 levels, a 7×7 bottleneck)."""
        if self.depth is not None:
            return int(self.depth)
        s, d = int(self.image_size), 0
        while s > 1 and s % 2 == 0 and d < 8:
            s, d = s // 2, d + 1
        return d


class ConditionedGenerator(Generator):
    """G(I, I_s) of the 3DMM-conditioned GAN (module doc).

    3D-guided: needs ``render_e`` (the 3DMM synthesis I_s); ``face_mask`` (the silhouette) is
    used in training only (local discriminator), ``render_p`` not at all.

    ``forward(GeneratorInput)`` → ``GeneratorOutput(image (B, 3, S, S), mask (B, 1, S, S))``.
    """

    uses_3d = True

    def __init__(self, config: ConditionedGANConfig) -> None:
        super().__init__(config)
        self.net = ConditionedUNet(6, config.width, config.max_width, config.levels, config.dropout)

    def check_input(self, inputs: GeneratorInput) -> None:
        s = self.image_size
        if inputs.image.dim() != 4 or tuple(inputs.image.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.name}: image must be (B, 3, {s}, {s}), got {tuple(inputs.image.shape)}")
        if inputs.render_e is None:
            raise ValueError(f"{self.name} is 3D-guided: it needs render_e, the 3DMM synthesis of the fitted face")
        if inputs.render_e.shape != inputs.image.shape:
            raise ValueError(f"{self.name}: render_e {tuple(inputs.render_e.shape)} must match the image "
                             f"{tuple(inputs.image.shape)}")

    def forward(self, inputs: GeneratorInput) -> GeneratorOutput:
        self.check_input(inputs)
        x = torch.cat([inputs.image, inputs.render_e.to(inputs.image)], 1) * 2 - 1
        out = (self.net(x) + 1) * 0.5
        mask = difference_mask(out, inputs.image.to(out), self.config.mask_threshold, self.config.mask_kernel)
        return GeneratorOutput(image=out, mask=mask)


# --------------------------------------------------------------------------- training
@dataclass
class ConditionedGANTrainConfig:
    """A 3DMM-conditioned GAN training run (YAML / ``--set`` overridable); the paper's numbers (§5.2).

    Attributes:
        trainer: the trainer's settings (batch 5, Adam β (0.5, 0.999)); the learning rate is
            the stage's (``lr``), ``trainer.optim.lr`` is not used.
        generator: the architecture.
        data: folder of face photos; synthetic: synthetic 3DMM faces added (0: none).
        occlusion: synthetic-occlusion settings of :mod:`deocc.data` (``image_size`` follows
            ``generator``); ``occlusion.model`` is also the 3DMM of the synthesis.
        stage: 1 (G + D_g, TV on) or 2 (adds D_l, TV off, from ``init``).
        init: stage-1 checkpoint (trainer checkpoint or run folder); required in stage 2.
        lr: (stage 1, stage 2) learning rates of G and the discriminators: 2e-4, 5e-5.
        lambdas: λ1…λ6 of eq. 8: L_gen, L_tv, L_adv_g, L_adv_l, L_Dl, L_Dg.
        d_width, d_layers: discriminator width and convolution layers (64, 7).
        flip_prob: probability of a horizontal flip of a batch (all its images together).
    """

    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        out_dir="runs/conditioned", batch_size=5, optim=OptimizerConfig(lr=2e-4, betas=(0.5, 0.999))))
    generator: ConditionedGANConfig = field(default_factory=ConditionedGANConfig)
    data: Optional[str] = None
    synthetic: int = 0
    occlusion: OcclusionDataConfig = field(default_factory=OcclusionDataConfig)
    stage: int = 1
    init: Optional[str] = None
    lr: tuple[float, float] = (2e-4, 5e-5)
    lambdas: tuple[float, float, float, float, float, float] = (10.0, 1e-5, 1.0, 1.0, 1.0, 1.0)
    d_width: int = 64
    d_layers: int = 7
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if len(self.lr) != 2 or min(self.lr) <= 0:
            raise ValueError(f"lr must be two positive learning rates (stage 1, stage 2), got {self.lr}")
        if len(self.lambdas) != 6 or min(self.lambdas) < 0:
            raise ValueError(f"lambdas must be six non-negative weights, got {self.lambdas}")
        if self.d_layers < 1 or self.d_width < 1 or self.synthetic < 0:
            raise ValueError("d_layers and d_width must be >= 1, synthetic >= 0")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be within 0..1, got {self.flip_prob}")


class ConditionedGANTask(TrainingTask):
    """One stage of the 3DMM-conditioned GAN on the trainer (module doc).

    Modules: ``generator`` (:class:`ConditionedGenerator`), ``global_d``, and in stage 2
    ``local_d``. Optimisers (phases, in order): ``D`` (all discriminators), ``G``; both at the
    stage's learning rate.

    Batches: dicts with ``occluded`` and ``image`` (B, 3, S, S) and either ``render_e`` and
    ``face_mask`` (B, 1, S, S) given, or ``params`` (B, P) the 3DMM fit, from which the
    synthesis and silhouette are rendered with ``model``.

    Logged terms: D phase ``d_global``, ``d_local``; G phase ``l1``, ``tv``, ``adv_global``,
    ``adv_local`` and ``loss``.

    Args:
        config: the run's settings.
        model: the :class:`~face3d.morphable_model.MorphableModel` of ``params`` (default:
            ``load_model(config.occlusion.model)``, loaded on first need).
    """

    def __init__(self, config: ConditionedGANTrainConfig, model: Optional[nn.Module] = None) -> None:
        self.config = config
        if config.stage == 2:
            if not config.init:
                raise ValueError("conditioned stage 2 needs the stage-1 weights: give init (--init CKPT)")
            if not Path(config.init).exists():
                raise FileNotFoundError(f"{config.init}: no such checkpoint (stage-1 weights for stage 2)")
        self.model = model
        self._renderer = None
        self._cache: Optional[tuple[tuple[int, int], dict[str, Tensor]]] = None

    # ---------------------------------------------------------------- setup
    def build(self, device: torch.device) -> dict[str, nn.Module]:
        cfg = self.config
        s = cfg.generator.image_size
        gen = ConditionedGenerator(cfg.generator)
        dg = SilhouetteDiscriminator(s, cfg.d_width, layers=cfg.d_layers)
        mods: dict[str, nn.Module] = {"generator": gen, "global_d": dg}
        if cfg.stage == 2:
            from face3d.generator import load_generator

            src = load_generator(cfg.init, name="conditioned")
            try:
                gen.load_state_dict(src.state_dict())
                dg.load_state_dict(module_state(cfg.init, "global_d"))
            except RuntimeError as e:
                raise ValueError(f"{cfg.init}: the stage-1 weights do not fit this configuration "
                                 f"({str(e).strip().splitlines()[0]})") from None
            mods["local_d"] = SilhouetteDiscriminator(s, cfg.d_width, layers=cfg.d_layers)
        if self.model is not None:
            self.model = self.model.to(device)
        return {k: m.to(device) for k, m in mods.items()}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        cfg = self.config
        optim = dataclasses.replace(cfg.trainer.optim, lr=cfg.lr[cfg.stage - 1])
        d_params = [p for k in ("global_d", "local_d") if k in modules for p in modules[k].parameters()]
        return {"D": OptimizerSpec(d_params, optim=optim), "G": OptimizerSpec(modules["generator"].parameters(),
                                                                               optim=optim)}

    # ---------------------------------------------------------------- data
    def _model(self, device: torch.device):
        if self.model is None:
            from face3d.model_zoo import load_model

            self.model = load_model(self.config.occlusion.model, device=device)
        return self.model

    def synthesis(self, params: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """The 3DMM synthesis I_s (B, 3, S, S) sRGB in [0, 1] and the face silhouette M
        (B, 1, S, S) of coefficient vectors ``params`` (B, P), without gradients."""
        from face3d.coefficients import FaceParams
        from face3d.regressor.losses import render_face
        from face3d.render import Renderer, RenderSettings

        model = self._model(params.device)
        if self._renderer is None or self._renderer.settings.size != (size, size):
            self._renderer = Renderer(RenderSettings(image_size=size))
        with torch.no_grad():
            p = FaceParams.split(params.to(model.device, model.dtype), model)
            r = render_face(model, p, size, self._renderer)
        return r.srgb.clamp(0, 1).to(params), r.mask.to(params)

    def prepare(self, batch: Mapping[str, Tensor], ctx: Optional[StepContext] = None) -> dict[str, Tensor]:
        """The step's tensors: ``occluded``, ``image``, ``render_e``, ``face_mask``, flipped
        together with probability ``flip_prob``. Cached per (step, micro-batch), so the D and
        G phases of a step see the same flip and render once."""
        key = (ctx.step, ctx.micro) if ctx is not None else None
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        occ, img = batch["occluded"].float(), batch["image"].float()
        if "render_e" in batch and "face_mask" in batch:
            syn, sil = batch["render_e"].float(), batch["face_mask"].float()
        else:
            syn, sil = self.synthesis(batch["params"], int(img.shape[-1]))
        out = {"occluded": occ, "image": img, "render_e": syn, "face_mask": sil}
        if ctx is not None and self.config.flip_prob > 0:
            # drawn from torch's global stream, which the trainer checkpoints: resumes exactly
            flip = torch.rand(occ.shape[0]) < self.config.flip_prob
            if bool(flip.any()):
                f = flip.to(occ.device)[:, None, None, None]
                out = {k: torch.where(f, v.flip(-1), v) for k, v in out.items()}
        if key is not None:
            self._cache = (key, out)
        return out

    # ---------------------------------------------------------------- steps
    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.config
        lam = cfg.lambdas
        b = self.prepare(batch, ctx)
        gin = GeneratorInput(image=b["occluded"], render_e=b["render_e"], face_mask=b["face_mask"])
        real, sil = b["image"], b["face_mask"]
        local = "local_d" in modules
        if ctx.phase == "D":
            with torch.no_grad():
                fake = modules["generator"](gin).image
            dg = modules["global_d"]
            l_dg = gan_loss(dg(real), True) + gan_loss(dg(fake), False)  # eq. 5
            total = lam[5] * l_dg
            out = {"d_global": l_dg.detach()}
            if local:
                dl = modules["local_d"]
                l_dl = gan_loss(dl(sil * real), True) + gan_loss(dl(sil * fake), False)  # eq. 6
                total = total + lam[4] * l_dl
                out["d_local"] = l_dl.detach()
            out["loss"] = total
            return out
        fake = modules["generator"](gin).image
        l1 = (fake - real).abs().mean()  # eq. 3
        adv_g = gan_loss(modules["global_d"](fake), True)  # eq. 7
        total = lam[0] * l1 + lam[2] * adv_g
        out = {"l1": l1.detach(), "adv_global": adv_g.detach()}
        if cfg.stage == 1:
            tv = total_variation(fake)  # eq. 4, stage 1 only
            total = total + lam[1] * tv
            out["tv"] = tv.detach()
        if local:
            adv_l = gan_loss(modules["local_d"](sil * fake), True)
            total = total + lam[3] * adv_l
            out["adv_local"] = adv_l.detach()
        out["loss"] = total
        return out

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        from face3d.training.grid import make_grid

        b = self.prepare(batch)
        out = modules["generator"](GeneratorInput(image=b["occluded"], render_e=b["render_e"],
                                                  face_mask=b["face_mask"]))
        cols = [b["occluded"], b["render_e"], out.image, out.mask.expand_as(out.image), b["image"]]
        return make_grid(torch.stack(cols, 1).flatten(0, 1).clamp(0, 1), nrow=len(cols))

    def state_dict(self) -> dict[str, Any]:
        from face3d.config import config_to_dict

        # what face3d.generator.generator_state gives for the trained generator
        return {"generator": {"name": ConditionedGenerator.name, "config": config_to_dict(self.config.generator)},
                "train_config": config_to_dict(self.config)}


def train_conditioned(config: ConditionedGANTrainConfig, model: Optional[nn.Module] = None):
    """Train one stage of the 3DMM-conditioned GAN as ``config`` says; returns the finished
    :class:`~face3d.training.trainer.Trainer`."""
    from face3d.training.trainer import Trainer

    task = ConditionedGANTask(config, model)
    # one copy of the 3DMM for the data (fits, synthetic faces) and the synthesis
    dataset = build_occlusion_dataset(config.occlusion, config.generator.image_size, config.data,
                                      config.synthetic, task._model(torch.device("cpu")))
    return Trainer(task, dataset, config.trainer).fit()


register_generator("conditioned", ConditionedGANConfig, train_config=ConditionedGANTrainConfig,
                   train=train_conditioned,
                   summary="3DMM-conditioned GAN (Yuan & Park): pix2pix U-Net on [occluded ‖ 3DMM synthesis], "
                           "global + silhouette-local discriminators, L1 + TV + adversarial")(ConditionedGenerator)
