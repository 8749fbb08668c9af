"""Networks of coarse-to-fine blind face completion: coarse U-Net, fine U-Net with dual attention,
and the seven discriminators.

Paper: Hörmann, Xia, Knoche, Rigoll, "A Coarse-to-Fine Dual Attention Network for Blind Face
Completion" (``../shared/seeds/c2f_blind_face_completion.txt``), §III-B. Sizes below are the
paper's at 112² input; every one scales with ``image_size`` (S): the coarse latent and the
self-attention run at S/4, the cross-attention at S/2, the eye/nose/mouth crops are S/4.

* :class:`DMFB` — dense multi-scale fusion block (Hui et al. 2020, the paper's [8]): a 3×3
  reduction to C/4, four 3×3 branches dilated 1, 2, 4, 8, each added to the previous
  branch's output and passed through a 3×3 convolution (hierarchical fusion), concatenation,
  a 1×1 convolution back to C, and a residual connection. (No normalisation: the paper drops
  normalisation layers throughout, §III-B.2.)
* :func:`patch_cross_attention` / :class:`PatchCrossAttention` — Fig. 6 left: 1×1
  convolutions give Q, K, V with half the channels; K is zeroed inside the occlusion
  (× (1 − M)); every overlapping 2×2 patch of K is L2-normalised and correlated with the
  non-overlapping 2×2 patches of Q (cosine similarity R, (S/2 − 1)² candidates per query
  patch); argmax picks the best patch, whose 2×2 V values replace the query patch; eq. 2
  keeps V outside the occlusion. Q patches are normalised as whole 2×2×C vectors so R is
  exactly a cosine; key patches that lie wholly inside the occlusion (M > 0.5 at all four
  pixels) carry no information and are excluded (our reading of "only reliable information").
* :func:`pixel_self_attention` / :class:`PixelSelfAttention` — Fig. 6 right: Q, K, V by 1×1
  convolutions (C/8, C/8, C/2 channels: the SAGAN/BigGAN reduction of the paper's [32], the
  paper gives none), K and V max-pooled 2×, ``A = softmax(Q·Kᵀ)``, ``Y = X + conv1×1(A·V)``.
* :class:`CoarseNet` — encoder of six 3×3 convolutions (leaky ReLU, two of stride 2, channels
  64 → 128 → 256), DMFB, 3×3 convolution → latent L; two decoder branches (face, mask; ReLU)
  of nearest-neighbour upsampling + convolution, skip concatenation and three convolutions
  per resolution; face output clipped, mask output sigmoid.
* :class:`FineNet` — the same encoder shape to S/2 (ELU); branch 1: cross-attention at S/2 →
  DMFB → conv; branch 2: stride-2 conv to S/4 → self-attention → DMFB → conv → upsampling
  block; concatenation with the encoder's S/2 features, 3×3 conv + DMFB, upsampling block to
  S, output convolution (clipped).
* :class:`ConvDiscriminator` — four 3×3 convolutions with leaky ReLU, the first two of stride 2
  (S → S/4, crops S/4 → S/16); ``global`` ends in a fully connected logit, ``patch`` keeps the
  per-pixel logits whose sigmoid is averaged into the patch probability (:func:`log_probs`).

Images inside the networks are in [−1, 1] (input ``2x − 1``; outputs clipped to [−1, 1]), so
an untrained network starts at mid-grey rather than at a clip boundary.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DMFB", "patch_cross_attention", "PatchCrossAttention", "pixel_self_attention", "PixelSelfAttention",
           "CoarseNet", "FineNet", "ConvDiscriminator", "log_probs"]


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation)


class DMFB(nn.Module):
    """Dense multi-scale fusion block (module doc). (B, C, H, W) → (B, C, H, W); C % 4 == 0."""

    def __init__(self, channels: int, act: type = nn.ReLU) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"DMFB needs channels divisible by 4, got {channels}")
        q = channels // 4
        self.reduce = _conv(channels, q)
        self.branches = nn.ModuleList(_conv(q, q, dilation=d) for d in (1, 2, 4, 8))
        self.fuse = nn.ModuleList(_conv(q, q) for _ in range(3))
        self.out = nn.Conv2d(channels, channels, 1)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        t = self.act(self.reduce(x))
        ys = [self.act(self.branches[0](t))]
        for branch, fuse in zip(self.branches[1:], self.fuse):
            ys.append(self.act(fuse(self.act(branch(t)) + ys[-1])))
        return x + self.out(torch.cat(ys, 1))


# --------------------------------------------------------------------------- attention
def patch_cross_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, patch: int = 2,
                          return_index: bool = False):
    """Patch-wise cross-attention (module doc), the parameter-free core.

    Args:
        q, k, v: (B, C, H, W) query, key, value maps; H, W divisible by ``patch``.
        mask: (B, 1, H, W) occlusion in [0, 1] (1 = occluded).
        patch: patch side (2 in the paper).

    Returns:
        (B, C, H, W) ``(1 − M) ⊙ V + M ⊙ V_swap`` where each non-overlapping ``patch``² block of
        V_swap is the V patch at the key patch (stride 1, not wholly occluded) of highest cosine
        similarity to the query block. With ``return_index``: also (B, H/p, W/p) the index of the
        chosen key patch, row-major over the (H − p + 1) × (W − p + 1) positions (−1 where no key
        patch is usable, and V is kept).
    """
    B, C, H, W = q.shape
    if H % patch or W % patch:
        raise ValueError(f"cross-attention needs a map divisible by the patch size {patch}, got {H}×{W}")
    k = k * (1.0 - mask)
    keys = F.normalize(F.unfold(k, patch, stride=1), dim=1)  # (B, C·p², L)
    queries = F.normalize(F.unfold(q, patch, stride=patch), dim=1)  # (B, C·p², P)
    sim = torch.einsum("bkl,bkp->blp", keys, queries)  # cosine of every key patch with every query patch
    usable = F.unfold((mask <= 0.5).to(q.dtype), patch, stride=1).amax(1) > 0  # (B, L)
    sim = sim.masked_fill(~usable[:, :, None], float("-inf"))
    idx = sim.argmax(1)  # (B, P)
    values = F.unfold(v, patch, stride=1)  # (B, C·p², L)
    picked = torch.gather(values, 2, idx[:, None, :].expand(-1, values.shape[1], -1))
    swapped = F.fold(picked, (H, W), patch, stride=patch)
    has_any = usable.any(1)
    swapped = torch.where(has_any[:, None, None, None], swapped, v)
    out = (1.0 - mask) * v + mask * swapped  # eq. 2
    if return_index:
        idx = torch.where(has_any[:, None], idx, torch.full_like(idx, -1))
        return out, idx.view(B, H // patch, W // patch)
    return out


class PatchCrossAttention(nn.Module):
    """1×1 convolutions to Q, K, V (``channels`` → ``channels // 2``) and
    :func:`patch_cross_attention`. (B, C, H, W), mask (B, 1, H', W') → (B, C/2, H, W)."""

    def __init__(self, channels: int, patch: int = 2) -> None:
        super().__init__()
        c = channels // 2
        self.q, self.k, self.v = nn.Conv2d(channels, c, 1), nn.Conv2d(channels, c, 1), nn.Conv2d(channels, c, 1)
        self.patch = patch

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if mask.shape[-2:] != x.shape[-2:]:
            mask = F.adaptive_avg_pool2d(mask, x.shape[-2:])
        return patch_cross_attention(self.q(x), self.k(x), self.v(x), mask, self.patch)


def pixel_self_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``A·V`` with ``A = softmax(Q·Kᵀ)`` over the key positions.

    Args:
        q: (B, Cq, H, W); k: (B, Cq, h, w); v: (B, Cv, h, w).

    Returns:
        (B, Cv, H, W).
    """
    B, _, H, W = q.shape
    a = torch.softmax(torch.einsum("bcn,bcm->bnm", q.flatten(2), k.flatten(2)), dim=-1)  # (B, HW, hw)
    return torch.einsum("bnm,bcm->bcn", a, v.flatten(2)).view(B, v.shape[1], H, W)


class PixelSelfAttention(nn.Module):
    """Global pixel-wise self-attention (module doc). (B, C, H, W) → (B, C, H, W); C % 8 == 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 8:
            raise ValueError(f"self-attention needs channels divisible by 8, got {channels}")
        self.q = nn.Conv2d(channels, channels // 8, 1)
        self.k = nn.Conv2d(channels, channels // 8, 1)
        self.v = nn.Conv2d(channels, channels // 2, 1)
        self.out = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        k = F.max_pool2d(self.k(x), 2)
        v = F.max_pool2d(self.v(x), 2)
        return x + self.out(pixel_self_attention(self.q(x), k, v))


# --------------------------------------------------------------------------- generators
class _Up(nn.Module):
    """Nearest-neighbour ×2 + 3×3 conv (instead of a transposed conv: no checkerboard)."""

    def __init__(self, cin: int, cout: int, act: type) -> None:
        super().__init__()
        self.conv, self.act = _conv(cin, cout), act()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class _UpBlock(nn.Module):
    """Upsample, concatenate the encoder's skip, three 3×3 convolutions."""

    def __init__(self, cin: int, cskip: int, cout: int, act: type) -> None:
        super().__init__()
        self.up = _Up(cin, cout, act)
        self.convs = nn.Sequential(_conv(cout + cskip, cout), act(), _conv(cout, cout), act(), _conv(cout, cout), act())

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([self.up(x), skip], 1))


