"""Robust LSTM-Autoencoders (RLA) for face de-occlusion, and their identity-preserving training.

Paper: Zhao et al., "Robust LSTM-Autoencoders for Face De-Occlusion in the Wild"
(``../shared/seeds/rla_lstm_autoencoders.txt``), §III-B and §III-C; numbers from §IV-B.

The model (:class:`RLA`, registered as generator ``"rla"``):

* **Multi-scale spatial LSTM encoder** (§III-B.1, eq. 4). The crop is cut into an M×N grid of
  patches (M = N = 2: four 64×64 patches of a 128² face); every grid cell reads its patch
  together with the whole image resized to the patch size (the coarse scale). A 2-D LSTM
  cell at (i, j) has two forget gates, one for the memory of the cell above and one for the
  cell to the left: ``c_ij = f_up ⊙ c_{i-1,j} + f_left ⊙ c_{i,j-1} + i ⊙ c̃``,
  ``h_ij = o ⊙ tanh(c_ij)``. Cells on one anti-diagonal (i + j = d) do not depend on each
  other, so each diagonal runs as one batched matrix product (:class:`SpatialLSTM2D`); the
  input projections of all cells run as a single product before the sweep. Two layers
  (§IV-B); the last cell's (h, c) of each layer is the code.
* **Dual-channel LSTM decoder** (§III-B.2). The reconstruction LSTM starts from the encoder's
  last (h, c) (eq. 5-6, no other input) and adds ``W h_t + b`` to its canvas each step
  (eq. 8); ``X_rec = σ(X_T)``. The detection LSTM receives the reconstruction LSTM's hidden
  state at each step (the cross connection, eq. 9) and accumulates occlusion scores the same
  way (eq. 12); ``S = σ(S_T)``. T = 8 steps (§IV-B).
* **Composition** (eq. 13): ``X̃ = X_rec ⊙ S + X_occ ⊙ (1 − S)``; S is the output mask
  (1 = occluded).

Training (:class:`RLATask`, ``stage`` of :class:`RLATrainConfig`), the paper's multi-stage
strategy (§III-B.3) and fine-tune (§III-C):

1. encoder + reconstruction decoder on ``‖X_rec − X‖²``;
2. the detection decoder alone (the others frozen) on eq. 14, ``½‖X̃ − X‖²``;
3. all three networks jointly on eq. 14;
4. identity-preserving fine-tune, eq. 19: ``L_mse + L_sup + L_adv`` with a frozen identity CNN
   and an adversarial CNN trained alternately (eq. 18).

Deviations, each for a reason:

* Colour: the paper works on 128² grey-level crops; the toolkit's generators take and return
  sRGB, so patches are RGB (3× the encoder's input width).
* L_sup: the paper's supervised CNN classifies the recovered face into the training identities
  (eq. 17), which needs identity labels our synthetic-occlusion data do not have; we use the
  toolkit's face-recognition network (:mod:`face3d.regressor.identity`, ArcFace IResNet, weights
  from ``identity_net``; None switches the term off) as ``1 − cos`` between the embeddings of
  X̃ and X (:class:`face3d.regressor.losses.IdentityLoss`) — the same "keep the identity" role.
* The adversarial CNN is GoogLeNet in the paper; here it is a small strided CNN
  (:class:`RLADiscriminator`) — the paper gives no reason for GoogLeNet beyond reuse. Its
  pre-training on original and recovered faces (§III-C) is ``d_warmup_steps`` D-only steps at
  the start of stage 4. G minimises the non-saturating ``−log D(X̃)`` (Goodfellow et al. [6]).
* Optimiser: the paper says only "stochastic gradient descent"; we use Adam (1e-4), which
  trains these wide LSTMs without a tuned rate.

CPU note: the paper's 2048 hidden units make a ~250M-parameter RGB encoder at 128²; for CPU
runs set ``--set model.hidden_size=128 --set model.image_size=64`` (tests use 16-32 units on
16-32 px crops).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from face3d.generator import Generator, GeneratorOutput, generator_state, register_generator
from face3d.nn.gan import gan_loss
from face3d.training.config import OptimizerConfig, TrainerConfig
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask
from deocc.data import OcclusionDataConfig

__all__ = ["RLAConfig", "RLAResult", "SpatialLSTM2D", "LSTMStack", "RLA", "RLADiscriminator",
           "RLATrainConfig", "RLATask", "train_rla", "composition_mse", "RLA_OCCLUDERS"]

#: the paper's occluding objects (§IV-A.1) available in :mod:`face3d.synth.occluders`
RLA_OCCLUDERS = ("glasses", "sunglasses", "medical_mask", "hand", "scarf", "phone", "book", "cup")


# --------------------------------------------------------------------------- configuration
@dataclass
class RLAConfig:
    """Architecture of :class:`RLA` (paper §IV-B defaults).

    Attributes:
        image_size: crop side S (128 in the paper); must be divisible by ``grid``.
        grid: patches per side, M = N (2 in the paper: four 64×64 patches).
        hidden_size: units per LSTM layer (2048 in the paper; use ~128 on a CPU).
        layers: LSTM layers of the encoder and of each decoder channel (2).
        steps: decoding steps T (8).
    """

    image_size: int = 128
    grid: int = 2
    hidden_size: int = 2048
    layers: int = 2
    steps: int = 8

    def __post_init__(self) -> None:
        if self.grid < 1 or self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of grid {self.grid}")
        if min(self.hidden_size, self.layers, self.steps) < 1:
            raise ValueError("hidden_size, layers and steps must be at least 1")


@dataclass
class RLAResult:
    """Everything :meth:`RLA.decode` computes.

    Attributes:
        image: (B, 3, S, S) X̃, eq. 13 (in [0, 1]).
        recon: (B, 3, S, S) X_rec = σ(X_T), the reconstruction channel alone.
        score: (B, 1, S, S) S = σ(S_T), occlusion probability (1 = occluded).
        recon_steps, score_steps: per decoding step t = 1..T, σ(X_t) and σ(S_t)
            (only with ``return_steps=True``; the paper's Fig. 5).
    """

    image: Tensor
    recon: Tensor
    score: Tensor
    recon_steps: Optional[list[Tensor]] = None
    score_steps: Optional[list[Tensor]] = None


# --------------------------------------------------------------------------- recurrent parts
def _lstm_update(gates: Tensor, c_prev: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Gates ``(B, (3 + k)·H)`` ordered [i, o, c̃, f_1 … f_k] and k previous memories → (h, c)."""
    k = len(c_prev)
    parts = gates.chunk(3 + k, dim=-1)
    i, o, g = torch.sigmoid(parts[0]), torch.sigmoid(parts[1]), torch.tanh(parts[2])
    c = i * g
    for f, cp in zip(parts[3:], c_prev):
        c = c + torch.sigmoid(f) * cp
    return o * torch.tanh(c), c


def _init_forget_bias(linear: nn.Linear, hidden: int, n_forget: int) -> None:
    # forget gates start at σ(1) ≈ 0.73 (Jozefowicz et al. 2015) so memories pass early in training
    with torch.no_grad():
        linear.bias.zero_()
        linear.bias[3 * hidden:(3 + n_forget) * hidden] = 1.0


class SpatialLSTM2D(nn.Module):
    """Stacked 2-D spatial LSTM over a G×G grid (RLA eq. 4), swept by anti-diagonals.

    Cell (i, j) of layer l reads layer l−1's hidden state at (i, j) (layer 1: the input
    vector), and the states of (i−1, j) and (i, j−1) of its own layer (zeros off the grid).
    """

    def __init__(self, input_size: int, hidden_size: int, layers: int = 2) -> None:
        super().__init__()
        self.hidden_size, self.layers = hidden_size, layers
        # x-part (with the bias) and the recurrent part [h_up, h_left] of F_{W,b}
        self.inp = nn.ModuleList(nn.Linear(input_size if l == 0 else hidden_size, 5 * hidden_size)
                                 for l in range(layers))
        self.rec = nn.ModuleList(nn.Linear(2 * hidden_size, 5 * hidden_size, bias=False) for _ in range(layers))
        for lin in self.inp:
            _init_forget_bias(lin, hidden_size, 2)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Encode a grid of input vectors.

        Args:
            x: (B, G, G, D) inputs, cell (i, j) = row i, column j.

        Returns:
            (h, c): per layer, (B, H) states of the last cell (G−1, G−1).
        """
        B, G = x.shape[0], x.shape[1]
        H = self.hidden_size
        zero = x.new_zeros(B, H)
        h: list[dict] = [dict() for _ in range(self.layers)]
        c: list[dict] = [dict() for _ in range(self.layers)]
        x_proj = self.inp[0](x)  # (B, G, G, 5H): the input part of every cell at once
        for d in range(2 * G - 1):
            cells = [(i, d - i) for i in range(max(0, d - G + 1), min(d, G - 1) + 1)]
            n = len(cells)
            below = None
            for l in range(self.layers):
                if l == 0:
                    xin = torch.cat([x_proj[:, i, j] for i, j in cells], 0)
                else:
                    xin = self.inp[l](below)
                up_h = torch.cat([h[l].get((i - 1, j), zero) for i, j in cells], 0)
                left_h = torch.cat([h[l].get((i, j - 1), zero) for i, j in cells], 0)
                up_c = torch.cat([c[l].get((i - 1, j), zero) for i, j in cells], 0)
                left_c = torch.cat([c[l].get((i, j - 1), zero) for i, j in cells], 0)
                gates = xin + self.rec[l](torch.cat([up_h, left_h], -1))
                hn, cn = _lstm_update(gates, [up_c, left_c])
                for k, (hk, ck) in enumerate(zip(hn.chunk(n, 0), cn.chunk(n, 0))):
                    h[l][cells[k]], c[l][cells[k]] = hk, ck
                below = hn
        last = (G - 1, G - 1)
        return [h[l][last] for l in range(self.layers)], [c[l][last] for l in range(self.layers)]


class LSTMStack(nn.Module):
    """A stack of standard LSTM cells (eq. 1) stepped by hand; layer 1's input may be absent
    (``input_size = 0``: the gates see only the previous hidden state, as in RLA eq. 5)."""

    def __init__(self, input_size: int, hidden_size: int, layers: int = 2) -> None:
        super().__init__()
        self.hidden_size, self.layers = hidden_size, layers
        self.cells = nn.ModuleList(nn.Linear((input_size if l == 0 else hidden_size) + hidden_size, 4 * hidden_size)
                                   for l in range(layers))
        for lin in self.cells:
            _init_forget_bias(lin, hidden_size, 1)

    def forward(self, x: Optional[Tensor], state: tuple[list[Tensor], list[Tensor]]
                ) -> tuple[list[Tensor], list[Tensor]]:
        """One step. ``x`` (B, D) or None; ``state`` per-layer lists of (B, H) (h, c)."""
        h_prev, c_prev = state
        hs, cs = [], []
        below = x
        for l, lin in enumerate(self.cells):
            inp = h_prev[l] if below is None else torch.cat([below, h_prev[l]], -1)
            hn, cn = _lstm_update(lin(inp), [c_prev[l]])
            hs.append(hn)
            cs.append(cn)
            below = hn
        return hs, cs


# --------------------------------------------------------------------------- the generator
class RLA(Generator):
    """Robust LSTM-Autoencoder (module doc). Input/output per :mod:`face3d.generator`."""

    uses_3d = False

    def __init__(self, config: Optional[RLAConfig] = None) -> None:
        super().__init__(config or RLAConfig())
        cfg = self.config
        S, G, H = cfg.image_size, cfg.grid, cfg.hidden_size
        self.patch = S // G
        d_in = 2 * 3 * self.patch * self.patch  # patch + whole image at patch size
        self.encoder = SpatialLSTM2D(d_in, H, cfg.layers)
        self.rec = LSTMStack(0, H, cfg.layers)
        self.rec_out = nn.Linear(H, 3 * S * S)
        self.det = LSTMStack(H, H, cfg.layers)
        self.det_out = nn.Linear(H, S * S)
        # the canvases start at 0 and accumulate T small updates
        for lin in (self.rec_out, self.det_out):
            nn.init.normal_(lin.weight, 0.0, 0.01 / cfg.steps)
            nn.init.zeros_(lin.bias)

    def reconstruction_parameters(self) -> list[nn.Parameter]:
        """Encoder + reconstruction channel (pre-training round 1)."""
        return [*self.encoder.parameters(), *self.rec.parameters(), *self.rec_out.parameters()]

    def detection_parameters(self) -> list[nn.Parameter]:
        """Occlusion-detection channel (pre-training round 2)."""
        return [*self.det.parameters(), *self.det_out.parameters()]

    def encode(self, image: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, 3, S, S) in [0, 1] → the encoder's last (h, c) per layer, each (B, H)."""
        B, S, p, G = image.shape[0], self.image_size, self.patch, self.config.grid
        x = image * 2.0 - 1.0
        patches = x.reshape(B, 3, G, p, G, p).permute(0, 2, 4, 1, 3, 5).reshape(B, G, G, 3 * p * p)
        coarse = x if p == S else F.interpolate(x, size=(p, p), mode="area")
        coarse = coarse.reshape(B, 1, 1, 3 * p * p).expand(B, G, G, 3 * p * p)
        return self.encoder(torch.cat([patches, coarse], -1))

    def decode(self, image: Tensor, return_steps: bool = False, detect: bool = True) -> RLAResult:
        """Run the whole model on ``image`` (B, 3, S, S) in [0, 1].

        ``detect=False`` skips the detection channel (pre-training round 1): then
        ``score`` is all ones and ``image`` equals ``recon``.
        """
        B, S = image.shape[0], self.image_size
        h, c = self.encode(image)
        rec_state = (h, c)
        zeros = [image.new_zeros(B, self.config.hidden_size) for _ in range(self.config.layers)]
        det_state = (zeros, list(zeros))
        X = image.new_zeros(B, 3 * S * S)
        Sc = image.new_zeros(B, S * S)
        rsteps: list[Tensor] = []
        ssteps: list[Tensor] = []
        for _ in range(self.config.steps):
            rec_state = self.rec(None, rec_state)
            X = X + self.rec_out(rec_state[0][-1])  # eq. 8
            if detect:
                det_state = self.det(rec_state[0][-1], det_state)  # cross connection, eq. 9
                Sc = Sc + self.det_out(det_state[0][-1])  # eq. 12
            if return_steps:
                rsteps.append(torch.sigmoid(X).view(B, 3, S, S))
                ssteps.append(torch.sigmoid(Sc).view(B, 1, S, S))
        recon = torch.sigmoid(X).view(B, 3, S, S)
        score = torch.sigmoid(Sc).view(B, 1, S, S) if detect else torch.ones_like(recon[:, :1])
        out = recon * score + image * (1.0 - score)  # eq. 13
        return RLAResult(out, recon, score, rsteps if return_steps else None, ssteps if return_steps else None)

    def forward(self, inputs, return_steps: bool = False, detect: bool = True):
        """A :class:`GeneratorInput` → :class:`GeneratorOutput` (image X̃, mask S); a bare
        (B, 3, S, S) tensor → the full :class:`RLAResult` of :meth:`decode` (what training
        calls, through the trainer's module wrappers)."""
        if isinstance(inputs, Tensor):
            return self.decode(inputs, return_steps, detect)
        self.check_input(inputs)
        r = self.decode(inputs.image)
        return GeneratorOutput(r.image, r.score)


class RLADiscriminator(nn.Module):
    """The adversarial CNN of the fine-tune (§III-C): strided 4×4 convolutions with leaky
    ReLU down to 4×4, then a linear logit. (B, 3, S, S) in [0, 1] → (B,) logits."""

    def __init__(self, image_size: int = 128, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, ch, s = 3, width, image_size
        while s > 4:
            layers += [nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin, ch, s = ch, min(ch * 2, 8 * width), s // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * s * s, 1)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(torch.flatten(self.features(image * 2.0 - 1.0), 1)).squeeze(1)


def composition_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 14 / the round-1 loss: ``1/(2B) Σ_b ‖pred_b − target_b‖_F²`` (sum over pixels and
    channels, mean over the batch, as the paper writes it)."""
    return 0.5 * (pred - target).pow(2).flatten(1).sum(1).mean()


# --------------------------------------------------------------------------- training
@dataclass
class RLATrainConfig:
    """A training run of RLA (``python cli.py train rla --data DIR --stage N``).

    Attributes:
        trainer: trainer settings; Adam 1e-4 (the paper names only SGD, no rate), batch 16
            (paper silent).
        model: :class:`RLAConfig` (paper sizes; shrink ``hidden_size`` on a CPU).
        data: folder of face photos (aligned and occluded by :mod:`deocc.data`).
        synthetic: additional synthetic 3DMM faces (0: photos only).
        occlusion: settings of the synthetic occlusion (:class:`deocc.data.OcclusionDataConfig`;
            its ``image_size`` is taken from ``model.image_size``); default kinds: the paper's
            objects (§IV-A.1) that the occluder library has — glasses, sunglasses, masks, hands,
            scarves, phones, books, cups (no eye masks).
        stage: 1 encoder + reconstruction, 2 detection only, 3 joint (eq. 14), 4 fine-tune
            (eq. 19). Stages 2-4 start from ``init``.
        init: checkpoint of the previous stage (trainer run folder / file or a generator file).
        w_mse, w_id, w_adv: weights of L_mse, L_sup and L_adv in eq. 19 (all 1 in the paper).
        identity_net, identity_arch: face-recognition weights for L_sup (None: term off).
        d_width: width of the adversarial CNN's first layer.
        d_lr: the adversarial CNN's learning rate (None: ``trainer.optim.lr``).
        d_warmup_steps: stage 4 starts with this many D-only steps ("pre-train the adversarial
            CNN on original and recovered faces", §III-C; the count is ours).
    """

    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        out_dir="runs/rla", batch_size=16, optim=OptimizerConfig(name="adam", lr=1e-4)))
    model: RLAConfig = field(default_factory=RLAConfig)
    data: Optional[str] = None
    synthetic: int = 0
    occlusion: OcclusionDataConfig = field(default_factory=lambda: OcclusionDataConfig(kinds=RLA_OCCLUDERS))
    stage: int = 1
    init: Optional[str] = None
    w_mse: float = 1.0
    w_id: float = 1.0
    w_adv: float = 1.0
    identity_net: Optional[str] = None
    identity_arch: str = "iresnet50"
    d_width: int = 64
    d_lr: Optional[float] = None
    d_warmup_steps: int = 500

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3, 4):
            raise ValueError(f"RLA stage must be 1, 2, 3 or 4, got {self.stage}")
        if self.d_warmup_steps < 0 or self.synthetic < 0:
            raise ValueError("d_warmup_steps and synthetic must be >= 0")


def _load_init(gen: Generator, path: str) -> None:
    from face3d.generator import load_generator

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such checkpoint (the previous stage's weights)")
    src = load_generator(path, name=gen.name)
    if dataclasses.asdict(src.config) != dataclasses.asdict(gen.config):
        raise ValueError(f"{path}: its {gen.name} config {dataclasses.asdict(src.config)} differs from this run's "
                         f"{dataclasses.asdict(gen.config)}")
    gen.load_state_dict(src.state_dict())


class RLATask(TrainingTask):
    """The four RLA training stages on the trainer (module doc).

    Modules: ``generator`` (:class:`RLA`), in stage 4 also ``D``
    (:class:`RLADiscriminator`) and, with ``identity_net``, the frozen ``identity`` loss.
    Optimisers: stage 1-3 ``generator`` (stage 1: encoder + reconstruction, stage 2: detection
    only, stage 3: all); stage 4 ``D`` then ``G``. Batches: dicts with ``occluded`` and
    ``image`` (clean), (B, 3, S, S) in [0, 1].

    Args:
        config: the run's settings.
        identity: an :class:`~face3d.regressor.losses.IdentityLoss` for L_sup (default: from
            ``config.identity_net``, or none).
    """

    def __init__(self, config: RLATrainConfig, identity: Optional[nn.Module] = None) -> None:
        if config.stage > 1 and not config.init:
            raise ValueError(f"RLA stage {config.stage} starts from the previous stage's weights: give init (--init CKPT)")
        self.config = config
        if identity is None and config.identity_net and config.stage == 4:
            from face3d.regressor.identity import load_identity_net
            from face3d.regressor.losses import IdentityLoss

            identity = IdentityLoss(load_identity_net(config.identity_net, config.identity_arch))
        self.identity = identity

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        cfg = self.config
        gen = RLA(cfg.model)
        if cfg.init:
            _load_init(gen, cfg.init)
        mods: dict[str, nn.Module] = {"generator": gen.to(device)}
        if cfg.stage == 4:
            mods["D"] = RLADiscriminator(cfg.model.image_size, cfg.d_width).to(device)
            if self.identity is not None:
                mods["identity"] = self.identity.to(device)
        self._generator = gen
        return mods

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        gen: RLA = modules["generator"]  # type: ignore[assignment]
        stage = self.config.stage
        if stage == 1:
            for p in gen.detection_parameters():  # unused this stage: frozen, so DDP does not wait for them
                p.requires_grad_(False)
            return {"generator": OptimizerSpec(gen.reconstruction_parameters())}
        if stage == 2:
            gen.requires_grad_(False)  # the pre-trained encoder and reconstruction channel stay fixed
            for p in gen.detection_parameters():
                p.requires_grad_(True)
            return {"generator": OptimizerSpec(gen.detection_parameters())}
        if stage == 3:
            return {"generator": OptimizerSpec(gen.parameters())}
        d_optim = None
        if self.config.d_lr is not None:
            d_optim = dataclasses.replace(self.config.trainer.optim, lr=self.config.d_lr)
        return {"D": OptimizerSpec(modules["D"].parameters(), optim=d_optim), "G": OptimizerSpec(gen.parameters())}

    def phases(self, step: int) -> Optional[list[str]]:
        if self.config.stage == 4 and step < self.config.d_warmup_steps:
            return ["D"]
        return None

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.config
        occ, clean = batch["occluded"].float(), batch["image"].float()
        gen = modules["generator"]
        if cfg.stage == 1:
            r = gen(occ, detect=False)
            loss = composition_mse(r.recon, clean)
            return {"loss": loss, "mse_rec": loss.detach()}
        if cfg.stage in (2, 3):
            r = gen(occ)
            loss = composition_mse(r.image, clean)
            return {"loss": loss, "mse": loss.detach(), **self._mask_stats(r, batch)}
        D = modules["D"]
        if ctx.phase == "D":
            with torch.no_grad():
                fake = gen(occ).image
            lr, lf = D(clean), D(fake)
            loss = gan_loss(lr, True) + gan_loss(lf, False)  # eq. 18 (maximised by D)
            return {"loss": loss, "d_real": torch.sigmoid(lr).mean().detach(),
                    "d_fake": torch.sigmoid(lf).mean().detach()}
        r = gen(occ)
        mse = composition_mse(r.image, clean)
        lf = D(r.image)
        adv = gan_loss(lf, True)
        loss = cfg.w_mse * mse + cfg.w_adv * adv
        out = {"mse": mse.detach(), "adv": adv.detach()}
        if "identity" in modules and cfg.w_id > 0:
            lid = modules["identity"](r.image, clean)
            loss = loss + cfg.w_id * lid
            out["sup"] = lid.detach()
        out["loss"] = loss
        return out

    @staticmethod
    def _mask_stats(r: RLAResult, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if "mask" not in batch:
            return {}
        m = batch["mask"].float()
        err = (r.score.detach() - m).abs().mean()
        return {"mask_l1": err}

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        from face3d.training.grid import make_grid

        occ, clean = batch["occluded"].float(), batch["image"].float()
        r = modules["generator"].decode(occ)
        tiles = torch.stack([occ, r.recon, r.score.expand_as(occ), r.image, clean], 1).flatten(0, 1)
        return make_grid(tiles.clamp(0, 1), nrow=5)

    def state_dict(self) -> dict[str, Any]:
        from face3d.config import config_to_dict

        return {"generator": generator_state(self._generator), "rla_config": config_to_dict(self.config)}


def _build_dataset(data: Optional[str], image_size: int, occlusion: OcclusionDataConfig, synthetic: int):
    """:class:`deocc.data.OccludedFaceDataset` of photos in ``data`` and/or ``synthetic`` faces,
    at the model's ``image_size``."""
    from deocc.data import OccludedFaceDataset

    return OccludedFaceDataset(data, dataclasses.replace(occlusion, image_size=image_size), synthetic=synthetic)


def train_rla(cfg: RLATrainConfig):
    """Build task and data of ``cfg``, train, return the :class:`~face3d.training.trainer.Trainer`."""
    from face3d.training.trainer import Trainer

    task = RLATask(cfg)
    dataset = _build_dataset(cfg.data, cfg.model.image_size, cfg.occlusion, cfg.synthetic)
    return Trainer(task, dataset, cfg.trainer).fit()


register_generator("rla", RLAConfig, train_config=RLATrainConfig, train=train_rla,
                   summary="RLA: multi-scale 2-D LSTM encoder, dual-channel LSTM decoder (Zhao et al., image only)")(RLA)
