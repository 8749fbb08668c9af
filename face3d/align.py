"""Five-point similarity alignment of face photos to the aligned 224² crop (Deng et al. 2019).

Deng et al. crop every training and test face by the 2D similarity (rotation, uniform scale,
translation) that best maps five points of the face — the two eye centres, the nose tip and
the two mouth corners — onto a fixed template. The crop is then seen through one fixed
camera, :func:`face3d.coefficients.aligned_camera` (224², f = 1015 px, principal point at the
centre), so a regressor predicts a pose and a small translation offset only.

The five points, from the iBUG 68 landmarks, in this order (viewer's left to right for a
frontal face):

====  =============================================  ===========
row   point                                          68-ids
====  =============================================  ===========
0     centre of the eye on the viewer's left         mean of 36–41
1     centre of the eye on the viewer's right        mean of 42–47
2     nose tip                                       30
3     mouth corner on the viewer's left              48
4     mouth corner on the viewer's right             54
====  =============================================  ===========

**Template.** Deng et al.'s numbers belong to the BFM; ours are derived from the toolkit's own
aligned camera: the mean face of a morphable model, frontal (``R = FRONTAL``) at
``t = (0, 0, ALIGNED_DISTANCE_MM)``, projected by :func:`~face3d.coefficients.aligned_camera`,
and :func:`five_points` of its 68 projected landmarks (:func:`template_from_model`).
:data:`DEFAULT_TEMPLATE` holds those numbers for the offline default model ``anny-face``
(``python -m face3d.align`` recomputes and prints them; ``tests/test_align.py`` checks they
agree), so a crop always puts a face of average proportions where the aligned camera sees
the mean face, whichever model is active. In the 224² crop that mean face's 68 landmarks span
x ≈ 40…183, y ≈ 85…216 (chin included); ``template="model"`` in
:class:`face3d.training.data.PhotoDatasetConfig` uses the active model's own template.

**Transforms** are ``(B, 2, 3)`` matrices ``A`` acting on pixel coordinates of the convention
of :mod:`face3d.camera` (x right, y down, the centre of the top-left pixel at (0, 0)):
``p_crop = A[:, :, :2] @ p_image + A[:, :, 2]``.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.coefficients import ALIGNED_DISTANCE_MM, ALIGNED_SIZE, aligned_camera

__all__ = [
    "FIVE_POINT_NAMES",
    "DEFAULT_TEMPLATE",
    "five_points",
    "template_from_model",
    "five_point_template",
    "similarity_to_template",
    "invert_similarity",
    "transform_points",
    "similarity_scale",
    "warp_to_aligned",
]

FIVE_POINT_NAMES = ("eye_left", "eye_right", "nose_tip", "mouth_left", "mouth_right")

#: Five-point template in the 224² aligned crop (pixels): the anny-face mean face, frontal at
#: ALIGNED_DISTANCE_MM, projected by aligned_camera() (see the module doc). Recompute with
#: ``python -m face3d.align``.
DEFAULT_TEMPLATE = torch.tensor([
    [81.3861, 103.2881],
    [141.6013, 103.2886],
    [111.4970, 139.5961],
    [88.2441, 172.5829],
    [134.6879, 172.6068],
], dtype=torch.float64)

ArrayLike = Union[Tensor, np.ndarray]


def five_points(landmarks68: ArrayLike) -> ArrayLike:
    """The five alignment points ``(..., 5, 2)`` of iBUG-68 landmarks ``(..., 68, 2)``.

    Returns the same type (tensor or numpy array) as given; order in the module doc.
    """
    if landmarks68.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) landmarks, got shape {tuple(landmarks68.shape)}")
    lm = landmarks68
    if isinstance(lm, np.ndarray):
        return np.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :],
                         lm[..., 48, :], lm[..., 54, :]], axis=-2)
    return torch.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :],
                        lm[..., 48, :], lm[..., 54, :]], dim=-2)


def template_from_model(model, size: int = ALIGNED_SIZE) -> Tensor:
    """The five-point template ``(5, 2)`` (float64 pixels of a ``size``² crop) of ``model``:
    its mean face, frontal at ALIGNED_DISTANCE_MM, seen by ``aligned_camera(size=size)``."""
    from face3d.camera import FRONTAL, project, transform

    lm3 = model.landmarks(model.shape().to(torch.float64))  # (1, 68, 3) mean face
    R = FRONTAL.to(torch.float64)[None]
    t = torch.tensor([[0.0, 0.0, ALIGNED_DISTANCE_MM]], dtype=torch.float64)
    uv = project(transform(lm3, R, t.to(lm3.device)), aligned_camera(1, size, torch.float64, lm3.device))
    return five_points(uv[0]).cpu()


def five_point_template(size: int = ALIGNED_SIZE, template: Optional[Tensor] = None) -> Tensor:
    """``template`` (default :data:`DEFAULT_TEMPLATE`, given for a 224² crop) rescaled to a
    ``size``² crop, keeping pixel-centre conventions: ``x' = (x + 0.5)·size/224 − 0.5``."""
    t = (DEFAULT_TEMPLATE if template is None else torch.as_tensor(template, dtype=torch.float64))
    if t.shape != (5, 2):
        raise ValueError(f"a five-point template has shape (5, 2), got {tuple(t.shape)}")
    return (t + 0.5) * (size / ALIGNED_SIZE) - 0.5


