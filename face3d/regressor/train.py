"""Training the coefficient regressor: CFR-GAN's two fine-tuning stages on the training foundation.

Paper: Kim et al. 2022, CFR-GAN (seed paper 003) §3.1, "Occlusion-robust 3D face", built on
Deng et al. 2019's weakly supervised R-Net.

* **Stage 1** (:class:`Stage1Task`): the regressor sees an *occluded* crop — occluders from
  :mod:`face3d.synth.occluders` pasted around the landmarks (hands, masks, glasses, cups,
  shapes, text) — and every loss of :class:`~face3d.regressor.losses.RegressorLoss`
  (photometric, landmarks, identity, regularisation, reflectance) is computed against the
  *clean* crop. On synthetic faces (:class:`~face3d.synth.SyntheticFaceDataset`) the exact
  ground truth is known, so a direct coefficient loss is added (``w_coefficients``, see
  :func:`coefficient_loss`): it is what makes training from scratch on a CPU feasible — the
  photometric and landmark terms alone give a weak, slowly converging signal to a network
  without ImageNet weights.
* **Stage 2** (:class:`Stage2Task`): teacher-student. Teacher and student both start from the
  stage-1 weights (``init``, required). The frozen teacher sees the clean crop, the student a
  copy with a synthesised dental / medical mask (``medical_mask`` occluder) or
  :class:`RandomErasing` (Zhong et al. 2020), half each by default, as the paper mixes Masked
  Face-Net with random-erased FFHQ. Loss: :func:`~face3d.regressor.losses.teacher_student_loss`
  = 0.1 L_para + 1.0 L_teach (top-4 maps, .125/.25/.5/1) + 0.01 L_lan.

Data (:class:`RegressorTrainConfig`): a folder of photos (``data``,
:class:`~face3d.training.data.PhotoFolderDataset`: aligned crops, detected landmarks, landmark
fits; landmark loss × 0.7 for these pseudo-labels as in the paper) and/or ``synthetic`` random
faces of the active model. Both are mapped to one item layout, so they can be mixed.

Checkpoints are the trainer's (:mod:`face3d.training.checkpoint`): modules ``regressor``
(stage 1) or ``student`` + ``teacher`` (stage 2); the task state holds the
:class:`RegressorTrainConfig` as plain data. :func:`load_regressor` reads either.

:func:`evaluate_regressor` measures a checkpoint against held-out synthetic faces (clean and
occluded) and photos with 68-point ``.pts`` ground truth, next to the mean-face baseline.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from face3d.coefficients import ALIGNED_SIZE, FaceParams, aligned_camera
from face3d.config import config_to_dict
from face3d.morphable_model import MorphableModel
from face3d.regressor.losses import (RegressorLoss, RegressorLossConfig, project_landmarks, render_face,
                                     teacher_student_loss)
from face3d.regressor.model import FaceRegressor, RegressorOutput
from face3d.synth.faces import SyntheticFaceConfig
from face3d.training.config import TrainerConfig
from face3d.training.grid import make_grid
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask

__all__ = ["RegressorTrainConfig", "Stage1Task", "Stage2Task", "RandomErasing", "coefficient_loss",
           "build_regressor_dataset", "make_task", "train_regressor", "load_regressor", "export_regressor",
           "read_regressor_checkpoint",
           "evaluate_regressor", "format_report"]

log = logging.getLogger("face3d.training")


# --------------------------------------------------------------------------- configuration
@dataclass
class RegressorTrainConfig:
    """Settings of a regressor training run (YAML / ``--set`` overridable).

    Paper defaults: ResNet-50, 224² crops, Adam at 1e-4, batch 5 (Deng et al.; the nested
    :class:`~face3d.training.config.TrainerConfig`), the loss weights of
    :class:`~face3d.regressor.losses.RegressorLossConfig`.

    Attributes:
        trainer: the generic trainer's settings (``out_dir``, ``max_steps``, …).
        loss: loss weights (both stages).
        backbone: ``resnet50`` (paper), ``resnet34``, ``resnet18`` or ``mobilenet_v2``.
        model: morphable model name or ``.npz`` path (:func:`face3d.model_zoo.load_model`).
        image_size: crop side S (224 in the papers; smaller for CPU runs).
        stage: 1 (occluded input, losses on the clean image) or 2 (teacher-student).
        init: checkpoint to start from (a trainer checkpoint file / run folder, or a bare
            FaceRegressor state dict). Stage 1: optional (the paper fine-tunes Deng et al.'s
            model); stage 2: required, the stage-1 weights for teacher and student.
        data: folder of photos (``None``: no photos).
        cache_dir: cache of detections and fits for ``data`` (``None``: ``$FACE3D_HOME/cache/photos``).
        synthetic: number of synthetic faces (0: none). At least one source is needed.
        synthetic_seed: seed of the synthetic faces (evaluation uses a different one).
        synth: settings of the synthetic faces (``image_size`` is taken from ``image_size``).
        occlusion_prob: stage 1: probability that an item is occluded. The paper occludes all
            of 300W-LP and CelebA but adds un-occluded Multi-PIE; 0.8 is our mix.
        occluders: folder of occluder images (``None``: ``$FACE3D_OCCLUDERS`` or
            ``../shared/data/occluders``; procedural shapes without it).
        occluder_kinds: stage-1 occluder kinds, drawn uniformly (see ``OCCLUDER_KINDS``).
        mask_prob: stage 2: probability of a medical mask (else random erasing); 0.5 mixes
            Masked Face-Net and random-erased FFHQ as the paper does.
        w_coefficients: weight of :func:`coefficient_loss` on synthetic items (stage 1; ours,
            not the paper's: a direct supervision only synthetic data allows).
        identity_net, identity_arch: face-recognition weights for the identity loss (a path;
            ``None`` skips the term) and their architecture.
        profiled: folder of profiled real views (:mod:`face3d.synth.profiling`: photos turned
            to new yaws, exact geometry labels), ``profiled_limit`` the most used (None: all).
    """

    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(out_dir="runs/regressor"))
    loss: RegressorLossConfig = field(default_factory=RegressorLossConfig)
    backbone: str = "resnet50"
    model: str = "auto"
    image_size: int = ALIGNED_SIZE
    stage: int = 1
    init: Optional[str] = None
    data: Optional[str] = None
    cache_dir: Optional[str] = None
    synthetic: int = 0
    synthetic_seed: int = 0
    synth: SyntheticFaceConfig = field(default_factory=SyntheticFaceConfig)
    occlusion_prob: float = 0.8
    occluders: Optional[str] = None
    occluder_kinds: tuple[str, ...] = ("hand", "medical_mask", "sunglasses", "glasses", "scarf", "cup",
                                       "rectangle", "ellipse", "text")
    mask_prob: float = 0.5
    w_coefficients: float = 1.0
    identity_net: Optional[str] = None
    identity_arch: str = "iresnet50"
    profiled: Optional[str] = None
    profiled_limit: Optional[int] = None

    def __post_init__(self) -> None:
        from face3d.regressor.backbones import BACKBONES
        from face3d.synth.occluders import OCCLUDER_KINDS

        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if self.synthetic < 0:
            raise ValueError(f"synthetic must be >= 0, got {self.synthetic}")
        for name in ("occlusion_prob", "mask_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.w_coefficients < 0:
            raise ValueError(f"w_coefficients must be >= 0, got {self.w_coefficients}")
        bad = [k for k in self.occluder_kinds if k not in OCCLUDER_KINDS]
        if bad or not self.occluder_kinds:
            raise ValueError(f"occluder_kinds must be a non-empty subset of {', '.join(OCCLUDER_KINDS)}, got {bad}")


# --------------------------------------------------------------------------- data
class _SyntheticItems(Dataset):
    """Synthetic faces in the common item layout (occluded in the dataset, by index)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.ds[i]
        image = it["image"].float()
        return {"image": image, "input": it.get("occluded", it["image"]).float(),
                "landmarks": it["landmarks"].float(), "coefficients": it["coefficients"].float(),
                "exact": torch.tensor(1.0), "needs_occluder": torch.tensor(0.0), "geometry_only": torch.tensor(0.0)}


class _PhotoItems(Dataset):
    """Photo crops in the common item layout; occluders are pasted in the training step."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def prepare(self) -> "_PhotoItems":
        self.ds.prepare()
        return self

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.ds[i]
        return {"image": it["image"], "input": it["image"], "landmarks": it["landmarks"].float(),
                "coefficients": it["params"].float(), "exact": torch.tensor(0.0),
                "needs_occluder": torch.tensor(1.0), "geometry_only": torch.tensor(1.0)}


class _Mixed(ConcatDataset):
    def prepare(self) -> "_Mixed":
        for d in self.datasets:
            if hasattr(d, "prepare"):
                d.prepare()
        return self


def _occluder_sampler(cfg: RegressorTrainConfig, kinds: Optional[Sequence[str]] = None):
    from face3d.synth.occluders import OccluderLibrary, OccluderSampler

    lib = OccluderLibrary(cfg.occluders)
    return OccluderSampler({k: 1.0 for k in (kinds or cfg.occluder_kinds)}, library=lib)


def build_regressor_dataset(cfg: RegressorTrainConfig, model: MorphableModel) -> Dataset:
    """The training items of ``cfg`` (photos and/or synthetic faces) in one layout.

    Items: ``image`` (3, S, S) clean crop; ``input`` (3, S, S) the network input (occluded for
    synthetic items of stage 1; photos are occluded in the step); ``landmarks`` (68, 2) px;
    ``coefficients`` (K,) ground truth (synthetic) or landmark fit (photos); ``exact`` 1 for
    synthetic ground truth; ``needs_occluder`` 1 for photos.
    """
    parts: list[Dataset] = []
    if cfg.synthetic > 0:
        from face3d.synth.faces import SyntheticFaceDataset, SyntheticFaces

        scfg = dataclasses.replace(cfg.synth, image_size=cfg.image_size)
        faces = SyntheticFaces(model, scfg, seed=cfg.synthetic_seed)
        occluded = cfg.stage == 1 and cfg.occlusion_prob > 0
        ds = SyntheticFaceDataset(faces, cfg.synthetic, _occluder_sampler(cfg) if occluded else None,
                                  cfg.occlusion_prob if occluded else 0.0)
        parts.append(_SyntheticItems(ds))
    if cfg.data:
        from face3d.model_zoo import face3d_home
        from face3d.training.data import PhotoDatasetConfig, PhotoFolderDataset

        cache = Path(cfg.cache_dir) if cfg.cache_dir else face3d_home() / "cache" / "photos"
        # photos framed like the synthetic faces (face3d.regressor.inference.crop_template)
        pcfg = PhotoDatasetConfig(size=cfg.image_size, model=cfg.model, template="model")
        parts.append(_PhotoItems(PhotoFolderDataset(cfg.data, cache, pcfg, model=model)))
    if cfg.profiled:
        from face3d.synth.profiling import ProfiledFaceDataset

        parts.append(ProfiledFaceDataset(cfg.profiled, cfg.profiled_limit))
    if not parts:
        raise ValueError("no training data: give a folder of photos (data), profiled views and/or a number of "
                         "synthetic faces")
    return parts[0] if len(parts) == 1 else _Mixed(parts)


# --------------------------------------------------------------------------- augmentation
class RandomErasing:
    """Random Erasing (Zhong et al., AAAI 2020): with probability ``p``, one rectangle of area
    ``s``·H·W (s ~ U(``scale``)) and aspect ratio r (log r ~ U(log ``ratio``)) is filled with
    uniform random values. Up to 10 tries to fit the rectangle, else the image is returned.

    Defaults are the paper's (p 0.5, s 0.02–0.4, r 0.3–3.3); CFR-GAN's stage 2 erases every
    student image that gets no mask, so :class:`Stage2Task` uses ``p = 1``.
    """

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        if not 0.0 <= p <= 1.0 or not 0.0 < scale[0] <= scale[1] <= 1.0 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"bad RandomErasing settings p={p}, scale={scale}, ratio={ratio}")
        self.p, self.scale, self.ratio = p, scale, ratio

    def __call__(self, image: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """(C, H, W) image → (erased copy, (1, H, W) mask of the erased pixels)."""
        c, h, w = image.shape
        mask = image.new_zeros(1, h, w)
        if rng.random() >= self.p:
            return image.clone(), mask
        for _ in range(10):
            area = rng.uniform(*self.scale) * h * w
            r = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            eh, ew = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
            if 0 < eh < h and 0 < ew < w:
                y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
                out = image.clone()
                fill = torch.from_numpy(rng.random((c, eh, ew)).astype(np.float32)).to(image)
                out[:, y:y + eh, x:x + ew] = fill
                mask[:, y:y + eh, x:x + ew] = 1.0
                return out, mask
        return image.clone(), mask


def _step_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's global stream, which the trainer checkpoints and
    restores, so augmentation drawn in the training step resumes exactly."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,))))


# --------------------------------------------------------------------------- losses and helpers
def coefficient_loss(pred: Tensor, truth: Tensor, output_scale: Tensor, sizes: Sequence[int],
                     geometry_only: Optional[Tensor] = None) -> Tensor:
    """Direct coefficient supervision: Σ over the six groups (α, β, δ, angles, γ, t) of the mean
    squared error in the regressor's raw units, ((pred − truth) / output_scale)² — prior standard
    deviations for α, β, δ, radians, SH units, decimetres. Summing per-group means keeps the
    6 pose numbers from being drowned by the shape modes. ``pred``, ``truth`` (B, K).

    ``geometry_only`` (B,) bool: items whose albedo δ and light γ are unknown (profiled photos,
    :mod:`face3d.synth.profiling`); those two groups average over the other items only."""
    d = ((pred - truth.to(pred)) / output_scale.to(pred)) ** 2
    groups = torch.split(d, list(sizes), dim=1)
    total = pred.new_zeros(())
    for k, g in enumerate(groups):
        if g.shape[1] == 0:
            continue
        if geometry_only is not None and k in (2, 4):  # δ, γ
            keep = ~geometry_only.to(torch.bool)
            if not bool(keep.any()):
                continue
            g = g[keep]
        total = total + g.mean()
    return total


class _FeatureRegressor(FaceRegressor):
    """A FaceRegressor whose ``forward`` returns its features (maps, raw, coefficients) as a
    dict, so feature maps pass through DistributedDataParallel's forward (its gradient
    synchronisation hooks need the call to go through the wrapper). Same state dict keys."""

    def forward(self, image: Tensor) -> dict[str, Any]:  # type: ignore[override]
        out = self.features(image)
        return {"maps": out.maps, "raw": out.raw, "coefficients": out.coefficients}


def _as_output(d: Mapping[str, Any]) -> RegressorOutput:
    return RegressorOutput(maps=list(d["maps"]), raw=d["raw"], coefficients=d["coefficients"])


def read_regressor_checkpoint(path: Union[str, os.PathLike]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The FaceRegressor state dict in ``path`` and the training config saved with it (plain
    dict; empty for a bare state dict). ``path``: a trainer checkpoint file or run/checkpoint
    folder (module ``student`` preferred over ``regressor``), or a bare state dict file.
    Always read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: nothing at ``path``; ValueError: no regressor weights in it.
    """
    from face3d.training.checkpoint import read_checkpoint

    state, p = read_checkpoint(path)
    info: dict[str, Any] = {}
    if isinstance(state.get("modules"), Mapping):
        mods = state["modules"]
        name = next((k for k in ("student", "regressor") if k in mods), None)
        if name is None:
            raise ValueError(f"{p}: checkpoint holds no regressor (modules: {', '.join(mods)})")
        weights = dict(mods[name])
        task = state.get("task") or {}
        info = dict(task.get("regressor_config") or {})
        info["step"] = int(state.get("step", 0))
    else:
        weights = dict(state)
    if not any(k.startswith("backbone.") for k in weights):
        raise ValueError(f"{p}: not a FaceRegressor state dict (no backbone.* weights)")
    return weights, info


