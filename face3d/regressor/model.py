"""The coefficient regressor: aligned face crop → one coefficient vector (Deng et al. 2019's R-Net).

:class:`FaceRegressor` is a backbone (:mod:`face3d.regressor.backbones`; ResNet-50 as in
Deng et al. and CFR-GAN §3.1, or ResNet-18/34 / MobileNetV2 for CPU) whose final linear
layer outputs ``coefficient_count(model)`` numbers laid out as
:class:`face3d.coefficients.FaceParams`: ``[α | β | δ | yaw, pitch, roll | γ (27) | t (3)]``.

Input: (B, 3, S, S) aligned crops (5-point similarity alignment, :mod:`face3d.align`), sRGB
in [0, 1]; the network normalises them itself (``input_normalization``: "imagenet" mean/std,
the statistics torchvision's pre-trained weights expect; or "none", Deng et al.'s raw
[0, 1] input). The crop's camera is :func:`face3d.coefficients.aligned_camera` at size S.

Output scaling
--------------
The head's raw outputs r are O(1) numbers; each group is multiplied by a fixed scale
(a persistent buffer ``output_scale``, so checkpoints carry it) to give the coefficients:

* α = r · ``identity`` · ξ_id, β = r · ``expression`` · ξ_exp, δ = r · ``albedo`` · ξ_t, so
  one raw unit is one prior standard deviation whatever the model's units (for models whose
  modes are pre-scaled, e.g. the BFM conversion, ξ = 1 and this is Deng et al.'s layout);
* angles: radians (scale 1); γ: as is (scale 1; the renderer adds the 0.8 ambient);
* translation: ``translation_mm`` = 100 mm per raw unit — Deng et al.'s decimetre — because a
  few millimetres of offset must be as easy to reach as a few hundredths of a radian.

The final layer starts at zero weight and bias (as Deng et al. do), so an untrained
regressor predicts the mean face, frontal, at ``ALIGNED_DISTANCE_MM``, under the uniform
ambient light — a centred face in the crop.

Deng et al.'s published R-Net
-----------------------------
:func:`load_deng_rnet` loads their checkpoint (``net_recon`` = torchvision ResNet-50 trunk +
seven 1×1-conv heads 80/64/80/3/27/2/1 = 257 outputs, or a plain ``fc`` of 257 rows) for the
BFM converted by :mod:`face3d.converters.bfm`. The identity/expression/texture/SH rows carry
over unchanged (same bases up to the mm unit, same SH constants, ambient and view frame);
their pose is a different parametrisation, converted exactly at the output (``pose_convention
= "deng"``), see :func:`deng_pose_to_face3d`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from face3d.camera import FRONTAL, matrix_to_euler
from face3d.coefficients import ALIGNED_FOCAL, FaceParams, coefficient_count
from face3d.morphable_model import MorphableModel
from face3d.regressor.backbones import Backbone, build_backbone, load_backbone_state, load_state_file

__all__ = ["OutputScales", "RegressorOutput", "FaceRegressor", "load_deng_rnet", "deng_pose_to_face3d",
           "deng_rotation", "IMAGENET_MEAN", "IMAGENET_STD", "DENG_HEAD_SIZES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Output rows of Deng et al.'s R-Net heads: id, exp, tex, angles (x, y, z), SH, (t_x, t_y), t_z.
DENG_HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)
#: Deng et al.'s camera: 10 dm from the origin of their (re-centred) model.
_DENG_DM_TO_MM = 100.0


@dataclass(frozen=True)
class OutputScales:
    """Raw-output → coefficient multipliers per group (see the module doc)."""

    identity: float = 1.0
    expression: float = 1.0
    albedo: float = 1.0
    angles: float = 1.0
    sh: float = 1.0
    translation_mm: float = 100.0


@dataclass
class RegressorOutput:
    """What :meth:`FaceRegressor.features` returns.

    * ``maps``: the 4 top backbone feature maps, finest first (for L_teach, CFR-GAN eq. 3).
    * ``raw`` (B, K): the final layer's outputs (for L_para, eq. 2).
    * ``coefficients`` (B, K): scaled coefficients in the FaceParams layout.
    """

    maps: list[Tensor]
    raw: Tensor
    coefficients: Tensor


def deng_rotation(angles: Tensor) -> Tensor:
    """Deng et al.'s rotation R = R_z(c) · R_y(b) · R_x(a) (B, 3, 3) for angles (a, b, c) (B, 3), radians.

    It acts on column vectors of their (re-centred) model frame, which is ours (x right, y up,
    z toward the viewer)."""
    c, s = angles.cos(), angles.sin()
    o, z = torch.ones_like(angles[:, 0]), torch.zeros_like(angles[:, 0])
    rx = torch.stack([o, z, z, z, c[:, 0], -s[:, 0], z, s[:, 0], c[:, 0]], -1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], z, s[:, 1], z, o, z, -s[:, 1], z, c[:, 1]], -1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], z, s[:, 2], c[:, 2], z, z, z, o], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def deng_pose_to_face3d(angles: Tensor, translation_mm: Tensor, centroid_mm: Tensor) -> tuple[Tensor, Tensor]:
    """Deng et al.'s pose → FaceParams (angles (B, 3) yaw/pitch/roll rad, translation offset (B, 3) mm).

    Their model is re-centred on the mean shape's centroid c, rotated by
    :func:`deng_rotation`, translated by t, and seen by a camera on the +z axis 10 dm away
    looking down −z, image y up (landmark rows are H − 1 − v). In our camera frame (OpenCV)::

        X_cam = FRONTAL · R_d · X + FRONTAL · (t − R_d · c) + (0, 0, d),  FRONTAL = diag(1, −1, −1)

    so our rotation is FRONTAL · R_d (decomposed with :func:`face3d.camera.matrix_to_euler`)
    and our translation offset FRONTAL · (t − R_d c). Their principal point is 112 on a 224
    crop against our 111.5, and their rows are flipped about H − 1: the image of every point
    is shifted by (+0.5, −0.5) px, which we fold into the translation as (+0.5, −0.5) · z / f
    (exact at the depth of the model origin, within 0.05 px over the face's depth range).

    ``translation_mm`` is their t in millimetres (their decimetres × 100); ``centroid_mm`` (3,).
    """
    R_d = deng_rotation(angles)
    frontal = FRONTAL.to(dtype=angles.dtype, device=angles.device)
    yaw, pitch, roll = matrix_to_euler(frontal @ R_d, degrees=False)
    offset = (translation_mm - torch.einsum("bij,j->bi", R_d, centroid_mm.to(angles))) * frontal.diagonal()
    depth = offset[:, 2:3] + _DENG_DM_TO_MM * 10.0
    half_px = 0.5 * depth / ALIGNED_FOCAL
    offset = offset + torch.cat([half_px, -half_px, torch.zeros_like(half_px)], 1)
    return torch.stack([yaw, pitch, roll], -1), offset


class FaceRegressor(nn.Module):
    """Aligned crop → coefficient vector; see the module doc.

    Args:
        backbone_name: "resnet50" (Deng et al.), "resnet34", "resnet18" or "mobilenet_v2".
        model: the morphable model whose coefficients are predicted (sizes and ξ are read;
            the model itself is not stored).
        scales: :class:`OutputScales`.
        input_normalization: "imagenet" or "none".
        pose_convention: "face3d" (our yaw/pitch/roll and offset, scaled) or "deng" (set by
            :func:`load_deng_rnet`).

    State: the backbone (``backbone.*``, torchvision names), ``output_scale`` (K,),
    ``pose_centroid`` (3,) mm (Deng et al.'s re-centring point; used only with
    ``pose_convention="deng"``) and an extra-state entry with the backbone name, group sizes,
    input normalisation and pose convention, so a saved state dict restores all of them.
    """

    def __init__(self, backbone_name: str, model: MorphableModel, scales: OutputScales = OutputScales(),
                 input_normalization: str = "imagenet", pose_convention: str = "face3d") -> None:
        super().__init__()
        self.backbone_name = backbone_name
        self.backbone: Backbone = build_backbone(backbone_name)
        self.sizes = (model.n_id, model.n_exp, model.n_albedo, 3, 27, 3)
        k = coefficient_count(model)
        self.backbone.reset_head(k, zero=True)
        if hasattr(self.backbone, "classifier"):  # no dropout in front of a regression head
            self.backbone.classifier[0].p = 0.0
        f32 = dict(dtype=torch.float32, device=model.device)
        scale = torch.cat([
            model.id_std.to(**f32) * scales.identity, model.exp_std.to(**f32) * scales.expression,
            model.albedo_std.to(**f32) * scales.albedo, torch.full((3,), scales.angles, **f32),
            torch.full((27,), scales.sh, **f32), torch.full((3,), scales.translation_mm, **f32),
        ]).cpu()
        self.register_buffer("output_scale", scale)
        self.register_buffer("pose_centroid", torch.zeros(3))
        self.input_normalization = input_normalization
        self.pose_convention = pose_convention
        self._check_settings()

    # -- settings that travel with the state dict ----------------------------------------
    def _check_settings(self) -> None:
        if self.input_normalization not in ("imagenet", "none"):
            raise ValueError(f"input_normalization must be 'imagenet' or 'none', got {self.input_normalization!r}")
        if self.pose_convention not in ("face3d", "deng"):
            raise ValueError(f"pose_convention must be 'face3d' or 'deng', got {self.pose_convention!r}")

    def get_extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone_name, "sizes": list(self.sizes),
                "input_normalization": self.input_normalization, "pose_convention": self.pose_convention}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("backbone", self.backbone_name) != self.backbone_name:
            raise ValueError(f"checkpoint is for backbone {state['backbone']!r}, "
                             f"this regressor uses {self.backbone_name!r}")
        if tuple(state.get("sizes", self.sizes)) != tuple(self.sizes):
            raise ValueError(f"checkpoint predicts coefficient groups {tuple(state['sizes'])}, "
                             f"this regressor's model needs {self.sizes}")
        self.input_normalization = state.get("input_normalization", self.input_normalization)
        self.pose_convention = state.get("pose_convention", self.pose_convention)
        self._check_settings()

    @property
    def coefficient_count(self) -> int:
        return sum(self.sizes)

    # -- evaluation ----------------------------------------------------------------------
    def normalize(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) sRGB in [0, 1] → the backbone's input."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(image.shape)}")
        if self.input_normalization == "none":
            return image
        mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (image - mean) / std

    def decode(self, raw: Tensor) -> Tensor:
        """Raw head outputs (B, K) → coefficients (B, K) in the FaceParams layout."""
        coeffs = raw * self.output_scale.to(raw)
        if self.pose_convention == "face3d":
            return coeffs
        a = sum(self.sizes[:3])
        angles, translation = deng_pose_to_face3d(coeffs[:, a:a + 3], coeffs[:, a + 30:a + 33], self.pose_centroid)
        return torch.cat([coeffs[:, :a], angles, coeffs[:, a + 3:a + 30], translation], 1)

    def features(self, image: Tensor) -> RegressorOutput:
        """Feature maps, raw outputs and coefficients of (B, 3, H, W) sRGB crops in [0, 1]."""
        maps = self.backbone.feature_maps(self.normalize(image))
        raw = self.backbone.head_from_map(maps[-1])
        return RegressorOutput(maps=maps, raw=raw, coefficients=self.decode(raw))

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) sRGB crops in [0, 1] → coefficients (B, K)."""
        return self.features(image).coefficients

    def params(self, image: Tensor) -> FaceParams:
        """(B, 3, H, W) sRGB crops → :class:`FaceParams`."""
        sizes = list(self.sizes)
        return FaceParams(*torch.split(self(image), sizes, dim=1))

    # -- weights -------------------------------------------------------------------------
    def load_backbone_weights(self, source: Mapping[str, Tensor] | str | os.PathLike) -> list[str]:
        """Initialise the trunk from torchvision-layout weights (e.g. ImageNet), keeping the
        zero head; returns ignored extra keys. See :func:`~face3d.regressor.backbones.load_backbone_state`."""
        return load_backbone_state(self.backbone, source, skip_head=True)


def _strip(key: str) -> str:
    prefixes = ("module.", "net_recon.", "backbone.")
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _deng_head(state: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Their head as one (257, 2048) weight and (257,) bias."""
    if all(f"final_layers.{i}.weight" in state for i in range(len(DENG_HEAD_SIZES))):
        ws, bs = [], []
        for i, n in enumerate(DENG_HEAD_SIZES):
            w, b = state[f"final_layers.{i}.weight"], state.get(f"final_layers.{i}.bias")
            if w.shape[0] != n or w.reshape(n, -1).shape[1] != 2048 or b is None or b.shape != (n,):
                raise ValueError(f"final_layers.{i} has weight {tuple(w.shape)} / bias "
                                 f"{None if b is None else tuple(b.shape)}; expected ({n}, 2048, 1, 1) / ({n},)")
            ws.append(w.reshape(n, -1))
            bs.append(b)
        return torch.cat(ws), torch.cat(bs)
    if "fc.weight" in state and "fc.bias" in state:
        w, b = state["fc.weight"], state["fc.bias"]
        if tuple(w.shape) != (sum(DENG_HEAD_SIZES), 2048):
            raise ValueError(f"fc.weight has shape {tuple(w.shape)}; "
                             f"Deng et al.'s R-Net has ({sum(DENG_HEAD_SIZES)}, 2048)")
        return w, b
    raise ValueError("no R-Net head found: expected final_layers.0..6.{weight,bias} (1x1 convolutions) "
                     "or fc.{weight,bias}")


def load_deng_rnet(source: Mapping[str, Any] | str | os.PathLike, model: MorphableModel) -> FaceRegressor:
    """A :class:`FaceRegressor` with Deng et al.'s published R-Net weights, for the BFM.

    ``source``: a checkpoint path (read with ``torch.load(weights_only=True)``) or its loaded
    content — the training checkpoint (``{"net_recon": {...}, ...}``) or the bare state dict;
    ``module.``, ``net_recon.`` and ``backbone.`` prefixes are stripped.

    ``model`` must be the BFM 2009 front model of Deng et al. converted by
    :func:`face3d.converters.bfm.convert_bfm` (80 identity, 64 expression, 80 texture modes,
    not mirrored): their coefficient rows only mean something for those bases. Any other model
    raises ``ValueError`` — a regressor for it has to be trained (its trunk may still be
    initialised from their ResNet-50 with :meth:`FaceRegressor.load_backbone_weights`).

    Conventions carried over: coefficients α, β, δ row for row (our BFM keeps their
    std-scaled modes; δ goes through the converter's linearised sRGB→linear albedo basis, a
    first-order match), γ row for row (same SH basis, ambient 0.8 and view frame — note their
    shading multiplies sRGB-encoded albedo, ours linear albedo, so rendered brightness differs
    somewhat), input unnormalised [0, 1] RGB, pose converted exactly by
    :func:`deng_pose_to_face3d`.
    """
    raw = load_state_file(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    if isinstance(raw.get("net_recon"), Mapping):
        raw = dict(raw["net_recon"])
    state = {_strip(k): v for k, v in raw.items() if isinstance(v, Tensor)}

    got = (model.n_id, model.n_exp, model.n_albedo)
    if got != DENG_HEAD_SIZES[:3] or model.meta.get("name") != "bfm":
        raise ValueError(
            f"Deng et al.'s R-Net predicts BFM 2009 coefficients (80 id, 64 exp, 80 tex); model {model.name!r} has "
            f"{got[0]}/{got[1]}/{got[2]} modes and no faithful mapping of their rows to its bases exists. Convert the "
            "BFM with face3d.converters.bfm, or train a regressor for this model (its trunk can start from theirs "
            "with FaceRegressor.load_backbone_weights)")
    if model.meta.get("mirrored_x"):
        raise ValueError("this BFM conversion was mirrored in x; Deng et al.'s pose cannot be mapped onto it")
    weight, bias = _deng_head(state)

    reg = FaceRegressor("resnet50", model, OutputScales(translation_mm=_DENG_DM_TO_MM),
                        input_normalization="none", pose_convention="deng")
    trunk = {k: v for k, v in state.items() if not k.startswith(("fc.", "final_layers."))}
    load_backbone_state(reg.backbone, trunk, skip_head=True)
    with torch.no_grad():
        reg.backbone.head.weight.copy_(weight)
        reg.backbone.head.bias.copy_(bias)
        reg.pose_centroid.copy_(model.mean_shape.detach().double().mean(0).float().cpu())
    return reg