def similarity_to_template(points: Tensor, template: Optional[Tensor] = None,
                           weights: Optional[Tensor] = None) -> Tensor:
    """Least-squares 2D similarity mapping ``points`` onto ``template``.

    Args:
        points: ``(B, K, 2)`` image points (usually :func:`five_points`), pixels.
        template: ``(K, 2)`` or ``(B, K, 2)`` target points; default the 224² template.
        weights: ``(B, K)`` or ``(K,)`` non-negative weights (default 1).

    Returns:
        ``(B, 2, 3)`` transform A (image → template pixels), same dtype as ``points``.
        Solved in closed form with complex numbers: for centred points p, q the best
        ``q ≈ a·p`` (a = s·e^{iθ}, no reflection) is ``a = Σ w·conj(p)·q / Σ w·|p|²``.
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"expected (B, K, 2) points, got shape {tuple(points.shape)}")
    B, K, _ = points.shape
    dt = points.dtype if points.dtype.is_floating_point else torch.float32
    p = points.to(torch.float64)
    q = (five_point_template() if template is None else torch.as_tensor(template)).to(p)
    if q.ndim == 2:
        q = q.expand(B, -1, -1)
    if q.shape != (B, K, 2):
        raise ValueError(f"template shape {tuple(q.shape)} does not match points {tuple(points.shape)}")
    w = torch.ones(B, K, dtype=p.dtype, device=p.device) if weights is None else \
        torch.as_tensor(weights).to(p).expand(B, K)
    wsum = w.sum(1, keepdim=True).clamp_min(1e-12)
    mp = (w[..., None] * p).sum(1) / wsum
    mq = (w[..., None] * q).sum(1) / wsum
    pc, qc = p - mp[:, None], q - mq[:, None]
    den = (w * (pc ** 2).sum(-1)).sum(1)
    if bool((den <= 1e-12).any()):
        raise ValueError("cannot align: the points of a face coincide")
    # conj(p)·q = (px·qx + py·qy) + i (px·qy − py·qx)
    re = (w * (pc[..., 0] * qc[..., 0] + pc[..., 1] * qc[..., 1])).sum(1) / den
    im = (w * (pc[..., 0] * qc[..., 1] - pc[..., 1] * qc[..., 0])).sum(1) / den
    M = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], -2)
    t = mq - (M @ mp[..., None])[..., 0]
    return torch.cat([M, t[..., None]], -1).to(dt)


def invert_similarity(transform: Tensor) -> Tensor:
    """Inverse ``(B, 2, 3)`` of an invertible 2D affine map ``(B, 2, 3)``."""
    M, t = transform[..., :2], transform[..., 2:]
    Mi = torch.linalg.inv(M)
    return torch.cat([Mi, -(Mi @ t)], -1)


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply ``(B, 2, 3)`` maps to ``(B, N, 2)`` points → ``(B, N, 2)``."""
    return points @ transform[..., :2].transpose(-1, -2) + transform[..., None, :, 2]


def similarity_scale(transform: Tensor) -> Tensor:
    """``(B,)`` scale factor (output pixels per input pixel) of similarity maps."""
    return transform[..., :2].det().abs().sqrt()


def warp_to_aligned(image: Tensor, transform: Tensor, size: int = ALIGNED_SIZE,
                    padding_mode: str = "zeros", antialias: bool = True) -> Tensor:
    """Resample ``image`` into the aligned crop.

    Args:
        image: ``(B, C, H, W)`` float image(s).
        transform: ``(B, 2, 3)`` image → crop map (e.g. from :func:`similarity_to_template`).
        size: side of the square crop, pixels.
        padding_mode: ``grid_sample`` padding outside the photo (``zeros``, ``border``,
            ``reflection``).
        antialias: when the map shrinks the photo more than 2×, average-pool it first by
            the integer factor k = ⌊1/scale⌋ (the pooled pixel j covers pixels jk … jk+k−1,
            so x_pooled = (x + 0.5)/k − 0.5), so bilinear sampling does not alias.

    Returns:
        ``(B, C, size, size)``; pixel (u, v) of the crop shows the photo at
        ``A⁻¹·(u, v)``, sampled bilinearly.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) image, got shape {tuple(image.shape)}")
    B = image.shape[0]
    if transform.shape != (B, 2, 3):
        raise ValueError(f"expected a ({B}, 2, 3) transform, got {tuple(transform.shape)}")
    A = transform.to(torch.float64)
    inv = invert_similarity(A)
    ks = [1] * B
    if antialias:
        scale = similarity_scale(A)
        ks = [max(1, int(math.floor(1.0 / float(s) + 1e-9))) if float(s) < 0.5 else 1 for s in scale]
    r = torch.arange(size, dtype=torch.float64, device=image.device)
    vv, uu = torch.meshgrid(r, r, indexing="ij")
    crop_px = torch.stack([uu, vv], -1).reshape(1, -1, 2)
    xy_all = transform_points(inv.to(image.device), crop_px.expand(B, -1, -1))  # photo pixels
    out = torch.empty(B, image.shape[1], size, size, dtype=image.dtype, device=image.device)
    for k in sorted(set(ks)):  # one batched grid_sample per pooling factor
        idx = [b for b in range(B) if ks[b] == k]
        img, xy = image[idx], xy_all[idx]
        if k > 1 and min(img.shape[-2:]) >= k:
            img = F.avg_pool2d(img, k, stride=k)
            xy = (xy + 0.5) / k - 0.5
        h, w = img.shape[-2:]
        # align_corners=False: pixel-centre coordinate x ↦ (2x + 1)/W − 1
        g = torch.stack([(2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1], -1)
        g = g.reshape(len(idx), size, size, 2).to(img.dtype)
        out[idx] = F.grid_sample(img, g, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out


def _main() -> None:  # pragma: no cover - prints the template for DEFAULT_TEMPLATE
    from face3d.model_zoo import load_model

    model = load_model("anny")
    t = template_from_model(model)
    print(f"template of {model.name} (224² crop, pixels):")
    for row in t.tolist():
        print(f"    [{row[0]:.4f}, {row[1]:.4f}],")


if __name__ == "__main__":  # pragma: no cover
    _main()