def load_regressor(path: Union[str, os.PathLike], model: MorphableModel,
                   device: Union[str, torch.device, None] = None) -> FaceRegressor:
    """A :class:`FaceRegressor` for ``model`` with the weights of a checkpoint written by the
    trainer (or a bare state dict), loaded with ``weights_only=True``; in eval mode.

    The backbone, coefficient group sizes, input normalisation and pose convention come from
    the state dict's extra state; the training config (if any) is kept in ``reg.train_info``
    (e.g. ``image_size``).

    Raises:
        FileNotFoundError: no checkpoint; ValueError: not a regressor, or for another model.
    """
    weights, info = read_regressor_checkpoint(path)
    extra = weights.get("_extra_state") or {}
    backbone = extra.get("backbone") if isinstance(extra, Mapping) else None
    if backbone is None:
        backbone = info.get("backbone")
    if backbone is None:
        raise ValueError(f"{path}: the checkpoint does not say which backbone it uses")
    reg = FaceRegressor(backbone, model)
    try:
        reg.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: weights do not fit a {backbone} regressor for model {model.name!r} ({first})") \
            from None
    reg.train_info = info  # type: ignore[attr-defined]
    return reg.to(device).eval()


def export_regressor(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike]) -> Path:
    """Write the regressor of a training checkpoint (or run folder) as a small file that
    :func:`load_regressor` reads: its weights, the training config and step, no optimiser
    state. Written atomically; returns ``out``."""
    from face3d.io_utils import atomic_write

    weights, info = read_regressor_checkpoint(checkpoint)
    step = int(info.pop("step", 0))
    out = Path(out)
    with atomic_write(out, make_parents=True) as tmp:
        torch.save({"modules": {"regressor": {k: v.detach().cpu().contiguous() if isinstance(v, Tensor) else v
                                              for k, v in weights.items()}},
                    "task": {"regressor_config": info}, "step": step}, tmp)
    return out


