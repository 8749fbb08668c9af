"""CFR-GAN's networks: the generator with its occlusion-parsing path, the two-scale
discriminator and the WGAN-div gradient penalty.

Paper: Ju et al., "Complete Face Recovery GAN" (``../shared/seeds/cfr_gan_swap_rr.txt``), §3.3
(eqs. 7–9, Fig. 4) and §4.1 (implementation details). The registered generator, the losses and
the training task are in :mod:`selfsup.cfrgan`.

Generator (§3.3, "Generator"): CycleGAN's ResNet generator (Zhu et al. 2017: a 7×7 stem,
``n_downsampling`` stride-2 convolutions, ``n_blocks`` residual blocks, as many transposed
convolutions, a 7×7 output convolution with tanh) with two changes:

* two stems, one for R_p (the input with occlusions) and one for R_e (the occlusion-free 3DMM
  render), whose full-resolution features meet in the **3D-guided occlusion attention** of
  eq. 9: ``f_o = IN((f_p − f_e)²)``, ``f_p ← f_p ⊙ (1 − σ(f_o))`` (:class:`OcclusionAttention`);
* the down-sampling convolutions are **gated convolutions** (Yu et al. 2019): a feature branch
  and a gating branch; the gate ``σ(g)`` reads as "occluded here" and suppresses the feature
  (``out = feature ⊙ (1 − σ(g))``), so it follows the attention's convention. The gating maps
  ``g`` of every level and ``f_o`` are combined by the **mixing module**
  (:class:`MixingModule`) into the occlusion mask ``M_o`` (1 = occluded).

§4.1: instance normalisation and spectral normalisation (Miyato et al. 2018) on every layer of
G except the occlusion-parsing path O (= the attention's own IN of eq. 9 and the mixing
module, which are plain convolutions). Where the paper is silent we chose: ReLU in the
generation path (CycleGAN's), LeakyReLU 0.2 in O; the attention's IN has a learnable
per-channel scale and shift (initialised to 1 and 0, so eq. 9 holds exactly at start) so the
network can sharpen or soften the attention; weights N(0, 0.02) as in CycleGAN in the
normalised layers, torch's fan-in scaled default in the unnormalised mixing module.

Discriminator (§3.3 "Discriminator", §4.1): pix2pixHD's multi-scale PatchGAN (Wang et al.
2018) with two scales (the second sees the image average-pooled by 2) of the same structure,
6 convolutions each (pix2pixHD's ``n_layers = 4``: four 4×4 stride-2 convolutions 64…512, one
stride-1 convolution, one to 1 channel). As a Wasserstein critic it has no normalisation
layers; its convolutions are spectrally normalised (our choice: it keeps the critic's
Lipschitz constant in check next to the penalty; the paper does not say).

The critic score of an image is one number: the sum over scales of the mean of that scale's
patch map (:meth:`MultiScaleDiscriminator.forward`). The WGAN-div penalty (Wu et al. 2018,
with their k = 2, p = 6; CFR-GAN does not change them) is ``k · E_{x ~ P_u} ‖∇_x D(x)‖^p`` with
P_u the even mix of the real and generated batches (:func:`wgan_div_penalty`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["OcclusionAttention", "GatedDownsample", "ResidualBlock", "MixingModule", "CFRNet",
           "PatchDiscriminator", "MultiScaleDiscriminator", "wgan_div_penalty", "critic_loss",
           "has_spectral_norm"]


def _init(m: nn.Module) -> nn.Module:
    """CycleGAN / pix2pixHD initialisation: weights N(0, 0.02), biases 0 (before spectral norm)."""
    nn.init.normal_(m.weight, 0.0, 0.02)
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return m


def _sn_conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, sn: bool = True) -> nn.Module:
    conv = _init(nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
    return spectral_norm(conv) if sn else conv


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether ``module``'s ``weight`` is spectrally normalised (a torch parametrization)."""
    return parametrize.is_parametrized(module, "weight") and any(
        "SpectralNorm" in type(p).__name__ for p in module.parametrizations["weight"])


