"""One coefficient vector per face: the regressor's output and the synthetic data's ground truth.

Layout (after Deng et al. 2019, whose R-Net outputs 257 numbers for the BFM: 80 id, 64 exp,
80 tex, 3 angles, 27 SH, 3 translation), sized to the active model::

    [ α (K_id) | β (K_exp) | δ (K_t) | yaw, pitch, roll (3, radians) | γ (27) | t (3) ]

* α, β, δ: model coefficients (their prior std-devs are ``model.id_std`` etc.).
* yaw, pitch, roll: the conventions of :mod:`face3d.camera` (radians here).
* γ: SH lighting, (3 channels × 9), with Deng et al.'s +0.8 ambient *added when shading*
  (:data:`face3d.lighting.DENG_AMBIENT`), so γ = 0 is a uniform white light.
* t: offset (mm) of the translation from :data:`ALIGNED_DISTANCE_MM` along z, i.e. the
  model→camera translation is ``(t_x, t_y, ALIGNED_DISTANCE_MM + t_z)``.

Aligned crops use one fixed camera, :func:`aligned_camera`: 224² pixels, focal length
1015 px (Deng et al.), principal point at the image centre. A face of the usual size
(≈ 150 mm wide) at 1000 mm then fills about two thirds of the crop, as their 5-point
alignment arranges.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor

from face3d.camera import Intrinsics, euler_to_matrix, matrix_to_euler
from face3d.morphable_model import MorphableModel

__all__ = ["FaceParams", "ALIGNED_SIZE", "ALIGNED_FOCAL", "ALIGNED_DISTANCE_MM", "aligned_camera",
           "coefficient_count"]

ALIGNED_SIZE = 224
ALIGNED_FOCAL = 1015.0
ALIGNED_DISTANCE_MM = 1000.0


def aligned_camera(batch: int = 1, size: int = ALIGNED_SIZE, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Intrinsics:
    """The camera of aligned face crops (see module doc); focal scales with ``size``."""
    f = ALIGNED_FOCAL * size / ALIGNED_SIZE
    focal = torch.full((batch, 2), f, dtype=dtype, device=device)
    principal = torch.full((batch, 2), (size - 1) / 2.0, dtype=dtype, device=device)
    return Intrinsics(focal, principal)


def coefficient_count(model: MorphableModel) -> int:
    """Length of the coefficient vector for ``model``."""
    return model.n_id + model.n_exp + model.n_albedo + 3 + 27 + 3


@dataclass
class FaceParams:
    """A batch of face parameters; every field is (B, ·). See the module doc for meanings."""

    alpha: Tensor
    beta: Tensor
    delta: Tensor
    angles: Tensor
    sh: Tensor
    translation: Tensor

    @classmethod
    def split(cls, vector: Tensor, model: MorphableModel) -> "FaceParams":
        """(B, coefficient_count(model)) → FaceParams."""
        sizes = [model.n_id, model.n_exp, model.n_albedo, 3, 27, 3]
        if vector.ndim != 2 or vector.shape[1] != sum(sizes):
            raise ValueError(f"expected (B, {sum(sizes)}) coefficients for model {model.name!r}, "
                             f"got {tuple(vector.shape)}")
        return cls(*torch.split(vector, sizes, dim=1))

    def join(self) -> Tensor:
        """FaceParams → (B, coefficient_count(model))."""
        return torch.cat([getattr(self, f.name) for f in fields(self)], dim=1)

    @property
    def batch(self) -> int:
        return int(self.alpha.shape[0])

    def rotation(self) -> Tensor:
        """Model→camera rotation (B, 3, 3)."""
        yaw, pitch, roll = self.angles.unbind(-1)
        return euler_to_matrix(yaw, pitch, roll, degrees=False)

    def camera_translation(self) -> Tensor:
        """Model→camera translation (B, 3) in mm."""
        return self.translation + self.translation.new_tensor([0.0, 0.0, ALIGNED_DISTANCE_MM])

    @classmethod
    def from_pose(cls, alpha: Tensor, beta: Tensor, R: Tensor, t: Tensor, sh: Optional[Tensor] = None,
                  delta: Optional[Tensor] = None) -> "FaceParams":
        """Build from a rotation matrix and a camera translation (e.g. an LM fit)."""
        yaw, pitch, roll = matrix_to_euler(R, degrees=False)
        b = alpha.shape[0]
        sh = sh if sh is not None else alpha.new_zeros(b, 27)
        delta = delta if delta is not None else alpha.new_zeros(b, 0)
        offset = t - t.new_tensor([0.0, 0.0, ALIGNED_DISTANCE_MM])
        return cls(alpha, beta, delta, torch.stack([yaw, pitch, roll], -1), sh, offset)

    def to(self, device: torch.device | str | None = None, dtype: Optional[torch.dtype] = None) -> "FaceParams":
        return FaceParams(*(getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)))