def _init_weights(reg: FaceRegressor, path: str, model: MorphableModel) -> None:
    src = load_regressor(path, model)
    if src.backbone_name != reg.backbone_name:
        raise ValueError(f"init checkpoint {path} is a {src.backbone_name} regressor; this run uses {reg.backbone_name}")
    reg.load_state_dict(src.state_dict())


# --------------------------------------------------------------------------- tasks
class _RegressorTask(TrainingTask):
    def __init__(self, config: RegressorTrainConfig, model: Optional[MorphableModel] = None,
                 identity: Optional[nn.Module] = None) -> None:
        self.config = config
        if model is None:
            from face3d.model_zoo import load_model

            model = load_model(config.model)
        self.model = model
        self.sizes = [model.n_id, model.n_exp, model.n_albedo, 3, 27, 3]
        if identity is None and config.identity_net:
            from face3d.regressor.identity import load_identity_net
            from face3d.regressor.losses import IdentityLoss

            identity = IdentityLoss(load_identity_net(config.identity_net, config.identity_arch))
        self.loss = RegressorLoss(model, config.loss, identity)
        self._occluders = None

    def _new_regressor(self, device: torch.device) -> _FeatureRegressor:
        reg = _FeatureRegressor(self.config.backbone, self.model)
        return reg.to(device)

    def _place(self, device: torch.device) -> None:
        self.model = self.model.to(device)
        self.loss.model = self.model
        if self.loss.identity is not None:
            self.loss.identity.to(device)

    def _split(self, coefficients: Tensor) -> FaceParams:
        return FaceParams(*torch.split(coefficients, self.sizes, dim=1))

    def _target_landmarks(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Landmark targets in crop pixels: for synthetic items the model's own landmark
        vertices projected with the exact parameters (the loss projects the same vertices, so
        the target is exact at any yaw); for photos the detected landmarks."""
        lm = batch["landmarks"].float()
        exact = batch["exact"] > 0.5
        if bool(exact.any()):
            size = int(batch["image"].shape[-1])
            with torch.no_grad():
                gt = project_landmarks(self.model, self._split(batch["coefficients"].float()), size).to(lm)
            lm = torch.where(exact[:, None, None], gt, lm)
        return lm

    def _occlude_photos(self, batch: Mapping[str, Tensor], inputs: Tensor, prob: float) -> Tensor:
        need = batch["needs_occluder"] > 0.5
        if not bool(need.any()) or prob <= 0:
            return inputs
        if self._occluders is None:
            self._occluders = _occluder_sampler(self.config)
        rng = _step_rng()
        out = inputs.clone()
        for i in torch.nonzero(need).flatten().tolist():
            if rng.random() < prob:
                res = self._occluders(inputs[i].detach().cpu(), batch["landmarks"][i].detach().cpu(), rng=rng)
                out[i] = res.image.to(out)
        return out

    def _overlay(self, params: FaceParams, under: Tensor) -> Tensor:
        size = int(under.shape[-1])
        r = render_face(self.model, params, size, self.loss.renderer(size))
        return r.srgb.clamp(0, 1) * r.mask + under * (1.0 - r.mask)

    def _sheet(self, inputs: Tensor, params: FaceParams, target: Tensor) -> Tensor:
        overlay = self._overlay(params, inputs)
        tiles = torch.stack([inputs, overlay, target], 1).flatten(0, 1)  # per face: input | render | target
        return make_grid(tiles.float().clamp(0, 1), nrow=3)

    def state_dict(self) -> dict[str, Any]:
        return {"regressor_config": config_to_dict(self.config)}


class Stage1Task(_RegressorTask):
    """CFR-GAN stage 1: occluded input, Deng et al.'s losses against the clean crop (module doc).

    Args:
        config: :class:`RegressorTrainConfig` (``stage`` is not checked here).
        model: the morphable model (default ``load_model(config.model)``).
        identity: an :class:`~face3d.regressor.losses.IdentityLoss` (default: from
            ``config.identity_net``, or none).

    Module ``regressor``; one optimiser ``regressor``. Logged terms: the RegressorLoss terms
    and ``coefficients`` (synthetic items).
    """

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        self._place(device)
        reg = self._new_regressor(device)
        if self.config.init:
            _init_weights(reg, self.config.init, self.model)
        return {"regressor": reg}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        return {"regressor": OptimizerSpec(modules["regressor"].parameters())}

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        target = batch["image"].float()
        inputs = self._occlude_photos(batch, batch["input"].float(), self.config.occlusion_prob)
        out = modules["regressor"](inputs)
        coeffs = out["coefficients"]
        params = self._split(coeffs)
        exact = batch["exact"] > 0.5
        lt = self.loss(params, target, self._target_landmarks(batch),
                       pseudo_labelled=~exact)
        losses = {k: v.detach() for k, v in lt.terms.items()}
        total = lt.total
        if self.config.w_coefficients > 0 and bool(exact.any()):
            reg = modules["regressor"]
            scale = getattr(reg, "module", reg).output_scale
            geo = batch["geometry_only"][exact] > 0.5 if "geometry_only" in batch else None
            lc = coefficient_loss(coeffs[exact], batch["coefficients"][exact], scale, self.sizes, geo)
            total = total + self.config.w_coefficients * lc * exact.float().mean()
            losses["coefficients"] = lc.detach()
        losses["loss"] = total
        return losses

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        inputs = batch["input"].float()
        if bool((batch["needs_occluder"] > 0.5).any()):
            # a fixed occlusion of the photos for the sheet (the global streams are restored by the trainer)
            torch.manual_seed(0)
            inputs = self._occlude_photos(batch, inputs, 1.0)
        reg = modules["regressor"]
        params = self._split(reg(inputs)["coefficients"])
        return self._sheet(inputs, params, batch["image"].float())


class Stage2Task(_RegressorTask):
    """CFR-GAN stage 2: a frozen teacher on the clean crop, the student on a masked copy.

    ``config.init`` (the stage-1 weights) is required: both networks start from it.
    Modules ``student`` (trained) and ``teacher`` (frozen, eval mode, no gradients); one
    optimiser ``student``. Logged terms: ``para``, ``teach``, ``lan``.

    Raises:
        ValueError: no ``init``; FileNotFoundError: ``init`` does not exist.
    """

    def __init__(self, config: RegressorTrainConfig, model: Optional[MorphableModel] = None,
                 identity: Optional[nn.Module] = None) -> None:
        if not config.init:
            raise ValueError("stage 2 needs the stage-1 weights to start teacher and student from: "
                             "give init (--init CKPT)")
        if not Path(config.init).exists():
            raise FileNotFoundError(f"{config.init}: no such checkpoint (stage-1 weights for stage 2)")
        super().__init__(config, model, identity)
        self.erasing = RandomErasing(p=1.0)

    def build(self, device: torch.device) -> dict[str, nn.Module]:
        self._place(device)
        student = self._new_regressor(device)
        _init_weights(student, self.config.init, self.model)
        teacher = self._new_regressor(device)
        teacher.load_state_dict(student.state_dict())
        teacher.requires_grad_(False).eval()
        return {"student": student, "teacher": teacher}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, OptimizerSpec]:
        return {"student": OptimizerSpec(modules["student"].parameters())}

    def mask_images(self, images: Tensor, landmarks: Tensor, rng: np.random.Generator) -> Tensor:
        """The student's inputs: each clean crop with a synthesised medical mask (probability
        ``mask_prob``) or random erasing. ``images`` (B, 3, S, S), ``landmarks`` (B, 68, 2)."""
        from face3d.synth.occluders import occlude

        if self._occluders is None:
            self._occluders = _occluder_sampler(self.config, ["medical_mask"])
        out = []
        for img, lm in zip(images, landmarks):
            if rng.random() < self.config.mask_prob:
                res = occlude(img.detach().cpu(), lm.detach().cpu(), "medical_mask", rng, self._occluders.library)
                out.append(res.image.to(img))
            else:
                out.append(self.erasing(img, rng)[0])
        return torch.stack(out)

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        clean = batch["image"].float()
        target_lm = self._target_landmarks(batch)
        masked = self.mask_images(clean, target_lm, _step_rng())
        teacher = modules["teacher"]
        with torch.no_grad():
            t_out = _as_output(teacher(clean))
        s_out = _as_output(modules["student"](masked))
        lt = teacher_student_loss(self.model, t_out, s_out, target_lm, int(clean.shape[-1]), self.config.loss)
        losses = {k: v.detach() for k, v in lt.terms.items()}
        losses["loss"] = lt.total
        return losses

    def sample(self, modules: Mapping[str, nn.Module], batch: Any) -> Optional[Tensor]:
        clean = batch["image"].float()
        masked = self.mask_images(clean, self._target_landmarks(batch), np.random.default_rng(0))
        params = self._split(modules["student"](masked)["coefficients"])
        return self._sheet(masked, params, clean)


def make_task(config: RegressorTrainConfig, model: Optional[MorphableModel] = None,
              identity: Optional[nn.Module] = None) -> _RegressorTask:
    """:class:`Stage1Task` or :class:`Stage2Task` as ``config.stage`` says."""
    return (Stage1Task if config.stage == 1 else Stage2Task)(config, model, identity)


def train_regressor(config: RegressorTrainConfig, model: Optional[MorphableModel] = None):
    """Build the task and data of ``config`` and run the trainer; returns the
    :class:`~face3d.training.trainer.Trainer` (``trainer.step``, ``trainer.modules``)."""
    from face3d.training.trainer import Trainer

    import yaml

    from face3d.io_utils import atomic_write
    from face3d.training.trainer import dist_env

    task = make_task(config, model)
    dataset = build_regressor_dataset(config, task.model)
    if dist_env()[1] == 0:  # the full settings next to the trainer's config.yaml, to rerun the run
        out = Path(config.trainer.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "regressor.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return Trainer(task, dataset, config.trainer).fit()


# --------------------------------------------------------------------------- evaluation
def _similarity_aligned_error(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean vertex distance (B,) after the least-squares similarity (Umeyama) pred → gt.
    ``pred``, ``gt`` (B, N, 3) float64."""
    mp, mg = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)
    p, g = pred - mp, gt - mg
    cov = g.transpose(1, 2) @ p / p.shape[1]
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    var = (p ** 2).sum(-1).mean(1)
    s = (S * D.diagonal(dim1=-2, dim2=-1)).sum(-1) / var.clamp_min(1e-12)
    aligned = s[:, None, None] * p @ R.transpose(1, 2) + mg
    return (aligned - gt).norm(dim=-1).mean(1)


