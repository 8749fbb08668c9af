"""Jaw-contour correspondences that follow the silhouette ("landmark marching").

On a turned head, the jaw landmarks an annotator or detector places on the side turned
away from the camera lie on the *occluding contour* of the face, not on the anatomical
jaw vertices (Zhu et al., "High-fidelity pose and expression normalization", CVPR 2015).
A model carries, for each jaw landmark j, a line of candidate vertices ordered from the
front of the face to the back (``contour_lines[j]``); under a given pose the silhouette
point of that line is the candidate whose projection lies outermost, perpendicular to
the face's projected vertical axis. On the side facing the camera the anatomical jaw is
what is seen and marked, so the front candidate (the model's own landmark) is kept.

Two choices keep the correspondence a *continuous* function of pose and shape, which
Levenberg–Marquardt needs to settle (a hard vertex switch makes the cost jump and the
fit cycle between assignments):

* the outermost point is a soft arg-max over the candidates (temperature in pixels, a
  small fraction of the face size), so it slides between vertices instead of jumping;
* between frontal and ``full_deg`` of yaw the used point blends from the front vertex
  to the silhouette point (smoothstep in sin(yaw)), so there is no jump at yaw = 0 for
  models whose front vertex is not the frontal silhouette.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def jaw_sides(candidate_points: Tensor, midline_x: float) -> Tensor:
    """Side of each jaw line, (17,) in {-1, 0, +1}: sign of its front vertex's model x.

    ``candidate_points`` (17, L, 3) model-frame mean positions; ``midline_x`` the x of the
    face's plane of symmetry. The chin line (|x| within 2 % of the jaw width) gets 0:
    it has no side to march toward.
    """
    x = candidate_points[:, 0, 0] - midline_x
    width = (x.max() - x.min()).clamp_min(1e-9)
    side = torch.sign(x)
    side[x.abs() < 0.02 * width] = 0.0
    return side


def silhouette_weights(cand_uv: Tensor, candidate_valid: Tensor, side: Tensor, R: Tensor,
                       temperature: Tensor, full_deg: float = 15.0) -> Tensor:
    """Convex weights (B, 17, L) over each jaw line's candidates; row j sums to 1.

    Args:
        cand_uv: (B, 17, L, 2) projected candidate positions, pixels.
        candidate_valid: (17, L) bool, False on padding.
        side: (17,) from :func:`jaw_sides`.
        R: (B, 3, 3) model→camera rotation (camera frame of :mod:`face3d.camera`).
        temperature: (B,) soft-arg-max temperature, pixels.
        full_deg: yaw (toward the away side) from which the silhouette point is used
            alone; at 0° and on the side facing the camera the front vertex is used.
    """
    up = R[:, :2, 1]                                   # model y axis seen in the image
    out = torch.stack([-up[:, 1], up[:, 0]], -1)       # ⟂ to it; model +x side for side = +1
    out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    score = (cand_uv * out[:, None, None, :]).sum(-1) * side[None, :, None]
    score = score.masked_fill(~candidate_valid[None], float("-inf"))
    soft = torch.softmax(score / temperature[:, None, None], -1)            # (B, 17, L)
    # camera-z of the model x axis on each side: sin(yaw toward that side being away)
    away = side[None, :] * R[:, 2, 0][:, None]
    g = (away / math.sin(math.radians(full_deg))).clamp(0.0, 1.0)
    g = g * g * (3.0 - 2.0 * g)                                              # smoothstep
    front = torch.zeros_like(soft)
    front[..., 0] = 1.0
    return g[..., None] * soft + (1.0 - g[..., None]) * front
