"""Converter for the Surrey Face Model (SFM 3448, shape only; non-commercial licence) as
shipped in eos's ``share/`` folder.

eos stores models as cereal *portable binary* archives (little-endian, no names). This module
reads them without eos. The layout, from eos's ``MorphableModel.hpp`` / ``PcaModel.hpp`` /
``Blendshape.hpp`` and ``io/eigen_cerealisation.hpp``:

* ``MorphableModel`` starts with its cereal class version (uint32, 1..4), then
  ``shape_model``, ``color_model`` (both ``PcaModel``), ``expression_model`` (version ≥ 2:
  optional of variant<PcaModel, Blendshapes>), ``landmark_definitions`` (version ≥ 3: optional
  map string → int), ``texture_coordinates`` (vector of double[2]) and
  ``texture_triangle_indices`` (version 4: vector of int[3]).
* ``PcaModel``: ``mean`` (Eigen VectorXf), ``orthonormal_pca_basis`` (MatrixXf, one
  unit-norm eigenvector per column), ``eigenvalues`` (VectorXf, the PCA *variances*),
  ``triangle_list`` (vector of int[3]).
* Eigen matrices: int32 rows, int32 cols, then rows·cols float32 in column-major order.
  std::vector / std::string / maps: uint64 element count first. cereal's optional: a bool
  ``nullopt`` byte, then the value if it is false; its variant: an int32 alternative index.
* ``Blendshapes`` files: a vector of (string name, VectorXf deformation).

The SFM's frame already matches face3d's (x toward the viewer's right, y up, z toward the
viewer; the nose tip is the largest z) and its unit is mm. We keep eos's orthonormal basis and
set ``id_std = sqrt(eigenvalues)`` so the prior is ‖α/ξ‖²; the shape is then
``mean + Σ α_k · basis_k`` with α in mm, as eos's ``PcaModel::draw_sample`` does with
``α_k = ξ_k · coefficient_k``.

Reference: Huber et al., "A Multiresolution 3D Morphable Face Model and Fitting Framework",
VISAPP 2016.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from face3d.converters.common import (
    cylindrical_uvs, ensure_outward, jaw_contour_lines, require_file, sha256_file, skin_albedo,
    skin_mask_from_landmarks,
)
from face3d.morphable_model import ModelArrays


class _Reader:
    """Sequential little-endian reader over a bytes buffer with cereal's primitives."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.name}: truncated or not an eos cereal binary (wanted {n} bytes at {self.pos})")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self._take(size))

    def u32(self) -> int:
        return self.unpack("I")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def i32(self) -> int:
        return self.unpack("i")[0]

    def boolean(self) -> bool:
        return bool(self.unpack("B")[0])

    def string(self) -> str:
        n = self.u64()
        return bytes(self._take(n)).decode("utf-8")

    def matrix(self, dtype: str = "<f4") -> np.ndarray:
        rows, cols = self.unpack("ii")
        if rows < 0 or cols < 0:
            raise ValueError(f"{self.name}: negative matrix size {rows}x{cols}")
        n = rows * cols
        flat = np.frombuffer(self._take(n * np.dtype(dtype).itemsize), dtype=dtype)
        return flat.reshape(cols, rows).T.copy()  # Eigen's default storage is column-major

    def int_triples(self) -> np.ndarray:
        n = self.u64()
        return np.frombuffer(self._take(12 * n), dtype="<i4").reshape(n, 3).astype(np.int64)

    def double_pairs(self) -> np.ndarray:
        n = self.u64()
        return np.frombuffer(self._take(16 * n), dtype="<f8").reshape(n, 2).copy()

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclass
class EosPcaModel:
    """An eos ``PcaModel``: mean (D,), orthonormal basis (D, K), eigenvalues (K,) = variances,
    triangles (F, 3) 0-based."""

    mean: np.ndarray
    basis: np.ndarray
    eigenvalues: np.ndarray
    triangles: np.ndarray