def _nme(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) mean landmark distance / √(w·h) of the ground-truth landmarks' bounding box."""
    wh = (gt.max(1).values - gt.min(1).values).clamp_min(1e-6)
    return (pred - gt).norm(dim=-1).mean(1) / (wh[:, 0] * wh[:, 1]).sqrt()


class _Scorer:
    """Landmarks by the fitter's rule (jaw on the silhouette, as annotated) and errors."""

    def __init__(self, model: MorphableModel) -> None:
        from face3d.fitting.lm import LandmarkFitter, LMFitConfig

        self.model = model
        self.fitter = LandmarkFitter(model, LMFitConfig(n_id=model.n_id, n_exp=model.n_exp), device=model.device)

    def landmarks(self, p: FaceParams, size: int) -> Tensor:
        p = p.to(self.model.device, self.model.dtype)
        intr = aligned_camera(p.batch, size, self.model.dtype, self.model.device)
        lm, _ = self.fitter.project(p.alpha, p.beta, p.rotation(), p.camera_translation(), intr)
        return lm.double()

    def synthetic(self, pred: FaceParams, gt: FaceParams, gt_lm: Tensor, size: int) -> dict[str, list[float]]:
        m = self.model
        pred, gt = pred.to(m.device, m.dtype), gt.to(m.device, m.dtype)
        with torch.no_grad():
            vp = m.shape(pred.alpha, pred.beta).double()
            vg = m.shape(gt.alpha, gt.beta).double()
            lm = self.landmarks(pred, size)
        ang = (pred.angles - gt.angles).abs().rad2deg().mean(1)
        id_std, exp_std = m.id_std.to(pred.alpha), m.exp_std.to(pred.beta)
        return {
            "landmark_nme": _nme(lm, gt_lm.double().to(lm.device)).tolist(),
            "vertex_error_mm": _similarity_aligned_error(vp, vg).tolist(),
            "pose_error_deg": ang.tolist(),
            "translation_error_mm": (pred.translation - gt.translation).norm(dim=-1).tolist(),
            "identity_error_std": ((pred.alpha - gt.alpha) / id_std).abs().mean(1).tolist()
            if m.n_id else [0.0] * pred.batch,
            "expression_error_std": ((pred.beta - gt.beta) / exp_std).abs().mean(1).tolist()
            if m.n_exp else [0.0] * pred.batch,
        }


