"""Second-order spherical-harmonics (SH) lighting of a Lambertian surface.

The irradiance at a point with unit normal n is approximated by 9 SH terms per colour
channel (Ramamoorthi & Hanrahan 2001; Basri & Jacobs 2003), with the basis and the
constants used by Deng et al. 2019 ("Accurate 3D Face Reconstruction with Weakly-Supervised
Learning", the R-Net whose lighting output γ the papers of this toolkit reuse)::

    a0 = π,           a1 = 2π/√3,        a2 = 2π/√8
    c0 = 1/√(4π),     c1 = √3/√(4π),     c2 = 3√5/√(12π)

    H(n) = [ a0·c0,
             -a1·c1·y,  a1·c1·z,  -a1·c1·x,
             a2·c2·x·y,  -a2·c2·y·z,  ½·a2·c2/√3·(3z² − 1),  -a2·c2·x·z,  ½·a2·c2·(x² − y²) ]

    E_c(n) = Σ_k H_k(n) · γ_{c,k},          colour = albedo ⊙ E(n)

Checked against the orthonormal real SH: c_l times each polynomial is exactly the
orthonormal Y_lm (e.g. c2 = √15/√(4π) = 1.0925, ½·c2/√3 = ½·√5/√(4π) = 0.3154), with the
Condon–Shortley sign on the odd-m terms, so ``H_k = ±a_l·Y_lm`` and the basis is orthogonal
over the sphere with ``∫ H_k² dω = a_l²`` (tested). The a_l are Deng et al.'s, not the
Lambertian-kernel factors π, 2π/3, π/4 of Ramamoorthi & Hanrahan; since γ is estimated,
never measured, this only fixes what one unit of γ means — keep Deng's so that γ from an
R-Net trained in their convention can be used as is.

Layout of the coefficients
--------------------------
``sh`` is (B, 27): the (B, 3, 9) array ``γ[b, channel, k]`` flattened **channel-major**
(R's 9 coefficients, then G's, then B's) — the ``reshape(B, 3, 9)`` of Deng et al.

Ambient term
------------
Deng et al. add 0.8 to γ_{c,0} of every channel before shading (their ``init_lit``), so
that γ = 0 means a uniform white light and a network can predict small values. Every
function here takes ``ambient`` (default 0: the coefficients are used as given);
pass :data:`DENG_AMBIENT` to get their convention. :class:`face3d.render.RenderSettings`
defaults to it.

Frame of the normals
--------------------
The basis is evaluated in the **view frame** of Deng et al.: x right, y up, z toward
the camera. The toolkit's camera frame is OpenCV (x right, y down, z forward), so a
camera-frame normal maps to the view frame as (x, −y, −z) (:func:`camera_to_view`);
every function takes ``frame="view"`` (default) or ``frame="camera"`` and converts. With
this, γ_{c,2} > 0 brightens surfaces facing the camera and γ_{c,1} < 0 brightens those
facing up in the image, exactly as in Deng et al.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "DENG_AMBIENT", "SH_CONSTANTS", "NUM_SH", "camera_to_view", "sh_basis", "irradiance", "shade",
    "estimate_sh",
]

#: Number of SH coefficients per colour channel (2nd order).
NUM_SH = 9
#: Deng et al.'s default ambient: added to coefficient 0 of each channel.
DENG_AMBIENT = 0.8

_A0, _A1, _A2 = math.pi, 2.0 * math.pi / math.sqrt(3.0), 2.0 * math.pi / math.sqrt(8.0)
_C0 = 1.0 / math.sqrt(4.0 * math.pi)
_C1 = math.sqrt(3.0) / math.sqrt(4.0 * math.pi)
_C2 = 3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi)
#: The constants (a0, a1, a2, c0, c1, c2) of Deng et al. 2019.
SH_CONSTANTS = (_A0, _A1, _A2, _C0, _C1, _C2)


def camera_to_view(normals: Tensor) -> Tensor:
    """OpenCV camera frame (x right, y down, z forward) → view frame (x right, y up,
    z toward the camera): (x, y, z) ↦ (x, −y, −z). Its own inverse. Shape (..., 3)."""
    return normals * normals.new_tensor([1.0, -1.0, -1.0])


def _to_view(normals: Tensor, frame: str) -> Tensor:
    if frame == "view":
        return normals
    if frame == "camera":
        return camera_to_view(normals)
    raise ValueError(f"frame must be 'view' or 'camera', got {frame!r}")


def sh_basis(normals: Tensor, frame: str = "view") -> Tensor:
    """The 9 basis functions H_k(n) (..., 9) of unit normals (..., 3); see module doc.

    Differentiable; the normals are used as given (normalise them first).
    """
    if normals.shape[-1] != 3:
        raise ValueError(f"normals must have a last dimension of 3, got shape {tuple(normals.shape)}")
    x, y, z = _to_view(normals, frame).unbind(-1)
    k1, k2 = _A1 * _C1, _A2 * _C2
    return torch.stack([
        torch.full_like(x, _A0 * _C0),
        -k1 * y, k1 * z, -k1 * x,
        k2 * x * y, -k2 * y * z, 0.5 * k2 / math.sqrt(3.0) * (3.0 * z * z - 1.0), -k2 * x * z,
        0.5 * k2 * (x * x - y * y),
    ], dim=-1)


def _coefficients(sh: Tensor, batch: int, ambient: float) -> Tensor:
    """(B, 27) → (B, 3, 9) with the ambient term added to coefficient 0."""
    if sh.ndim != 2 or sh.shape[1] != 3 * NUM_SH:
        raise ValueError(f"sh must be (B, 27) = (B, 3 channels × 9), got shape {tuple(sh.shape)}")
    if sh.shape[0] != batch:
        raise ValueError(f"sh has batch {sh.shape[0]} but the normals have batch {batch}")
    g = sh.view(batch, 3, NUM_SH)
    if ambient:
        g = g + g.new_tensor([ambient] + [0.0] * (NUM_SH - 1))
    return g


def irradiance(normals: Tensor, sh: Tensor, ambient: float = 0.0, frame: str = "view") -> Tensor:
    """Per-channel irradiance E(n) (B, ..., 3) for unit normals (B, ..., 3) and ``sh`` (B, 27).

    ``ambient`` is added to coefficient 0 of each channel (:data:`DENG_AMBIENT` for Deng
    et al.'s convention); ``frame`` says in which frame the normals are ("view" or
    "camera", module doc). Differentiable in both inputs.
    """
    batch = normals.shape[0]
    g = _coefficients(sh, batch, ambient)
    basis = sh_basis(normals, frame)
    flat = basis.reshape(batch, -1, NUM_SH)
    return (flat @ g.transpose(1, 2)).view(*normals.shape[:-1], 3)


def shade(albedo: Tensor, normals: Tensor, sh: Tensor, ambient: float = 0.0, frame: str = "view") -> Tensor:
    """Lambertian SH shading: ``albedo ⊙ E(n)``, all (B, ..., 3); see :func:`irradiance`."""
    if albedo.shape != normals.shape:
        raise ValueError(f"albedo {tuple(albedo.shape)} and normals {tuple(normals.shape)} must have the same shape")
    return albedo * irradiance(normals, sh, ambient, frame)


def estimate_sh(colours: Tensor, albedo: Tensor, normals: Tensor, weights: Optional[Tensor] = None,
                ambient: float = 0.0, frame: str = "view", ridge: float = 1e-6) -> Tensor:
    """Least-squares SH coefficients (B, 27) from observed colours.

    Solves, for each batch item and each channel c independently,
    ``min_γ Σ_i w_i (colour_ic − albedo_ic · H(n_i)·γ_c)² + ridge·‖γ_c‖²`` — linear in γ,
    so one 9×9 normal-equation solve per channel. ``colours``, ``albedo``, ``normals``:
    (B, M, 3) samples (pixels or vertices); ``weights`` (B, M) ≥ 0 (e.g. a visibility or
    skin mask; default all 1). The result is expressed for the same ``ambient`` and
    ``frame`` you will shade with, i.e. ``irradiance(n, γ, ambient)`` reproduces the fit.
    ``ridge`` (relative to the mean diagonal) keeps the solve regular when the normals
    cover a small part of the sphere. Differentiable.
    """
    if not (colours.shape == albedo.shape == normals.shape) or colours.ndim != 3 or colours.shape[-1] != 3:
        raise ValueError("colours, albedo and normals must all be (B, M, 3), got "
                         f"{tuple(colours.shape)}, {tuple(albedo.shape)}, {tuple(normals.shape)}")
    batch, m, _ = colours.shape
    w = colours.new_ones(batch, m) if weights is None else weights.to(colours)
    if w.shape != (batch, m):
        raise ValueError(f"weights must be (B, M) = ({batch}, {m}), got {tuple(w.shape)}")
    basis = sh_basis(normals, frame)  # (B, M, 9)
    # design matrix per channel: A_c = albedo_c · H  → (B, 3, M, 9)
    a = albedo.permute(0, 2, 1)[..., None] * basis[:, None]
    aw = a * w[:, None, :, None]
    ata = aw.transpose(-1, -2) @ a  # (B, 3, 9, 9)
    atb = (aw.transpose(-1, -2) @ colours.permute(0, 2, 1)[..., None]).squeeze(-1)  # (B, 3, 9)
    scale = ata.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(NUM_SH, dtype=colours.dtype, device=colours.device)
    gamma = torch.linalg.solve(ata + (ridge * scale)[..., None, None] * eye, atb[..., None]).squeeze(-1)
    if ambient:
        gamma = gamma - gamma.new_tensor([ambient] + [0.0] * (NUM_SH - 1))
    return gamma.reshape(batch, 3 * NUM_SH)
