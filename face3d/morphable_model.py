"""Batched linear 3D Morphable Model (3DMM).

Shape and albedo are linear in their coefficients (Blanz & Vetter 1999; the form used
by Deng et al. 2019 and by both CFR-GAN, eq. 1, and the 3DMM-conditioned GAN, §3.2)::

    S(α, β) = S̄ + B_id · α + B_exp · β          (B, N, 3), millimetres
    T(δ)    = T̄ + B_t  · δ                      (B, N, 3), linear RGB in [0, 1]

Conventions shared by the whole toolkit
---------------------------------------
* Model frame: right-handed, **millimetres**, x toward the viewer's right when the face
  looks at the camera (the subject's left), y up, z out of the face (toward the viewer).
  The origin is wherever the source model put it (roughly the centre of the head).
* Bases are stored so that a coefficient of 1 is one unit of that mode; ``id_std`` and
  ``exp_std`` (ξ) give the prior standard deviation of each coefficient, so the prior
  energy is ``‖α/ξ_id‖² + ‖β/ξ_exp‖²``. Models whose modes are already scaled by their
  std-dev (ICT-FaceKit) have ξ = 1.
* Triangles are counter-clockwise seen from outside (normals point out of the face).
* UVs are per corner: ``uv_triangles[f, k]`` indexes ``uvs`` for corner k of triangle f,
  u right, v **up** (OBJ convention), both in [0, 1].
* ``landmark_ids``: 68 vertex ids in iBUG / Multi-PIE order (0-based).
  ``contour_lines``: (17, L) vertex ids, -1 padded; row j holds the candidate vertices
  for jaw landmark j, ordered from the front of the face to the back, so the fitter can
  slide the landmark to the silhouette of a turned head.

On-disk format (``.npz``, written by :meth:`MorphableModel.save`): one array per field
below, plus ``meta``, a JSON string with at least ``name``, ``licence``, ``units``
(always ``"mm"``), ``source`` and ``source_sha256``, and ``format_version``.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from face3d.io_utils import write_bytes_atomic

FORMAT_VERSION = 1

#: Arrays that every model file holds (shape in the docstring of MorphableModel).
_REQUIRED = (
    "mean_shape", "id_basis", "id_std", "exp_basis", "exp_std",
    "mean_albedo", "albedo_basis", "albedo_std",
    "triangles", "uvs", "uv_triangles", "landmark_ids", "contour_lines",
)
_OPTIONAL = ("skin_mask",)


@dataclass
class ModelArrays:
    """Plain numpy content of a model, as converters produce it.

    Shapes: ``mean_shape`` (N, 3) mm; ``id_basis`` (K_id, N, 3); ``id_std`` (K_id,);
    ``exp_basis`` (K_exp, N, 3); ``exp_std`` (K_exp,); ``mean_albedo`` (N, 3) in [0, 1];
    ``albedo_basis`` (K_t, N, 3) (K_t may be 0); ``albedo_std`` (K_t,); ``triangles``
    (F, 3) int; ``uvs`` (T, 2); ``uv_triangles`` (F, 3) int; ``landmark_ids`` (68,) int;
    ``contour_lines`` (17, L) int, -1 padded; ``skin_mask`` (N,) float in [0, 1] or None.
    """

    mean_shape: np.ndarray
    id_basis: np.ndarray
    id_std: np.ndarray
    exp_basis: np.ndarray
    exp_std: np.ndarray
    mean_albedo: np.ndarray
    albedo_basis: np.ndarray
    albedo_std: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray
    uv_triangles: np.ndarray
    landmark_ids: np.ndarray
    contour_lines: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    skin_mask: Optional[np.ndarray] = None

    def validate(self) -> None:
        """Raise ``ValueError`` with one clear sentence on the first inconsistency."""
        n = self.mean_shape.shape[0]

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"invalid morphable model: {msg}")

        check(self.mean_shape.shape == (n, 3), f"mean_shape must be (N, 3), got {self.mean_shape.shape}")
        for name in ("id", "exp", "albedo"):
            basis, std = getattr(self, f"{name}_basis"), getattr(self, f"{name}_std")
            check(basis.ndim == 3 and basis.shape[1:] == (n, 3), f"{name}_basis must be (K, {n}, 3), got {basis.shape}")
            check(std.shape == (basis.shape[0],), f"{name}_std must be ({basis.shape[0]},), got {std.shape}")
            check(bool(np.all(std > 0)), f"{name}_std must be positive")
        check(self.mean_albedo.shape == (n, 3), f"mean_albedo must be ({n}, 3)")
        check(self.triangles.ndim == 2 and self.triangles.shape[1] == 3, "triangles must be (F, 3)")
        check(self.triangles.min() >= 0 and self.triangles.max() < n, "triangle index out of range")
        check(self.uv_triangles.shape == self.triangles.shape, "uv_triangles must match triangles")
        check(self.uvs.ndim == 2 and self.uvs.shape[1] == 2, "uvs must be (T, 2)")
        check(self.uv_triangles.min() >= 0 and self.uv_triangles.max() < len(self.uvs), "uv index out of range")
        check(self.landmark_ids.shape == (68,), f"landmark_ids must be (68,), got {self.landmark_ids.shape}")
        check(self.landmark_ids.min() >= 0 and self.landmark_ids.max() < n, "landmark id out of range")
        check(self.contour_lines.ndim == 2 and self.contour_lines.shape[0] == 17, "contour_lines must be (17, L)")
        check(self.contour_lines.max() < n and bool(np.all(self.contour_lines[:, 0] >= 0)),
              "contour_lines rows must start with a valid vertex id")
        if self.skin_mask is not None:
            check(self.skin_mask.shape == (n,), "skin_mask must be (N,)")
        for key in ("name", "licence", "source"):
            check(key in self.meta, f"meta lacks '{key}'")


def save_model_arrays(arrays: ModelArrays, path: str | os.PathLike) -> Path:
    """Validate and write ``arrays`` to ``path`` (.npz) atomically; returns the path."""
    arrays.validate()
    meta = dict(arrays.meta)
    meta.setdefault("units", "mm")
    meta["format_version"] = FORMAT_VERSION
    payload: dict[str, np.ndarray] = {}
    for key in _REQUIRED:
        value = np.asarray(getattr(arrays, key))
        if value.dtype.kind == "f":
            value = value.astype(np.float32)
        elif value.dtype.kind in "iu":
            value = value.astype(np.int64)
        payload[key] = value
    if arrays.skin_mask is not None:
        payload["skin_mask"] = np.asarray(arrays.skin_mask, np.float32)
    payload["meta"] = np.array(json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    return write_bytes_atomic(path, buf.getvalue())


def load_model_arrays(path: str | os.PathLike) -> ModelArrays:
    """Read a model file written by :func:`save_model_arrays` (no pickle involved)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"morphable model file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in (*_REQUIRED, "meta") if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not a face3d model file (missing {', '.join(missing)})")
        meta = json.loads(str(z["meta"]))
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} has model format {meta['format_version']}; this face3d reads up to {FORMAT_VERSION}")
        fields = {k: z[k] for k in _REQUIRED}
        skin = z["skin_mask"] if "skin_mask" in z.files else None
    arrays = ModelArrays(**fields, meta=meta, skin_mask=skin)
    arrays.validate()
    return arrays


