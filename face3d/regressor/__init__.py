"""Learned coefficient regressor (Deng et al. 2019's R-Net; CFR-GAN §3.1's occlusion-robust fine-tuning).

* :mod:`~face3d.regressor.backbones` — ResNet-18/34/50 and MobileNetV2 with torchvision's
  parameter names (no torchvision dependency), 4 top feature maps for L_teach.
* :mod:`~face3d.regressor.model` — :class:`FaceRegressor` (crop → FaceParams), output scaling,
  :func:`load_deng_rnet` for Deng et al.'s published checkpoint.
* :mod:`~face3d.regressor.identity` — ArcFace IResNet for the identity loss, loaded from a path.
* :mod:`~face3d.regressor.losses` — photometric, landmark, identity, regularisation and
  reflectance losses, and the teacher-student losses L_para, L_teach, L_lan.
"""
from face3d.regressor.backbones import BACKBONES, build_backbone, load_backbone_state
from face3d.regressor.identity import IResNet, build_identity_net, load_identity_net
from face3d.regressor.losses import (
    IdentityLoss, LossTerms, RegressorLoss, RegressorLossConfig, landmark_weights, project_landmarks, render_face,
    teacher_student_loss,
)
from face3d.regressor.model import FaceRegressor, OutputScales, RegressorOutput, load_deng_rnet

__all__ = [
    "BACKBONES", "FaceRegressor", "IResNet", "IdentityLoss", "LossTerms", "OutputScales", "RegressorLoss",
    "RegressorLossConfig", "RegressorOutput", "build_backbone", "build_identity_net", "landmark_weights",
    "load_backbone_state", "load_deng_rnet", "load_identity_net", "project_landmarks", "render_face",
    "teacher_student_loss",
]
