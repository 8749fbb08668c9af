"""Closed-form initial pose from 2D–3D landmark correspondences.

An affine (scaled-orthographic) camera ``u ≈ A·X + b`` is fitted to the correspondences
by weighted linear least squares; its two rows are ``f/Z̄ · R[0]`` and ``f/Z̄ · R[1]``
for a face at mean depth Z̄, so the nearest rotation (SVD) gives R and the row norm gives
the depth ``Z̄ = f / s``. Exact for a distant face, and within a few degrees / percent
of the perspective pose for faces at normal distances — a good start for
Levenberg–Marquardt (:mod:`face3d.fitting.lm`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from face3d.camera import Intrinsics


def affine_pose(points_3d: Tensor, points_2d: Tensor, weights: Tensor,
                intrinsics: Intrinsics) -> tuple[Tensor, Tensor]:
    """Pose ``(R (B, 3, 3), t (B, 3) mm)`` with ``project(R·X + t) ≈ points_2d``.

    Args:
        points_3d: (B, n, 3) or (n, 3) model-frame points, mm.
        points_2d: (B, n, 2) pixels (image convention of :mod:`face3d.camera`).
        weights: (B, n) ≥ 0; zero drops a point. Needs ≥ 4 non-coplanar weighted points.
        intrinsics: the camera (focal and principal point in pixels).
    """
    B = points_2d.shape[0]
    X = points_3d.expand(B, -1, -1) if points_3d.ndim == 3 else points_3d.expand(B, -1, -1)
    w = weights.to(points_2d.dtype)
    wsum = w.sum(1, keepdim=True).clamp_min(1e-12)
    xbar = (w[..., None] * X).sum(1) / wsum           # (B, 3)
    ubar = (w[..., None] * points_2d).sum(1) / wsum   # (B, 2)
    Xc = X - xbar[:, None]
    Uc = points_2d - ubar[:, None]
    # normal equations of the affine fit: (Xcᵀ W Xc) Aᵀ = Xcᵀ W Uc; the tiny ridge only
    # guards a rank-deficient 3-D point set (rejected upstream), it does not bias real fits
    XtX = Xc.transpose(1, 2) @ (w[..., None] * Xc)
    ridge = 1e-9 * XtX.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * torch.eye(3, dtype=X.dtype, device=X.device)
    At = torch.linalg.solve(XtX + ridge, Xc.transpose(1, 2) @ (w[..., None] * Uc))  # (B, 3, 2)
    f = intrinsics.fxy().to(X.dtype)
    m0 = At[..., 0] / f[:, 0:1]  # = R[0] / Z̄
    m1 = At[..., 1] / f[:, 1:2]  # = R[1] / Z̄
    s = 0.5 * (m0.norm(dim=-1) + m1.norm(dim=-1)).clamp_min(1e-12)  # 1 / Z̄
    r0, r1 = m0 / s[:, None], m1 / s[:, None]
    M = torch.stack([r0, r1, torch.cross(r0, r1, dim=-1)], 1)
    U, _, Vh = torch.linalg.svd(M)
    d = torch.det(U @ Vh)
    S = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ S @ Vh
    z = 1.0 / s
    c = intrinsics.principal.to(X.dtype)
    centre_cam = torch.cat([(ubar - c) / f * z[:, None], z[:, None]], -1)  # camera-frame centroid
    t = centre_cam - (R @ xbar[..., None]).squeeze(-1)
    return R, t