@dataclass
class EosModel:
    """Content of an eos ``MorphableModel`` file."""

    version: int
    shape: EosPcaModel
    color: EosPcaModel
    expression: Optional[object] = None  # EosPcaModel or list of (name, deformation (D,))
    landmark_definitions: Optional[dict[str, int]] = None
    texture_coordinates: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    texture_triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))


def _pca(r: _Reader) -> EosPcaModel:
    mean = r.matrix().reshape(-1)
    basis = r.matrix()
    ev = r.matrix().reshape(-1)
    tri = r.int_triples()
    if basis.size and (basis.shape[0] != mean.shape[0] or basis.shape[1] != ev.shape[0]):
        raise ValueError(f"{r.name}: inconsistent PCA model sizes {mean.shape}, {basis.shape}, {ev.shape}")
    return EosPcaModel(mean, basis, ev, tri)


def _blendshapes(r: _Reader) -> list[tuple[str, np.ndarray]]:
    out = []
    for _ in range(r.u64()):
        name = r.string()
        out.append((name, r.matrix().reshape(-1)))
    return out


def read_eos_model(path: str | os.PathLike) -> EosModel:
    """Parse an eos ``MorphableModel`` cereal binary (class versions 1–4)."""
    p = require_file(path, "eos model file")
    r = _Reader(p.read_bytes(), str(p))
    version = r.u32()
    if version < 1 or version > 4:
        raise ValueError(f"{p}: unknown eos MorphableModel version {version} (expected 1..4)")
    shape = _pca(r)
    color = _pca(r)
    model = EosModel(version, shape, color)
    if version >= 2:
        if not r.boolean():  # "nullopt" is false: a model is there
            index = r.i32()
            if index == 0:
                model.expression = _pca(r)
            elif index == 1:
                model.expression = _blendshapes(r)
            else:
                raise ValueError(f"{p}: unknown expression model kind {index}")
    if version >= 3:
        if not r.boolean():
            defs = {}
            for _ in range(r.u64()):
                key = r.string()
                defs[key] = r.i32()
            model.landmark_definitions = defs
    model.texture_coordinates = r.double_pairs()
    if version >= 4:
        model.texture_triangles = r.int_triples()
    if not r.at_end():
        raise ValueError(f"{p}: {len(r.data) - r.pos} trailing bytes; not an eos model of version {version}")
    return model


