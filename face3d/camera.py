"""Pose and projection.

Frames and conventions (used everywhere in face3d)
--------------------------------------------------
* **Model frame** (see :mod:`face3d.morphable_model`): mm, x viewer's right, y up,
  z toward the viewer.
* **Camera frame**: OpenCV convention, x right, y down, z forward (into the scene), mm.
  A face looking straight at the camera has rotation ``R = diag(1, -1, -1)``
  (:data:`FRONTAL` below) and ``t = (0, 0, d)`` with d > 0 its distance.
* **Image**: pixels, x right, y down, the centre of the top-left pixel at (0, 0), so
  an image of width W spans x ∈ [-0.5, W - 0.5].
* **Pose** ``X_cam = R · X_model + t``, with ``R = FRONTAL · R_y(yaw) · R_x(pitch) · R_z(roll)``
  where the elementary rotations act in the model frame (right-hand rule, degrees):

  - yaw > 0 turns the face toward the viewer's right (the subject's left; nose to +x),
  - pitch > 0 tilts the face down (nose toward −y, the chin to the chest),
  - roll > 0 rotates the face counter-clockwise as seen by the viewer.

Perspective projection: ``u = f_x · x / z + c_x``, ``v = f_y · y / z + c_y``.
Weak perspective: ``u = s · x + c_x + t_x``-style, implemented as orthographic projection of
the camera-frame points scaled by ``f / z̄``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

#: Rotation of a face looking straight into the camera (model y-up, z-toward-viewer →
#: camera y-down, z-forward).
FRONTAL = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def _rot_x(a: Tensor) -> Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], -1).view(*a.shape, 3, 3)


def _rot_y(a: Tensor) -> Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).view(*a.shape, 3, 3)


def _rot_z(a: Tensor) -> Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).view(*a.shape, 3, 3)


def euler_to_matrix(yaw: Tensor, pitch: Tensor, roll: Tensor, degrees: bool = True) -> Tensor:
    """Model→camera rotation (B, 3, 3) from yaw, pitch, roll (each (B,)); see module doc."""
    k = math.pi / 180.0 if degrees else 1.0
    yaw, pitch, roll = (torch.as_tensor(x) * k for x in (yaw, pitch, roll))
    frontal = FRONTAL.to(dtype=yaw.dtype, device=yaw.device)
    m = _rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll)
    # "@" broadcasts, keeping the batch shape of the angles
    return frontal @ m


def matrix_to_euler(R: Tensor, degrees: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`euler_to_matrix`: (yaw, pitch, roll), each (B,).

    Pitch is taken in [-90°, 90°]; at exactly ±90° pitch, yaw and roll are ambiguous
    and roll is set to 0.
    """
    m = FRONTAL.to(dtype=R.dtype, device=R.device) @ R  # FRONTAL is its own inverse
    # m = Ry(y) Rx(p) Rz(r): m[1,2] = -sin p; m[0,2] = sin y cos p; m[2,2] = cos y cos p;
    # m[1,0] = cos p sin r; m[1,1] = cos p cos r
    sp = (-m[..., 1, 2]).clamp(-1.0, 1.0)
    pitch = torch.asin(sp)
    yaw = torch.atan2(m[..., 0, 2], m[..., 2, 2])
    roll = torch.atan2(m[..., 1, 0], m[..., 1, 1])
    if degrees:
        k = 180.0 / math.pi
        return yaw * k, pitch * k, roll * k
    return yaw, pitch, roll