class OcclusionAttention(nn.Module):
    """3D-guided occlusion attention, CFR-GAN eq. 9.

    ``f_o = IN((f_p − f_e)²)``; ``f_p' = f_p ⊙ (1 − σ(f_o))``. The instance norm has a learnable
    per-channel affine (identity at initialisation). Part of the O path: no spectral norm.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=True, eps=eps)

    def forward(self, f_p: Tensor, f_e: Tensor) -> tuple[Tensor, Tensor]:
        """``f_p``, ``f_e`` (B, C, H, W) → (attended ``f_p'`` (B, C, H, W), ``f_o`` (B, C, H, W))."""
        f_o = self.norm((f_p - f_e).square())
        return f_p * (1.0 - torch.sigmoid(f_o)), f_o


class GatedDownsample(nn.Module):
    """A stride-2 gated convolution (Yu et al. 2019) of the generation path.

    feature = ReLU(IN(conv_f(x))), gating logits g = IN(conv_g(x)) (both 3×3, stride 2,
    reflection-padded, spectrally normalised); output ``feature ⊙ (1 − σ(g))`` and ``g``, which
    the mixing module turns into the occlusion mask.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.feature = nn.Sequential(nn.ReflectionPad2d(1), _sn_conv(cin, cout, 3, stride=2),
                                     nn.InstanceNorm2d(cout), nn.ReLU())
        self.gate = nn.Sequential(nn.ReflectionPad2d(1), _sn_conv(cin, cout, 3, stride=2), nn.InstanceNorm2d(cout))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Cin, H, W) → ((B, Cout, H/2, W/2) gated features, (B, Cout, H/2, W/2) gating logits)."""
        g = self.gate(x)
        return self.feature(x) * (1.0 - torch.sigmoid(g)), g


class ResidualBlock(nn.Module):
    """CycleGAN's residual block: x + IN(conv(ReLU(IN(conv(x))))), 3×3 reflection-padded, spectral norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), _sn_conv(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), _sn_conv(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MixingModule(nn.Module):
    """The mixing module of the O path: gating maps of every level + ``f_o`` → mask M_o.

    From the coarsest gating map up, each level is doubled in resolution by a 4×4 transposed
    convolution (channels halved), concatenated with the next finer map (the gating logits of
    that level, or ``f_o`` at full resolution) and fused by a 3×3 convolution; a last 3×3
    convolution and a sigmoid give the mask. Plain convolutions, LeakyReLU 0.2 (no IN/SN: O path).

    Args:
        ngf: channels of ``f_o`` (level 0); level i has ``ngf · 2^i``.
        levels: number of down-sampling levels (gating maps).
    """

    def __init__(self, ngf: int, levels: int) -> None:
        super().__init__()
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(levels, 0, -1):  # from level i to level i - 1
            c, c_out = ngf * 2 ** i, ngf * 2 ** (i - 1)
            # torch's default (fan-in scaled) initialisation: with no normalisation in this path,
            # N(0, 0.02) weights would shrink the signal at every layer and stall the mask
            self.up.append(nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1))
            self.fuse.append(nn.Conv2d(2 * c_out, c_out, 3, padding=1))
        self.out = nn.Conv2d(ngf, 1, 3, padding=1)

    def forward(self, f_o: Tensor, gates: Sequence[Tensor]) -> Tensor:
        """``f_o`` (B, ngf, H, W), ``gates[i]`` (B, ngf·2^(i+1), H/2^(i+1), W/2^(i+1)) → M_o (B, 1, H, W) in (0, 1)."""
        finer = [f_o, *gates[:-1]]
        x = gates[-1]
        for up, fuse, skip in zip(self.up, self.fuse, reversed(finer)):
            x = F.leaky_relu(up(x), 0.2)
            x = F.leaky_relu(fuse(torch.cat([x, skip], 1)), 0.2)
        return torch.sigmoid(self.out(x))


class CFRNet(nn.Module):
    """CFR-GAN's generator G(R_p, R_e) → (image, M_o) (module doc).

    Args:
        ngf: channels of the full-resolution features (64 in CycleGAN).
        n_downsampling: stride-2 levels (2 in CycleGAN); the image side must divide by 2^this.
        n_blocks: residual blocks at the bottleneck (9 in CycleGAN for 256² images).
    """

    def __init__(self, ngf: int = 64, n_downsampling: int = 2, n_blocks: int = 9) -> None:
        super().__init__()
        if ngf < 1 or n_downsampling < 1 or n_blocks < 0:
            raise ValueError(f"CFRNet needs ngf >= 1, n_downsampling >= 1, n_blocks >= 0; got "
                             f"{ngf}, {n_downsampling}, {n_blocks}")
        self.n_downsampling = n_downsampling

        def stem() -> nn.Sequential:
            return nn.Sequential(nn.ReflectionPad2d(3), _sn_conv(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU())

        self.stem_p, self.stem_e = stem(), stem()
        self.attention = OcclusionAttention(ngf)
        self.down = nn.ModuleList(GatedDownsample(ngf * 2 ** i, ngf * 2 ** (i + 1)) for i in range(n_downsampling))
        c = ngf * 2 ** n_downsampling
        self.blocks = nn.Sequential(*[ResidualBlock(c) for _ in range(n_blocks)])
        up: list[nn.Module] = []
        for i in range(n_downsampling, 0, -1):
            cin, cout = ngf * 2 ** i, ngf * 2 ** (i - 1)
            up += [spectral_norm(_init(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1))),
                   nn.InstanceNorm2d(cout), nn.ReLU()]
        self.up = nn.Sequential(*up)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), _sn_conv(ngf, 3, 7), nn.Tanh())
        self.mixing = MixingModule(ngf, n_downsampling)

    def occlusion_path_modules(self) -> list[nn.Module]:
        """The modules of the O path (no spectral norm there)."""
        return [self.attention, self.mixing]

    def forward(self, render_p: Tensor, render_e: Tensor, with_mask: bool = True
                ) -> tuple[Tensor, Tensor | None]:
        """G(R_p, R_e).

        Args:
            render_p: (B, 3, S, S) R_p-like input (R_psr in training) in [0, 1].
            render_e: (B, 3, S, S) R_e-like guide (R_es in training) in [0, 1].
            with_mask: also run the mixing module (False: the mask is None; the critic's
                phase needs only the image).

        Returns:
            image (B, 3, S, S) in [0, 1]; M_o (B, 1, S, S) in (0, 1), 1 = occluded (or None).
        """
        s = render_p.shape[-1]
        if s % 2 ** self.n_downsampling or render_p.shape[-2] % 2 ** self.n_downsampling:
            raise ValueError(f"CFRNet: image side {tuple(render_p.shape[-2:])} must divide by "
                             f"2^{self.n_downsampling}")
        # images to [-1, 1] as in CycleGAN (tanh output range)
        f_p = self.stem_p(render_p * 2.0 - 1.0)
        f_e = self.stem_e(render_e * 2.0 - 1.0)
        x, f_o = self.attention(f_p, f_e)
        gates = []
        for down in self.down:
            x, g = down(x)
            gates.append(g)
        x = self.head(self.up(self.blocks(x)))
        image = (x + 1.0) * 0.5
        return image, (self.mixing(f_o, gates) if with_mask else None)


class PatchDiscriminator(nn.Module):
    """One scale of pix2pixHD's discriminator, ``n_conv`` spectrally normalised convolutions.

    ``n_conv − 2`` convolutions 4×4 stride 2 (channels ndf, 2ndf, … capped at 512), one 4×4
    stride 1, one 4×4 stride 1 to 1 channel; padding 2 (pix2pixHD's); LeakyReLU 0.2 between.
    """

    def __init__(self, ndf: int = 64, n_conv: int = 6, in_channels: int = 3) -> None:
        super().__init__()
        if n_conv < 3:
            raise ValueError(f"PatchDiscriminator needs at least 3 convolutions, got {n_conv}")
        layers: list[nn.Module] = []
        cin, cout = in_channels, ndf
        for i in range(n_conv - 2):
            layers += [_sn_conv(cin, cout, 4, stride=2, padding=2), nn.LeakyReLU(0.2)]
            cin, cout = cout, min(cout * 2, 512)
        layers += [_sn_conv(cin, cout, 4, stride=1, padding=2), nn.LeakyReLU(0.2),
                   _sn_conv(cout, 1, 4, stride=1, padding=2)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, 1, h, w) patch scores."""
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale critic: ``scales`` PatchDiscriminators, scale k on the image
    average-pooled k times by 2 (3×3, stride 2, padding 1, pad pixels not counted)."""

    def __init__(self, ndf: int = 64, n_conv: int = 6, scales: int = 2) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError(f"MultiScaleDiscriminator needs at least one scale, got {scales}")
        self.scales = nn.ModuleList(PatchDiscriminator(ndf, n_conv) for _ in range(scales))

    def maps(self, image: Tensor) -> list[Tensor]:
        """(B, 3, H, W) image in [0, 1] → one (B, 1, h_k, w_k) patch map per scale, finest first."""
        x = image * 2.0 - 1.0
        out = []
        for k, d in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out

    def forward(self, image: Tensor) -> Tensor:
        """Critic score (B,): the sum over scales of each patch map's mean."""
        return sum(m.flatten(1).mean(1) for m in self.maps(image))


def _grad_power(scores: Tensor, x: Tensor, p: float) -> Tensor:
    """mean_i ‖∇_x scores_i‖₂^p, with a graph (for the critic's update)."""
    (g,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return g.flatten(1).square().sum(1).pow(p / 2.0).mean()


def wgan_div_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
                     k: float = 2.0, p: float = 6.0) -> Tensor:
    """WGAN-div's gradient term (Wu et al. 2018; CFR-GAN eq. 7's GP).

    ``k/2 · (mean_i ‖∇_x D(real_i)‖₂^p + mean_i ‖∇_x D(fake_i)‖₂^p)`` — k times the mean of
    ``‖∇D‖^p`` over the union of the two equal-sized batches. Built with ``create_graph`` so it
    trains D.

    Args:
        critic: maps (B, C, H, W) images to (B,) scores.
        real, fake: (B, C, H, W) batches (detached from their producers here).
        k, p: the penalty's weight and power (the WGAN-div paper's k = 2, p = 6).
    """
    terms = []
    for x in (real, fake):
        x = x.detach().requires_grad_(True)
        terms.append(_grad_power(critic(x), x, p))
    return 0.5 * k * (terms[0] + terms[1])


def critic_loss(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, k: float = 2.0,
                p: float = 6.0) -> dict[str, Tensor]:
    """CFR-GAN eq. 7: ``L_D = −E D(I) + E D(G(·)) + GP`` (GP of :func:`wgan_div_penalty`, from
    the same critic evaluations: one pass over each batch).

    Returns:
        ``{"loss": L_D, "real": E D(I), "fake": E D(G), "gp": GP}`` (only ``loss`` has a graph).
    """
    x_real = real.detach().requires_grad_(True)
    x_fake = fake.detach().requires_grad_(True)
    s_real, s_fake = critic(x_real), critic(x_fake)
    gp = 0.5 * k * (_grad_power(s_real, x_real, p) + _grad_power(s_fake, x_fake, p))
    d_real, d_fake = s_real.mean(), s_fake.mean()
    return {"loss": d_fake - d_real + gp, "real": d_real.detach(), "fake": d_fake.detach(), "gp": gp.detach()}