def _predict(reg: FaceRegressor, images: Tensor, batch: int) -> Tensor:
    outs = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            outs.append(reg(images[i:i + batch].to(reg.output_scale.device)).cpu())
    return torch.cat(outs)


def _mean_params(model: MorphableModel, n: int) -> FaceParams:
    """The mean-face baseline: all coefficients zero (mean shape, frontal, centred, ambient light)."""
    z = lambda k: torch.zeros(n, k, dtype=model.dtype, device=model.device)  # noqa: E731
    return FaceParams(z(model.n_id), z(model.n_exp), z(model.n_albedo), z(3), z(27), z(3))


def _summary(values: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in values.items() if v}


def evaluate_regressor(checkpoint: Union[str, os.PathLike], data: Optional[Union[str, os.PathLike]] = None,
                       synthetic: int = 64, *, model: Union[str, MorphableModel, None] = None,
                       image_size: Optional[int] = None, seed: int = 1_000_003, batch_size: int = 16,
                       occluders: Optional[str] = None, synth: Optional[SyntheticFaceConfig] = None,
                       device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Accuracy of a trained regressor and of the mean-face baseline.

    Args:
        checkpoint: a trainer checkpoint / run folder, or a bare FaceRegressor state dict.
        data: folder of photos with 68-point ground truth: ``<stem>.pts`` next to an image, or
            dlib imglab XML datasets (:func:`face3d.landmarks.file_backend.annotated_faces`;
            other numbers of points are skipped). Each photo is aligned by the five-point similarity of
            its ground-truth landmarks (:mod:`face3d.align`) — the evaluation measures the
            regressor, not a detector — and predicted landmarks are mapped back to the photo.
        synthetic: held-out synthetic faces (seed ``seed``, distinct from training's), each
            scored clean and with an occluder (every kind, probability 1).
        model: morphable model (name / path / object; default: the checkpoint's ``model``).
        image_size: crop side (default: the checkpoint's training ``image_size``, else 224).
        synth: synthetic-face settings (default: the checkpoint's, else the defaults).

    Returns:
        ``{"checkpoint", "model", "image_size", "synthetic_clean": {"regressor": {...},
        "mean_face": {...}}, "synthetic_occluded": {...}, "photos": {...}, "count": {...}}``;
        per-method metrics (means over faces): ``landmark_nme`` (distance / √(w·h) of the GT
        landmark box), ``vertex_error_mm`` (mean over vertices after similarity alignment of
        the shapes), ``pose_error_deg`` (mean |Δyaw, Δpitch, Δroll|), ``translation_error_mm``,
        ``identity_error_std`` / ``expression_error_std`` (mean |Δ| in prior std-devs);
        photos: ``landmark_nme`` only. Sections with no faces are omitted.
    """
    from face3d.config import apply_overrides

    _, info = read_regressor_checkpoint(checkpoint)
    if not isinstance(model, MorphableModel):
        from face3d.model_zoo import load_model

        model = load_model(model or info.get("model") or "auto", device=device)
    model = model.to(device)
    reg = load_regressor(checkpoint, model, device)
    size = int(image_size or info.get("image_size") or ALIGNED_SIZE)
    scorer = _Scorer(model)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "model": model.name, "image_size": size,
                              "backbone": reg.backbone_name, "step": info.get("step"), "count": {}}
    if synthetic > 0:
        from face3d.synth.faces import SyntheticFaceDataset, SyntheticFaces
        from face3d.synth.occluders import OCCLUDER_KINDS, OccluderLibrary, OccluderSampler

        if synth is None:
            synth = SyntheticFaceConfig()
            if isinstance(info.get("synth"), Mapping):
                synth = apply_overrides(synth, info["synth"])
        scfg = dataclasses.replace(synth, image_size=size)
        faces = SyntheticFaces(model, scfg, seed=seed)
        sampler = OccluderSampler({k: 1.0 for k in OCCLUDER_KINDS}, library=OccluderLibrary(occluders))
        ds = SyntheticFaceDataset(faces, synthetic, sampler, occlusion_prob=1.0)
        clean_imgs, occ_imgs, coeffs, lms = [], [], [], []
        for i in range(0, synthetic, batch_size):
            b = ds.batch(list(range(i, min(synthetic, i + batch_size))))
            clean_imgs.append(b["image"].float().cpu())
            occ_imgs.append(b["occluded"].float().cpu())
            coeffs.append(b["coefficients"].cpu())
            lms.append(b["landmarks"].cpu())
        gt = FaceParams.split(torch.cat(coeffs).to(model.device, model.dtype), model)
        gt_lm = torch.cat(lms)
        base = _summary(scorer.synthetic(_mean_params(model, synthetic), gt, gt_lm, size))
        for name, imgs in (("synthetic_clean", clean_imgs), ("synthetic_occluded", occ_imgs)):
            pred = FaceParams.split(_predict(reg, torch.cat(imgs), batch_size).to(model.device, model.dtype), model)
            report[name] = {"regressor": _summary(scorer.synthetic(pred, gt, gt_lm, size)), "mean_face": base}
        report["count"]["synthetic"] = synthetic
    if data is not None:
        photos = _photo_nme(reg, scorer, Path(data), size, batch_size)
        if photos is not None:
            report["photos"] = photos["metrics"]
            report["count"]["photos"] = photos["count"]
    return report


def _photo_nme(reg: FaceRegressor, scorer: _Scorer, folder: Path, size: int, batch_size: int
               ) -> Optional[dict[str, Any]]:
    from face3d.align import five_points, invert_similarity, similarity_to_template, transform_points, \
        warp_to_aligned
    from face3d.errors import MissingInputError
    from face3d.imageio import image_to_tensor, load_image
    from face3d.landmarks.file_backend import annotated_faces
    from face3d.regressor.inference import crop_template

    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no such folder")
    faces = annotated_faces(folder)
    if not faces:
        log.warning("%s: no photo with 68-point ground truth (.pts next to it, or a dlib XML)", folder)
        return None
    template = crop_template(scorer.model, size)
    gt = torch.from_numpy(np.stack([f.landmarks for f in faces])).double()
    A = similarity_to_template(five_points(gt), template)
    crops, photos = [], {}
    for k, face in enumerate(faces):
        if face.image not in photos:
            photos = {face.image: image_to_tensor(load_image(face.image).rgb)}  # faces of one image are adjacent
        crops.append(warp_to_aligned(photos[face.image], A[k:k + 1].float(), size)[0])
    model = scorer.model
    n = len(crops)
    pred = FaceParams.split(_predict(reg, torch.stack(crops), batch_size).to(model.device, model.dtype), model)
    out = {}
    for name, p in (("regressor", pred), ("mean_face", _mean_params(model, n))):
        with torch.no_grad():
            lm_crop = scorer.landmarks(p, size).cpu()
        lm_photo = transform_points(invert_similarity(A), lm_crop)
        out[name] = {"landmark_nme": float(_nme(lm_photo, gt).mean())}
    return {"metrics": out, "count": n}


def format_report(report: Mapping[str, Any]) -> str:
    """A small text table of :func:`evaluate_regressor`'s numbers (regressor vs mean face)."""
    rows = []
    for section in ("synthetic_clean", "synthetic_occluded", "photos"):
        if section not in report:
            continue
        r, b = report[section]["regressor"], report[section]["mean_face"]
        for k in r:
            rows.append((section, k, r[k], b[k]))
    head = f"{'set':<20} {'metric':<22} {'regressor':>10} {'mean face':>10}"
    lines = [f"{report.get('checkpoint')} ({report.get('backbone')}, model {report.get('model')}, "
             f"{report.get('image_size')} px)", head, "-" * len(head)]
    lines += [f"{s:<20} {k:<22} {a:>10.4f} {b:>10.4f}" for s, k, a, b in rows]
    return "\n".join(lines)