def axis_angle_to_matrix(v: Tensor) -> Tensor:
    """Rodrigues' formula: axis-angle (B, 3) in radians → rotation (B, 3, 3).

    Smooth at zero (uses the series expansion below 1e-4 rad), so it is safe inside
    optimisers and autograd.
    """
    theta2 = (v * v).sum(-1, keepdim=True)
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    # sin θ / θ and (1 - cos θ) / θ²; their Taylor series near 0 avoid 0/0
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta.clamp_min(1e-6) ** 2)
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*v.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation (B, 3, 3) → axis-angle (B, 3), angle in [0, π]."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    w = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = torch.sin(theta)
    out = w * (theta / (2.0 * sin.clamp_min(1e-8)))[..., None]
    small = theta < 1e-6
    out = torch.where(small[..., None], 0.5 * w, out)
    # near π the antisymmetric part vanishes: recover the axis from the symmetric part
    near_pi = theta > math.pi - 1e-3
    if bool(near_pi.any()):
        sym = (R + R.transpose(-1, -2)) / 2.0 - cos[..., None, None] * torch.eye(3, dtype=R.dtype, device=R.device)
        idx = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = torch.gather(sym, -1, idx[..., None, None].expand(*sym.shape[:-1], 1)).squeeze(-1)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sign = torch.where((axis * w).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        out = torch.where(near_pi[..., None], axis * sign * theta[..., None], out)
    return out


@dataclass
class Intrinsics:
    """Pinhole intrinsics in pixels (image convention in the module doc).

    ``focal`` (B,) or (B, 2) as (f_x, f_y); ``principal`` (B, 2) as (c_x, c_y).
    """

    focal: Tensor
    principal: Tensor

    @classmethod
    def default(cls, width: int, height: int, batch: int = 1, fov_deg: float = 12.0,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "Intrinsics":
        """A camera whose horizontal field of view is ``fov_deg``, centred on the image.

        12° (≈ a 200 mm lens on a full-frame camera for 224-px-wide crops) keeps
        perspective mild, like the f = 1015 px on 224² of Deng et al.
        """
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
        focal = torch.full((batch, 2), f, dtype=dtype, device=device)
        principal = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=dtype, device=device).expand(batch, 2)
        return cls(focal, principal.clone())

    def fxy(self) -> Tensor:
        f = self.focal
        return f[:, None].expand(-1, 2) if f.ndim == 1 else f

    def to(self, device: torch.device | str | None = None, dtype: Optional[torch.dtype] = None) -> "Intrinsics":
        return Intrinsics(self.focal.to(device=device, dtype=dtype), self.principal.to(device=device, dtype=dtype))


def transform(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Model → camera frame: ``R · X + t`` for points (B, N, 3), R (B, 3, 3), t (B, 3)."""
    return points @ R.transpose(-1, -2) + t[:, None, :]


def project(points_cam: Tensor, intrinsics: Intrinsics, eps: float = 1e-6) -> Tensor:
    """Perspective projection of camera-frame points (B, N, 3) → pixels (B, N, 2)."""
    z = points_cam[..., 2:3].clamp_min(eps)
    return points_cam[..., :2] / z * intrinsics.fxy()[:, None, :] + intrinsics.principal[:, None, :]


def project_weak(points_cam: Tensor, intrinsics: Intrinsics, depth: Optional[Tensor] = None) -> Tensor:
    """Weak-perspective (scaled orthographic) projection (B, N, 3) → (B, N, 2).

    Every point is divided by the same depth, ``depth`` (B,) or, by default, the mean z
    of the points; exact for a face far from the camera relative to its own depth.
    """
    z = points_cam[..., 2].mean(-1) if depth is None else depth
    scale = intrinsics.fxy() / z[:, None]
    return points_cam[..., :2] * scale[:, None, :] + intrinsics.principal[:, None, :]


def vertex_normals(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (B, N, 3) for vertices (B, N, 3), triangles (F, 3).

    Normals point out of counter-clockwise triangles; a vertex in no (non-degenerate)
    triangle gets 0. Differentiable.

    Computed coordinate-major — (3, B·N) tables, 1-D ``index_select`` / ``index_add`` and
    ``unbind`` instead of fancy indexing of (…, 3) rows and ``select`` views, each several
    times slower on CPU (forward and backward) for a 10k-vertex face. The result is a
    permuted view of a (3, B, N) tensor (``.permute(2, 0, 1)`` of it is contiguous).
    """
    b, n, _ = vertices.shape
    f = triangles.shape[0]
    coords = vertices.permute(2, 0, 1).reshape(3, b * n)  # (xyz, B·N)
    corner = triangles.to(device=vertices.device, dtype=torch.long).t()
    if b > 1:
        corner = corner[:, None, :] + (torch.arange(b, device=vertices.device) * n)[None, :, None]  # (3, B, F)
    corner = corner.reshape(-1)
    v0, v1, v2 = coords.index_select(1, corner).view(3, 3, b * f).unbind(1)  # (xyz, B·F) each
    (ax, ay, az), (bx, by, bz) = (v1 - v0).unbind(0), (v2 - v0).unbind(0)
    # cross product, length = 2 × area: area weighting for free
    fn = torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])
    acc = coords.new_zeros(3, b * n).index_add(1, corner, fn.repeat(1, 3))
    unit = acc * (acc * acc).sum(0).clamp_min(1e-24).rsqrt()  # = F.normalize(eps=1e-12), without its slow norm
    return unit.view(3, b, n).permute(1, 2, 0)


def crop_intrinsics(screen_xy: Tensor, intrinsics: Intrinsics, max_res: int, margin: float = 0.05
                 ) -> tuple[Intrinsics, int, int, Tensor, Tensor]:
    """A camera whose image is the face's bounding box (plus margin), at most ``max_res`` px.

    Returns (intrinsics, h, w, offset (B, 2), scale (B,)) with crop pixel p ↔ image pixel
    (p + 0.5) / scale − 0.5 + offset.
    """
    lo, hi = screen_xy.amin(1), screen_xy.amax(1)  # (B, 2)
    size = (hi - lo).amax(1) * (1.0 + 2.0 * margin)
    centre = (lo + hi) / 2.0
    scale = (max_res / size.clamp_min(1.0)).clamp(max=1.0)  # never upsample beyond the photo
    side = int(math.ceil(float((size * scale).max())))
    offset = centre - (side / scale[:, None]) / 2.0
    fxy = intrinsics.fxy() * scale[:, None]
    principal = (intrinsics.principal - offset + 0.5) * scale[:, None] - 0.5
    return Intrinsics(fxy, principal), side, side, offset, scale

def crop_image(image: Tensor, height: int, width: int, offset: Tensor, scale: Tensor,
               padding: str = "border") -> tuple[Tensor, Tensor]:
    """Resample ``image`` (B, C, H, W) into the crop of :func:`crop_intrinsics`.

    Returns the crop (B, C, height, width) (bilinear, sampled at the crop's pixel centres)
    and a (B, 1, height, width) float mask of crop pixels that fall inside the image.
    """
    b, _, h_img, w_img = image.shape
    dt, dev = image.dtype, image.device
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dt, device=dev), torch.arange(width, dtype=dt, device=dev),
                            indexing="ij")
    img_x = (xs[None] + 0.5) / scale[:, None, None].to(dt) - 0.5 + offset[:, 0, None, None].to(dt)
    img_y = (ys[None] + 0.5) / scale[:, None, None].to(dt) - 0.5 + offset[:, 1, None, None].to(dt)
    grid = torch.stack([(img_x + 0.5) / w_img * 2 - 1, (img_y + 0.5) / h_img * 2 - 1], -1)
    crop = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    inside = ((img_x >= -0.5) & (img_x <= w_img - 0.5) & (img_y >= -0.5) & (img_y <= h_img - 0.5))[:, None]
    return crop, inside.to(dt)