class MorphableModel(nn.Module):
    """A linear 3DMM as a torch module; all tensors are buffers, so ``.to(device)`` works.

    Shapes: N vertices, F triangles, K_id / K_exp / K_t modes. Every method is batched
    over a leading B dimension and differentiable in its coefficients.
    """

    mean_shape: Tensor
    id_basis: Tensor
    id_std: Tensor
    exp_basis: Tensor
    exp_std: Tensor
    mean_albedo: Tensor
    albedo_basis: Tensor
    albedo_std: Tensor
    triangles: Tensor
    uvs: Tensor
    uv_triangles: Tensor
    landmark_ids: Tensor
    contour_lines: Tensor
    skin_mask: Tensor

    def __init__(self, arrays: ModelArrays, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        arrays.validate()
        self.meta = dict(arrays.meta)
        for key in _REQUIRED:
            value = torch.as_tensor(np.asarray(getattr(arrays, key)))
            value = value.to(dtype) if value.is_floating_point() else value.long()
            self.register_buffer(key, value.to(device), persistent=False)
        skin = arrays.skin_mask if arrays.skin_mask is not None else np.ones(arrays.mean_shape.shape[0])
        self.register_buffer("skin_mask", torch.as_tensor(skin, dtype=dtype, device=device), persistent=False)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> "MorphableModel":
        """Load a model file (see module docstring for the format)."""
        return cls(load_model_arrays(path), dtype=dtype, device=device)

    def to_arrays(self) -> ModelArrays:
        """The model's content as numpy arrays (float32 / int64)."""
        fields = {k: getattr(self, k).detach().cpu().numpy() for k in _REQUIRED}
        return ModelArrays(**fields, meta=dict(self.meta), skin_mask=self.skin_mask.detach().cpu().numpy())

    def save(self, path: str | os.PathLike) -> Path:
        return save_model_arrays(self.to_arrays(), path)

    # -- sizes ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", "unnamed"))

    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_id(self) -> int:
        return int(self.id_basis.shape[0])

    @property
    def n_exp(self) -> int:
        return int(self.exp_basis.shape[0])

    @property
    def n_albedo(self) -> int:
        return int(self.albedo_basis.shape[0])

    @property
    def device(self) -> torch.device:
        return self.mean_shape.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mean_shape.dtype

    # -- evaluation ----------------------------------------------------------------------
    @staticmethod
    def _combine(mean: Tensor, basis: Tensor, coeffs: Optional[Tensor], batch: int) -> Tensor:
        """mean (N,3) + Σ_k coeffs[:, k] basis[k]; ``coeffs`` may use only the first K' modes."""
        out = mean.unsqueeze(0).expand(batch, -1, -1)
        if coeffs is None or coeffs.shape[-1] == 0:
            return out
        k = coeffs.shape[-1]
        if k > basis.shape[0]:
            raise ValueError(f"got {k} coefficients for a basis of {basis.shape[0]} modes")
        flat = basis[:k].reshape(k, -1)
        return out + (coeffs.to(flat.dtype) @ flat).view(batch, *mean.shape)

    @staticmethod
    def _batch_of(*coeffs: Optional[Tensor]) -> int:
        sizes = {c.shape[0] for c in coeffs if c is not None}
        if len(sizes) > 1:
            raise ValueError(f"coefficient batch sizes differ: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def shape(self, alpha: Optional[Tensor] = None, beta: Optional[Tensor] = None) -> Tensor:
        """Vertices (B, N, 3) in mm for identity α (B, K≤K_id) and expression β (B, K≤K_exp).

        Either may be None (zero); fewer coefficients than modes use the leading modes.
        """
        b = self._batch_of(alpha, beta)
        s = self._combine(self.mean_shape, self.id_basis, alpha, b)
        if beta is not None and beta.shape[-1] > 0:
            k = beta.shape[-1]
            s = s + (beta.to(s.dtype) @ self.exp_basis[:k].reshape(k, -1)).view(b, -1, 3)
        return s

    def albedo(self, delta: Optional[Tensor] = None, batch: Optional[int] = None) -> Tensor:
        """Per-vertex linear RGB albedo (B, N, 3) in [0, 1] (clamped) for δ (B, K≤K_t)."""
        b = self._batch_of(delta) if delta is not None else (batch or 1)
        return self._combine(self.mean_albedo, self.albedo_basis, delta, b).clamp(0.0, 1.0)

    def landmarks(self, vertices: Tensor) -> Tensor:
        """The 68 landmark vertices (B, 68, 3) of ``vertices`` (B, N, 3)."""
        return vertices[:, self.landmark_ids]

    def prior_energy(self, alpha: Optional[Tensor] = None, beta: Optional[Tensor] = None) -> Tensor:
        """‖α/ξ_id‖² + ‖β/ξ_exp‖² per batch element, (B,)."""
        terms = []
        if alpha is not None:
            terms.append(((alpha / self.id_std[: alpha.shape[-1]]) ** 2).sum(-1))
        if beta is not None:
            terms.append(((beta / self.exp_std[: beta.shape[-1]]) ** 2).sum(-1))
        if not terms:
            raise ValueError("prior_energy needs alpha or beta")
        return torch.stack(terms).sum(0)

    def sample_coefficients(self, batch: int, scale: float = 1.0,
                            generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Random (α, β, δ) drawn from the prior, each (B, K), on the model's device.

        Expression models made of blendshapes (ICT, anny) are sampled with |β| so the
        weights stay in their meaningful non-negative range.
        """
        def draw(std: Tensor) -> Tensor:
            z = torch.randn(batch, std.shape[0], generator=generator, dtype=self.dtype)
            return (z.to(self.device) * std * scale)

        beta = draw(self.exp_std)
        if self.meta.get("expression_kind") == "blendshapes":
            beta = beta.abs()
        return draw(self.id_std), beta, draw(self.albedo_std)

    def __repr__(self) -> str:
        return (f"MorphableModel(name={self.name!r}, N={self.n_vertices}, F={self.triangles.shape[0]}, "
                f"K_id={self.n_id}, K_exp={self.n_exp}, K_albedo={self.n_albedo}, device={self.device})")