def _encoder(width: int, act: type, down_to_quarter: bool) -> nn.ModuleList:
    """3×3 convs: S (w, w) → S/2 (2w, 2w) [→ S/4 (4w, 4w)]; returns stages whose outputs are skips."""
    w = width
    stages = [nn.Sequential(_conv(3, w), act(), _conv(w, w), act()),
              nn.Sequential(_conv(w, 2 * w, 2), act(), _conv(2 * w, 2 * w), act())]
    if down_to_quarter:
        stages.append(nn.Sequential(_conv(2 * w, 4 * w, 2), act(), _conv(4 * w, 4 * w), act()))
    return nn.ModuleList(stages)


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


class CoarseNet(nn.Module):
    """Coarse U-Net with separate face and mask branches (module doc).

    (B, 3, S, S) in [−1, 1] → (face (B, 3, S, S) clipped to [−1, 1], mask logits (B, 1, S, S)).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.encoder = _encoder(w, _LeakyReLU, True)
        self.bottleneck = nn.Sequential(DMFB(4 * w, _LeakyReLU), _conv(4 * w, 4 * w), _LeakyReLU())
        self.face = nn.ModuleList([_UpBlock(4 * w, 2 * w, 2 * w, nn.ReLU), _UpBlock(2 * w, w, w, nn.ReLU)])
        self.mask = nn.ModuleList([_UpBlock(4 * w, 2 * w, 2 * w, nn.ReLU), _UpBlock(2 * w, w, w, nn.ReLU)])
        self.face_out = _conv(w, 3)
        self.mask_out = _conv(w, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        latent = self.bottleneck(x)
        f, m = latent, latent
        for blk_f, blk_m, skip in zip(self.face, self.mask, (skips[1], skips[0])):
            f, m = blk_f(f, skip), blk_m(m, skip)
        return self.face_out(f).clamp(-1.0, 1.0), self.mask_out(m)


class FineNet(nn.Module):
    """Fine U-Net with parallel patch cross-attention (S/2) and pixel self-attention (S/4).

    (B, 3, S, S) in [−1, 1] (the coarse reconstruction I_{c,r}) and the mask (B, 1, S, S) →
    (B, 3, S, S) I_f, clipped to [−1, 1].
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        act = nn.ELU
        self.encoder = _encoder(w, act, False)
        self.cross = PatchCrossAttention(2 * w)
        self.cross_post = nn.Sequential(DMFB(w, act), _conv(w, w), act())
        self.self_down = nn.Sequential(_conv(2 * w, 4 * w, 2), act(), _conv(4 * w, 4 * w), act())
        self.attn = PixelSelfAttention(4 * w)
        self.self_post = nn.Sequential(DMFB(4 * w, act), _conv(4 * w, 4 * w), act())
        self.self_up = _Up(4 * w, 2 * w, act)
        self.fuse = nn.Sequential(_conv(w + 2 * w + 2 * w, 2 * w), act(), DMFB(2 * w, act))
        self.up = _UpBlock(2 * w, w, w, act)
        self.out = _conv(w, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        s1 = self.encoder[0](x)
        s2 = self.encoder[1](s1)
        a = self.cross_post(self.cross(s2, mask))
        b = self.self_up(self.self_post(self.attn(self.self_down(s2))))
        y = self.fuse(torch.cat([a, b, s2], 1))
        return self.out(self.up(y, s1)).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- discriminators
class ConvDiscriminator(nn.Module):
    """Global (``kind="global"``) or patch (``"patch"``) discriminator (module doc).

    Args:
        in_channels: 6 (output ‖ occluded input) or 12 (the eye pair).
        size: input side (S for the whole face, S/4 for a crop); divisible by 4.
        width: channels of the first convolution (then 2×, 4×; the paper gives none).

    ``forward`` → logits: (B, 1, 1, 1) for global, (B, 1, size/4, size/4) for patch.
    """

    def __init__(self, in_channels: int, size: int, kind: str = "patch", width: int = 64) -> None:
        super().__init__()
        if kind not in ("global", "patch"):
            raise ValueError(f"discriminator kind must be global or patch, got {kind!r}")
        if size % 4:
            raise ValueError(f"discriminator input size must be divisible by 4, got {size}")
        lrelu = _LeakyReLU
        self.body = nn.Sequential(_conv(in_channels, width, 2), lrelu(), _conv(width, 2 * width, 2), lrelu(),
                                  _conv(2 * width, 4 * width), lrelu(), _conv(4 * width, 1))
        self.kind = kind
        self.fc = nn.Linear((size // 4) ** 2, 1) if kind == "global" else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.fc is not None:
            # the leaky ReLU before the fully connected layer keeps the conv stack's last map non-linear
            y = self.fc(F.leaky_relu(y.flatten(1), 0.2)).view(-1, 1, 1, 1)
        return y


def log_probs(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, log(1 − p))`` per sample for ``p = mean(σ(logits))`` over the map (B, 1, h, w),
    computed stably (log-sum-exp of log-sigmoids)."""
    z = logits.flatten(1)
    log_n = math.log(z.shape[1])
    return (torch.logsumexp(F.logsigmoid(z), 1) - log_n, torch.logsumexp(F.logsigmoid(-z), 1) - log_n)