def read_eos_blendshapes(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Parse an eos blendshapes file: list of ``(name, deformation (D,))``."""
    p = require_file(path, "eos blendshapes file")
    r = _Reader(p.read_bytes(), str(p))
    shapes = _blendshapes(r)
    if not r.at_end():
        raise ValueError(f"{p}: trailing bytes; not an eos blendshapes file")
    return shapes


def read_ibug_mapping(path: str | os.PathLike) -> tuple[dict[int, int], list[int], list[int]]:
    """Read eos's ``ibug_to_*.txt`` (TOML): ``({ibug 1-based: vertex}, right, left)`` where
    right / left are the 1-based iBUG ids of the contour landmarks."""
    text = require_file(path, "iBUG mapping file").read_text()
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    mapping: dict[int, int] = {}
    m = re.search(r"\[landmark_mappings\](.*?)(?:\n\[|\Z)", text, re.S)
    if not m:
        raise ValueError(f"{path}: no [landmark_mappings] table")
    for key, value in re.findall(r"^\s*\"?(\d+)\"?\s*=\s*(\d+)", m.group(1), re.M):
        mapping[int(key)] = int(value)

    def ids(name: str) -> list[int]:
        mm = re.search(rf"^\s*{name}\s*=\s*\[(.*?)\]", text, re.S | re.M)
        return [int(t) for t in re.findall(r"\d+", mm.group(1))] if mm else []

    return mapping, ids("right"), ids("left")


def read_model_contours(path: str | os.PathLike) -> tuple[list[int], list[int]]:
    """eos ``*_model_contours.json``: (right_contour, left_contour) vertex ids (subject's sides)."""
    d = json.loads(require_file(path, "model contour file").read_text())
    mc = d.get("model_contour", d)
    return list(mc["right_contour"]), list(mc["left_contour"])


def _jaw_from_contour(v: np.ndarray, contour: list[int], chin: int, top_y: float, n: int = 8) -> list[int]:
    """Pick ``n`` contour vertices that sit like iBUG jaw points on a frontal face: evenly spaced
    in arc length along the contour from height ``top_y`` down to (excluding) the chin point."""
    c = np.asarray(contour, np.int64)
    start = int(np.argmin(np.abs(v[c, 1] - top_y)))
    c = c[start:]
    c = c[v[c, 1] > v[chin, 1]]  # eos contours curl under the chin; iBUG jaw points stay above it
    poly = np.concatenate([v[c], v[chin][None]])
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, s[-1], n + 1)[:-1]  # n points, the (n+1)-th would be the chin
    picked: list[int] = []
    for t in targets:
        order = np.argsort(np.abs(s[:-1] - t))
        for k in order:  # nearest contour vertex not used yet, keeping the order along the jaw
            if int(c[k]) not in picked and (not picked or k > list(c).index(picked[-1])):
                picked.append(int(c[k]))
                break
    if len(picked) != n:
        raise ValueError("model contour too short to place the jaw landmarks")
    return picked


def sfm_landmarks(mean: np.ndarray, mapping: dict[int, int], right: list[int], left: list[int]) -> np.ndarray:
    """68 0-based vertex ids: the mapped iBUG points, the jaw (1–8, 10–17) from the contours,
    and the two inner mouth corners (61, 65, not mapped) at the vertex nearest a point slightly
    inside the outer corner."""
    v = mean
    lm = np.full(68, -1, np.int64)
    for k, vid in mapping.items():
        if 1 <= k <= 68:
            lm[k - 1] = vid
    chin = int(lm[8])
    if chin < 0:
        raise ValueError("the iBUG mapping lacks the chin (point 9)")
    # iBUG jaw points 1 and 17 sit at about the height of the outer eye corners (37, 46).
    eye_y = float(np.mean([v[lm[36], 1], v[lm[45], 1]])) if lm[36] >= 0 and lm[45] >= 0 else float(v[right[0], 1])
    lm[0:8] = _jaw_from_contour(v, right, chin, eye_y)
    lm[9:17] = _jaw_from_contour(v, left, chin, eye_y)[::-1]
    for inner, outer, a, b in ((60, 48, 61, 67), (64, 54, 63, 65)):
        if lm[inner] < 0:
            target = 0.8 * v[lm[outer]] + 0.2 * 0.5 * (v[lm[a]] + v[lm[b]])
            lm[inner] = int(np.argmin(np.linalg.norm(v - target, axis=1)))
    if (lm < 0).any():
        raise ValueError(f"iBUG landmarks without a vertex: {list(np.flatnonzero(lm < 0) + 1)} (1-based)")
    return lm


def convert_sfm(folder: str | os.PathLike, model_file: str = "sfm_shape_3448.bin",
                blendshapes_file: Optional[str] = "expression_blendshapes_3448.bin",
                mapping_file: str = "ibug_to_sfm.txt", contour_file: str = "sfm_model_contours.json") -> ModelArrays:
    """Convert the Surrey Face Model in eos's ``share/`` ``folder`` to face3d model arrays (mm).

    Identity: eos's orthonormal basis with ``id_std = sqrt(eigenvalues)``; expression: the 6
    eos blendshapes (anger, disgust, fear, happiness, sadness, surprise) with ``exp_std = 1``;
    albedo: none ships, so the constant skin tone of :func:`~face3d.converters.common.skin_albedo`.
    UVs: eos's per-vertex texture coordinates, whose v runs down (image rows); we flip to v up.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"eos share folder not found: {folder}")
    model_path = require_file(folder / model_file, "SFM model")
    eos = read_eos_model(model_path)
    n = eos.shape.mean.shape[0] // 3
    mean = eos.shape.mean.reshape(n, 3).astype(np.float64)
    k_id = eos.shape.basis.shape[1]
    id_basis = eos.shape.basis.T.reshape(k_id, n, 3)
    id_std = np.sqrt(np.maximum(eos.shape.eigenvalues, 0.0))

    exp_names: list[str] = []
    if blendshapes_file is not None:
        shapes = read_eos_blendshapes(require_file(folder / blendshapes_file, "SFM blendshapes"))
    elif isinstance(eos.expression, list):
        shapes = eos.expression
    else:
        shapes = []
    if shapes:
        exp_names = [s[0] for s in shapes]
        exp_basis = np.stack([s[1].reshape(n, 3) for s in shapes])
    else:
        exp_basis = np.zeros((0, n, 3))

    mapping, right_ids, left_ids = read_ibug_mapping(require_file(folder / mapping_file, "iBUG→SFM mapping"))
    right, left = read_model_contours(require_file(folder / contour_file, "SFM contour file"))
    landmarks = sfm_landmarks(mean, mapping, right, left)

    tri = eos.shape.triangles
    tc = eos.texture_coordinates
    if len(tc) == n:
        uvs = np.stack([tc[:, 0], 1.0 - tc[:, 1]], 1)
        uvt = tri.copy()
    elif len(tc) and len(eos.texture_triangles) == len(tri):
        uvs = np.stack([tc[:, 0], 1.0 - tc[:, 1]], 1)
        uvt = eos.texture_triangles
    else:
        uvs, uvt = cylindrical_uvs(mean, landmarks), tri.copy()
    tri, uvt, flipped = ensure_outward(mean, tri, uvt, probe=int(landmarks[30]))
    contour = jaw_contour_lines(mean, tri, landmarks)
    front = mean[:, 2] > mean[landmarks[[0, 16]], 2].mean()

    meta = {
        "name": "sfm",
        "licence": "Surrey Face Model licence (non-commercial); see eos share/LICENSE",
        "source": str(model_path),
        "source_sha256": sha256_file(model_path),
        "file_sha256": {f: sha256_file(folder / f) for f in (model_file, blendshapes_file, mapping_file, contour_file)
                        if f is not None and (folder / f).is_file()},
        "units": "mm",
        "eos_model_version": eos.version,
        "expression_kind": "blendshapes",
        "expression_names": exp_names,
        "identity_kind": "pca, orthonormal basis, id_std = sqrt(eos eigenvalues)",
        "albedo": "constant linear-RGB skin tone with redder lips (shape-only model)",
        "landmark_source": f"{mapping_file}; jaw points placed along {contour_file}",
        "triangles_flipped": bool(flipped),
        "citation": "Huber et al., A Multiresolution 3D Morphable Face Model and Fitting Framework, VISAPP 2016",
    }
    arrays = ModelArrays(
        mean_shape=mean.astype(np.float32), id_basis=id_basis.astype(np.float32), id_std=id_std.astype(np.float32),
        exp_basis=exp_basis.astype(np.float32), exp_std=np.ones(len(exp_basis), np.float32),
        mean_albedo=skin_albedo(mean, landmarks, front_only=front).astype(np.float32),
        albedo_basis=np.zeros((0, n, 3), np.float32), albedo_std=np.zeros((0,), np.float32),
        triangles=tri.astype(np.int64), uvs=uvs.astype(np.float32), uv_triangles=uvt.astype(np.int64),
        landmark_ids=landmarks, contour_lines=contour, meta=meta,
        skin_mask=skin_mask_from_landmarks(mean, tri, landmarks, front_only=front),
    )
    arrays.validate()
    return arrays
