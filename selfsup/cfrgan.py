"""CFR-GAN: complete face recovery (joint de-occlusion and frontalization) guided by the 3DMM.

Paper: Ju et al., "Complete Face Recovery GAN" (``../shared/seeds/cfr_gan_swap_rr.txt``):
§3.3 (eqs. 7–14) for the networks and losses, §4.1 for the settings. The networks themselves
(generator with the occlusion-parsing path, two-scale critic, WGAN-div penalty) are in
:mod:`selfsup.cfrgan_nets`; this module registers the generator as ``cfrgan``
(:mod:`face3d.generator`) and trains it on the generic trainer.

Inputs and outputs (``face3d.generator`` conventions): ``GeneratorInput.render_p`` is the
R_p-like input (at test time R_ps rendered once at the target pose; in training R_psr of
Swap-R&R), ``render_e`` the occlusion-free guide R_e (R_es in training). The output is the
recovered image and the occlusion mask M_o (1 = occluded). G's raw output is returned, not a
composite with the input: at a new pose every pixel is regenerated (§4.2 composites
de-occluded results with the photo through M_o; callers can do that with the mask).

Training (:class:`CFRGANTask`, phases ``{"D", "G"}``), per step on a Swap-R&R pair
(:class:`selfsup.swap_rr.SwapRRDataset` items ``image`` I, ``render_psr``, ``render_es``,
``mask`` M, ``face_mask``):

* RandomErasing (§3.3, to keep the facial components generated and M less one-sided): with
  probability ``random_erasing`` a rectangle of R_psr inside the face is filled with noise
  and added to M (:class:`face3d.regressor.train.RandomErasing`, Zhong et al.).
* D (eq. 7): ``L_D = −E D(I) + E D(G) + GP``, WGAN-div GP with k = 2, p = 6.
* G (eq. 14): ``L = L_adv + λ_id L_id + λ_m L_m + λ_per L_per + λ_rec L_rec`` with
  eq. 8 ``L_adv = −E D(G)``, eq. 13 ``L_id = 1 − cos`` of ArcFace embeddings of I and G
  (:class:`face3d.regressor.losses.IdentityLoss`, network from ``identity_net``), eq. 10
  ``L_m`` = mean squared error of M_o and M, eq. 12 ``L_per`` VGG-19 L1
  (:class:`face3d.nn.vgg.PerceptualLoss`, weights from ``perceptual_net``), eq. 11
  ``L_rec = Σ M·Σ_c|G − I| / Σ M``.

Numbers: the paper gives 224² inputs, AdamW, IN + SN in G, a two-scale 6-layer D, and not its
λs or learning rate; those are the authors' released training script's values for the VGG
perceptual network: λ_adv 1, λ_id 1.5, λ_m 2, λ_per 0.35, λ_rec 0.25, lr 2e-4, betas (0.5,
0.99), batch 32, one critic step per generator step, random erasing of 40% of the inputs. The
identity crop (rows 15…184, columns 15…209 of the 224² aligned crop, resized to 112²) is
theirs as well. Their AdamW keeps torch's default weight decay (0.01); so do we.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from face3d.config import config_to_dict
from face3d.generator import (Generator, GeneratorInput, GeneratorOutput, generator_state, load_generator,
                              register_generator)
from face3d.training.config import OptimizerConfig, TrainerConfig
from face3d.training.grid import make_grid
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask
from selfsup.cfrgan_nets import CFRNet, MultiScaleDiscriminator, critic_loss
from selfsup.swap_rr import SwapRRConfig

__all__ = ["CFRGANConfig", "CFRGANDiscriminatorConfig", "CFRGANLossConfig", "CFRGANTrainConfig", "CFRGAN",
           "CFRGANTask", "build_discriminator", "build_cfrgan_dataset", "masked_l1_loss", "mask_loss",
           "identity_crop_warp", "train_cfrgan", "ID_CROP_224"]


#: the authors' identity crop of the 224² aligned face: (left, top, right, bottom) as fractions
ID_CROP_224 = (15 / 224, 15 / 224, 209 / 224, 184 / 224)


# --------------------------------------------------------------------------- configuration
@dataclass
class CFRGANConfig:
    """Architecture of the CFR-GAN generator (:class:`selfsup.cfrgan_nets.CFRNet`).

    Attributes:
        image_size: crop side S (224 in the paper); must divide by 2^n_downsampling.
        ngf: full-resolution feature channels (CycleGAN's 64).
        n_downsampling: stride-2 gated levels (CycleGAN's 2).
        n_blocks: residual blocks (CycleGAN's 9).
    """

    image_size: int = 224
    ngf: int = 64
    n_downsampling: int = 2
    n_blocks: int = 9

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.ngf < 1 or self.n_downsampling < 1 or self.n_blocks < 0:
            raise ValueError(f"bad CFR-GAN generator settings: image_size={self.image_size}, ngf={self.ngf}, "
                             f"n_downsampling={self.n_downsampling}, n_blocks={self.n_blocks}")
        if self.image_size % 2 ** self.n_downsampling:
            raise ValueError(f"image_size {self.image_size} must divide by 2^n_downsampling = "
                             f"{2 ** self.n_downsampling}")


@dataclass
class CFRGANDiscriminatorConfig:
    """The two-scale critic (§4.1): ``scales`` PatchGANs of ``n_conv`` convolutions, ``ndf`` first channels."""

    ndf: int = 64
    n_conv: int = 6
    scales: int = 2

    def __post_init__(self) -> None:
        if self.ndf < 1 or self.n_conv < 3 or self.scales < 1:
            raise ValueError(f"bad discriminator settings: ndf={self.ndf}, n_conv={self.n_conv}, scales={self.scales}")


@dataclass
class CFRGANLossConfig:
    """Loss weights of eq. 14 and the WGAN-div penalty of eq. 7 (module doc for the sources).

    Attributes:
        w_adv, w_id, w_mask, w_per, w_rec: λ of L_adv, L_id, L_m, L_per, L_rec.
        gp_k, gp_p: WGAN-div's k and p.
        perceptual_layers, perceptual_weights: VGG-19 layers of L_per and their weights
            (pix2pixHD's relu1_1…relu5_1 with 1/32…1, as the authors' code).
        id_crop: (left, top, right, bottom) fractions of the crop fed to the identity network.
    """

    w_adv: float = 1.0
    w_id: float = 1.5
    w_mask: float = 2.0
    w_per: float = 0.35
    w_rec: float = 0.25
    gp_k: float = 2.0
    gp_p: float = 6.0
    perceptual_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    perceptual_weights: tuple[float, ...] = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
    id_crop: tuple[float, float, float, float] = ID_CROP_224

    def __post_init__(self) -> None:
        if min(self.w_adv, self.w_id, self.w_mask, self.w_per, self.w_rec, self.gp_k) < 0 or self.gp_p <= 0:
            raise ValueError("CFR-GAN loss weights must be >= 0 and gp_p > 0")
        if len(self.perceptual_layers) != len(self.perceptual_weights):
            raise ValueError("perceptual_layers and perceptual_weights must have the same length")
        l, t, r, b = self.id_crop
        if not (0.0 <= l < r <= 1.0 and 0.0 <= t < b <= 1.0):
            raise ValueError(f"id_crop must be (left, top, right, bottom) fractions with left < right, top < bottom, "
                             f"got {self.id_crop}")


def _trainer_defaults() -> TrainerConfig:
    # AdamW, lr 2e-4, betas (0.5, 0.99), batch 32 (authors' script); 100k steps is our choice
    # (the paper trains 80 epochs of CelebA-HQ + CelebA + FFHQ, a size this toolkit cannot assume)
    return TrainerConfig(max_steps=100_000, batch_size=32, out_dir="runs/cfrgan",
                         optim=OptimizerConfig(name="adamw", lr=2e-4, betas=(0.5, 0.99), weight_decay=0.01),
                         sample_count=8)


@dataclass
class CFRGANTrainConfig:
    """A CFR-GAN training run (YAML / ``--set`` overridable).

    Attributes:
        trainer: the generic trainer's settings (AdamW 2e-4, betas (0.5, 0.99), batch 32).
        data: folder of face photos (Swap-R&R pairs are synthesised from them on the fly).
        init: generator weights to start from (a :func:`~face3d.generator.save_generator`
            file or a CFR-GAN run folder / checkpoint); None: random initialisation.
        model: generator architecture (``model.image_size`` is the training crop size).
        discriminator: the critic's architecture.
        loss: loss weights.
        perceptual_net: VGG-19 weights (torchvision layout) for L_per; None: L_per off.
        identity_net: ArcFace IResNet weights for L_id; None: L_id off.
        identity_arch: its architecture (:data:`face3d.regressor.identity.IDENTITY_ARCHS`).
        random_erasing: probability of erasing a rectangle of the input (authors: 0.4).
        swap_rr: the Swap-R&R data settings (:class:`selfsup.swap_rr.SwapRRConfig`: model,
            cache, yaw range, …); its ``image_size`` is replaced by ``model.image_size``.
    """

    trainer: TrainerConfig = field(default_factory=_trainer_defaults)
    data: Optional[str] = None
    init: Optional[str] = None
    model: CFRGANConfig = field(default_factory=CFRGANConfig)
    discriminator: CFRGANDiscriminatorConfig = field(default_factory=CFRGANDiscriminatorConfig)
    loss: CFRGANLossConfig = field(default_factory=CFRGANLossConfig)
    perceptual_net: Optional[str] = None
    identity_net: Optional[str] = None
    identity_arch: str = "iresnet50"
    random_erasing: float = 0.4
    swap_rr: SwapRRConfig = field(default_factory=SwapRRConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"random_erasing must be a probability, got {self.random_erasing}")


# --------------------------------------------------------------------------- entry point
def build_cfrgan_dataset(config: CFRGANTrainConfig):
    """Swap-R&R pairs from the photos of ``config.data`` at ``config.model.image_size``."""
    if not config.data:
        raise ValueError("CFR-GAN training needs a folder of face photos: data (--data DIR)")
    if not Path(config.data).is_dir():
        raise FileNotFoundError(f"{config.data}: no such folder")
    from selfsup.swap_rr import SwapRRDataset

    return SwapRRDataset(config.data, dataclasses.replace(config.swap_rr, image_size=config.model.image_size))


def train_cfrgan(config: CFRGANTrainConfig):
    """Build the task and the Swap-R&R data of ``config`` and run the trainer; returns the
    :class:`~face3d.training.trainer.Trainer`. The full settings are also written next to the
    run as ``cfrgan.yaml``."""
    import yaml

    from face3d.io_utils import atomic_write
    from face3d.training.trainer import Trainer, dist_env

    task = CFRGANTask(config)
    dataset = build_cfrgan_dataset(config)
    if dist_env()[1] == 0:
        out = Path(config.trainer.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "cfrgan.yaml") as tmp:
            Path(tmp).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return Trainer(task, dataset, config.trainer).fit()


# --------------------------------------------------------------------------- the generator
@register_generator("cfrgan", CFRGANConfig, train_config=CFRGANTrainConfig, train=train_cfrgan,
                    summary="CFR-GAN (Ju et al.): 3D-guided de-occlusion and frontalization from R_p and R_e, "
                            "with an occlusion mask")
class CFRGAN(Generator):
    """The registered CFR-GAN generator: ``GeneratorInput(render_p, render_e)`` → image + M_o.

    ``render_p`` (R_p or R_ps at the target pose) and ``render_e`` (R_e) are required
    (:meth:`check_input`); ``image`` is only checked for its size. The network is
    :class:`selfsup.cfrgan_nets.CFRNet` (``self.net``).
    """

    uses_3d = True

    def __init__(self, config: Optional[CFRGANConfig] = None) -> None:
        super().__init__(config if config is not None else CFRGANConfig())
        c = self.config
        self.net = CFRNet(c.ngf, c.n_downsampling, c.n_blocks)

    def check_input(self, inputs: GeneratorInput) -> None:
        super().check_input(inputs)
        s = self.image_size
        for name in ("render_p", "render_e"):
            t = getattr(inputs, name)
            if t.dim() != 4 or tuple(t.shape[1:]) != (3, s, s) or t.shape[0] != inputs.batch:
                raise ValueError(f"cfrgan: {name} must be ({inputs.batch}, 3, {s}, {s}), got {tuple(t.shape)}")

    def forward(self, inputs: GeneratorInput) -> GeneratorOutput:
        """(B, 3, S, S) R_p, R_e in [0, 1] → image (B, 3, S, S) in [0, 1], M_o (B, 1, S, S)."""
        self.check_input(inputs)
        image, mask = self.net(inputs.render_p, inputs.render_e)
        return GeneratorOutput(image=image, mask=mask)


def build_discriminator(config: CFRGANDiscriminatorConfig = CFRGANDiscriminatorConfig()) -> MultiScaleDiscriminator:
    """The two-scale critic of ``config``."""
    return MultiScaleDiscriminator(config.ndf, config.n_conv, config.scales)


# --------------------------------------------------------------------------- losses
def masked_l1_loss(output: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-7) -> Tensor:
    """Eq. 11: ``Σ_pixels M · Σ_c |output − target| / Σ_pixels M`` over the whole batch.

    ``output``, ``target`` (B, 3, H, W); ``mask`` (B, 1, H, W) in [0, 1]. Zero where M is empty.
    """
    return (mask * (output - target).abs().sum(1, keepdim=True)).sum() / (mask.sum() + eps)


def mask_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 10, ``‖M_o − M‖₂`` taken as the mean squared error over pixels (the authors' code),
    which keeps λ_m independent of the image size."""
    return F.mse_loss(pred, target)


def identity_crop_warp(crop: tuple[float, float, float, float], batch: int, device: Any = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 2, 3) affine for :class:`~face3d.regressor.losses.IdentityLoss`: the network's
    normalised output coordinates → the crop's, sampling the box ``crop`` = (left, top,
    right, bottom) as fractions of the image (``F.affine_grid``, align_corners=False)."""
    l, t, r, b = crop
    theta = torch.tensor([[r - l, 0.0, l + r - 1.0], [0.0, b - t, t + b - 1.0]], device=device, dtype=dtype)
    return theta.expand(batch, 2, 3)


# --------------------------------------------------------------------------- training task
def _erase_inputs(render: Tensor, mask: Tensor, face: Tensor, prob: float, rng: np.random.Generator
                  ) -> tuple[Tensor, Tensor]:
    """RandomErasing of R_psr inside the face (``face`` (B, 1, S, S)), the erased pixels added to M."""
    from face3d.regressor.train import RandomErasing

    eraser = RandomErasing(p=prob)
    outs, masks = [], []
    for img, m, f in zip(render, mask, face):
        erased, region = eraser(img, rng)
        region = region * (f > 0.5).to(region)
        outs.append(img * (1 - region) + erased * region)
        masks.append(torch.maximum(m, region))
    return torch.stack(outs), torch.stack(masks)


class CFRGANTask(TrainingTask):
    """CFR-GAN's training (module doc): modules ``generator`` (:class:`CFRGAN`) and
    ``discriminator``; phases ``D`` then ``G`` each step.

    Args:
        config: the run's settings.
        perceptual: a :class:`~face3d.nn.vgg.PerceptualLoss` to use instead of the one of
            ``config.perceptual_net`` (tests: a randomly initialised VGG-19).
        identity: an :class:`~face3d.regressor.losses.IdentityLoss` instead of ``config.identity_net``'s.

    Logged: ``D/loss``, ``D/real``, ``D/fake``, ``D/gp``; ``G/loss``, ``G/adv``, ``G/rec``,
    ``G/mask``, and ``G/per``, ``G/id`` when those terms are on.
    """

    def __init__(self, config: CFRGANTrainConfig, perceptual: Optional[nn.Module] = None,
                 identity: Optional[nn.Module] = None) -> None:
        self.config = config
        if perceptual is None and config.perceptual_net and config.loss.w_per > 0:
            from face3d.nn.vgg import PerceptualLoss, load_vgg19

            perceptual = PerceptualLoss(config.loss.perceptual_layers, config.loss.perceptual_weights,
                                        vgg=load_vgg19(config.perceptual_net))
        if identity is None and config.identity_net and config.loss.w_id > 0:
            from face3d.regressor.identity import load_identity_net
            from face3d.regressor.losses import IdentityLoss

            identity = IdentityLoss(load_identity_net(config.identity_net, config.identity_arch))
        self.perceptual, self.identity = perceptual, identity
        self.generator: Optional[CFRGAN] = None

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        gen = CFRGAN(self.config.model)
        if self.config.init:
            src = load_generator(self.config.init, name="cfrgan")
            if src.config != gen.config:
                raise ValueError(f"{self.config.init}: its generator settings {src.config} differ from model "
                                 f"{gen.config}")
            gen.load_state_dict(src.state_dict())
        disc = build_discriminator(self.config.discriminator)
        for m in (self.perceptual, self.identity):
            if m is not None:
                m.to(device)
        self.generator = gen.to(device)
        return {"generator": self.generator, "discriminator": disc.to(device)}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        return {"D": OptimizerSpec(modules["discriminator"].parameters()),
                "G": OptimizerSpec(modules["generator"].parameters())}

    def prepare(self, batch: Mapping[str, Tensor], rng: Optional[np.random.Generator]) -> dict[str, Tensor]:
        """Inputs of a step: I, R_psr (randomly erased with ``rng``; None: not erased), R_es, M."""
        image = batch["image"].float()
        rp, re, m = batch["render_psr"].float(), batch["render_es"].float(), batch["mask"].float()
        face = batch.get("face_mask")
        face = torch.ones_like(m) if face is None else face.float()
        if rng is not None and self.config.random_erasing > 0:
            rp, m = _erase_inputs(rp, m, face, self.config.random_erasing, rng)
        return {"image": image, "render_p": rp, "render_e": re, "mask": m}

    def _rng(self, ctx: StepContext) -> np.random.Generator:
        # one draw per (step, micro-batch, rank): the D and G phases of a step see the same
        # erased inputs, and a resumed run erases as the interrupted one would have
        return np.random.default_rng([self.config.trainer.seed, ctx.step, ctx.micro, ctx.rank])

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        x = self.prepare(batch, self._rng(ctx))
        gen, disc, w = modules["generator"], modules["discriminator"], self.config.loss
        inputs = GeneratorInput(image=x["render_p"], render_e=x["render_e"], render_p=x["render_p"])
        if ctx.phase == "D":
            with torch.no_grad():
                fake = gen(inputs).image
            return critic_loss(disc, x["image"], fake, w.gp_k, w.gp_p)
        out = gen(inputs)
        terms: dict[str, Tensor] = {
            "adv": -disc(out.image).mean(),
            "rec": masked_l1_loss(out.image, x["image"], x["mask"]),
            "mask": mask_loss(out.mask, x["mask"]),
        }
        total = w.w_adv * terms["adv"] + w.w_rec * terms["rec"] + w.w_mask * terms["mask"]
        if self.perceptual is not None and w.w_per > 0:
            terms["per"] = self.perceptual(out.image, x["image"])
            total = total + w.w_per * terms["per"]
        if self.identity is not None and w.w_id > 0:
            warp = identity_crop_warp(w.id_crop, out.image.shape[0], out.image.device, out.image.dtype)
            terms["id"] = self.identity(out.image, x["image"], warp)
            total = total + w.w_id * terms["id"]
        result = {k: v.detach() for k, v in terms.items()}
        result["loss"] = total
        return result

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        """Per pair, one row: I | R_psr | R_es | output | M_o (inputs not erased)."""
        x = self.prepare(batch, None)
        out = modules["generator"](GeneratorInput(image=x["render_p"], render_e=x["render_e"],
                                                  render_p=x["render_p"]))
        tiles = torch.stack([x["image"], x["render_p"], x["render_e"], out.image,
                             out.mask.expand_as(out.image)], 1).flatten(0, 1)
        return make_grid(tiles.float().clamp(0, 1), nrow=5)

    def state_dict(self) -> dict[str, Any]:
        if self.generator is None:
            raise ValueError("CFRGANTask.state_dict() before build()")
        return {"generator": generator_state(self.generator), "cfrgan_config": config_to_dict(self.config)}
