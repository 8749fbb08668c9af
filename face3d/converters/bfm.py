"""Converter for the Basel Face Model 2009 in the layout of Deng et al. 2019 (the model the
papers use; licensed, the user supplies it).

Two inputs give the same model:

1. ``BFM_model_front.mat`` (what Deng et al.'s ``transferBFM09`` writes): ``meanshape``
   (1, 3N), ``idBase`` (3N, 80), ``exBase`` (3N, 64), ``meantex`` (1, 3N) in 0..255,
   ``texBase`` (3N, 80), ``tri`` (F, 3) 1-based, ``keypoints`` (1, 68) 1-based, ``point_buf``.
   Rows of the 3N axis are x, y, z of vertex 0, then vertex 1, … (N = 35709 for the real
   model). Shapes are in decimetres (BFM's micrometres / 1e5).
2. The original ``01_MorphableModel.mat`` (``shapeMU`` (3M, 1) µm, ``shapePC`` (3M, 199),
   ``shapeEV`` (199, 1) = standard deviations, ``texMU``, ``texPC``, ``texEV``, ``tl``) plus
   ``Exp_Pca.bin`` (Guo et al.'s FaceWarehouse expression PCA on the 53215 BFM vertices that
   ``BFM_exp_idx.mat`` selects: int32 K, then K·3·M_exp float32 mean, then the K × 3·M_exp
   basis, row-major) and the helper files of ``deep3d_bfm_helpers/``:
   ``BFM_exp_idx.mat`` (``trimIndex`` (M_exp, 1) uint16, 1-based into the M = 53490 BFM
   vertices), ``BFM_front_idx.mat`` (``idx`` (N, 1), 1-based into the M_exp vertices),
   ``facemodel_info.mat`` (``tri``, ``keypoints``, ``point_buf``, ``skinmask`` … of the front
   model) and ``std_exp.txt`` (the K expression standard deviations). We apply the same
   transfer: bases scaled by their standard deviation, first 80 identity / 64 expression /
   80 texture modes, vertices cropped with the two index files (the expression mean of
   ``Exp_Pca.bin`` is not used, as in the original).

Units: both routes end in millimetres (decimetres × 100, micrometres / 1000), so a
coefficient of 1 is one standard deviation (``id_std = exp_std = albedo_std = 1``).
Colours: BFM's 0..255 vertex colours are divided by 255 and decoded with the sRGB curve to the
toolkit's linear RGB; the texture basis is carried through the curve to first order (scaled by
its slope at the mean colour). No UVs ship with BFM: a cylindrical unwrap is generated.

Reference: Deng et al., "Accurate 3D Face Reconstruction with Weakly-Supervised Learning",
CVPR-W 2019; Paysan et al., "A 3D Face Model for Pose and Illumination Invariant Face
Recognition", AVSS 2009.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from face3d.color import srgb_to_linear, srgb_to_linear_slope
from face3d.converters.common import (
    cylindrical_uvs, ensure_outward, jaw_contour_lines, require_file, sha256_file,
    skin_mask_from_landmarks,
)
from face3d.morphable_model import ModelArrays

DM_TO_MM = 100.0      # BFM_model_front.mat is in decimetres
UM_TO_MM = 1e-3       # 01_MorphableModel.mat is in micrometres
N_ID, N_EXP, N_TEX = 80, 64, 80


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises several types for bad files
        raise ValueError(f"cannot read MATLAB file {path}: {exc}") from None


def _key(d: dict, key: str, path: Path) -> np.ndarray:
    if key not in d:
        raise ValueError(f"{path} lacks '{key}' (keys: {', '.join(k for k in d if not k.startswith('__'))})")
    return np.asarray(d[key])


@dataclass
class DengFront:
    """The Deng et al. front model in its native layout and units (see module docstring)."""

    meanshape: np.ndarray   # (3N,) dm
    idBase: np.ndarray      # (3N, K_id) dm
    exBase: np.ndarray      # (3N, K_exp) dm
    meantex: np.ndarray     # (3N,) 0..255
    texBase: np.ndarray     # (3N, K_tex) 0..255
    tri: np.ndarray         # (F, 3) 1-based
    keypoints: np.ndarray   # (68,) 1-based


def read_deng_front(path: str | os.PathLike) -> DengFront:
    """Read ``BFM_model_front.mat``."""
    p = require_file(path, "BFM_model_front.mat")
    d = _loadmat(p)
    return DengFront(
        meanshape=_key(d, "meanshape", p).reshape(-1).astype(np.float64),
        idBase=_key(d, "idBase", p).astype(np.float64),
        exBase=_key(d, "exBase", p).astype(np.float64),
        meantex=_key(d, "meantex", p).reshape(-1).astype(np.float64),
        texBase=_key(d, "texBase", p).astype(np.float64),
        tri=_key(d, "tri", p).astype(np.int64),
        keypoints=_key(d, "keypoints", p).reshape(-1).astype(np.int64),
    )


def read_exp_pca(path: str | os.PathLike, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Read ``Exp_Pca.bin``: returns ``(mean (3·n,), basis (3·n, K))`` (BFM units, µm)."""
    p = require_file(path, "Exp_Pca.bin")
    raw = p.read_bytes()
    if len(raw) < 4:
        raise ValueError(f"{p} is too short to be Exp_Pca.bin")
    k = int(np.frombuffer(raw, "<i4", 1)[0])
    need = 4 + 4 * 3 * n_vertices * (1 + k)
    if k <= 0 or len(raw) < need:
        raise ValueError(f"{p}: {len(raw)} bytes but K={k} modes on {n_vertices} vertices need {need}")
    body = np.frombuffer(raw, "<f4", 3 * n_vertices * (1 + k), 4).astype(np.float64)
    mean = body[: 3 * n_vertices]
    basis = body[3 * n_vertices:].reshape(k, 3 * n_vertices).T
    return mean, basis


def transfer_bfm09(morphable_model: str | os.PathLike, exp_pca: str | os.PathLike,
                   helpers: str | os.PathLike) -> DengFront:
    """Build the Deng et al. front model from ``01_MorphableModel.mat`` + ``Exp_Pca.bin`` and
    the helper files in ``helpers`` (same arithmetic as their ``transferBFM09``)."""
    helpers = Path(helpers)
    mm_path = require_file(morphable_model, "01_MorphableModel.mat")
    bfm = _loadmat(mm_path)
    shape_mu = _key(bfm, "shapeMU", mm_path).reshape(-1).astype(np.float64)
    shape_pc = _key(bfm, "shapePC", mm_path).astype(np.float64)
    shape_ev = _key(bfm, "shapeEV", mm_path).reshape(-1).astype(np.float64)
    tex_mu = _key(bfm, "texMU", mm_path).reshape(-1).astype(np.float64)
    tex_pc = _key(bfm, "texPC", mm_path).astype(np.float64)
    tex_ev = _key(bfm, "texEV", mm_path).reshape(-1).astype(np.float64)

    exp_idx_path = require_file(helpers / "BFM_exp_idx.mat", "BFM_exp_idx.mat")
    front_idx_path = require_file(helpers / "BFM_front_idx.mat", "BFM_front_idx.mat")
    info_path = require_file(helpers / "facemodel_info.mat", "facemodel_info.mat")
    trim = _key(_loadmat(exp_idx_path), "trimIndex", exp_idx_path).reshape(-1).astype(np.int64) - 1
    front = _key(_loadmat(front_idx_path), "idx", front_idx_path).reshape(-1).astype(np.int64) - 1
    info = _loadmat(info_path)
    std_exp = np.loadtxt(require_file(helpers / "std_exp.txt", "std_exp.txt")).reshape(-1)

    n_full = shape_mu.size // 3
    if trim.max() >= n_full or front.max() >= trim.size:
        raise ValueError("helper index files do not match this 01_MorphableModel.mat (index out of range)")
    exp_mu, exp_pc = read_exp_pca(exp_pca, trim.size)
    if std_exp.size < exp_pc.shape[1]:
        raise ValueError(f"std_exp.txt has {std_exp.size} values for {exp_pc.shape[1]} expression modes")
    shape_rows = trim[front]  # front vertex -> BFM vertex

    def rows(vertex_ids: np.ndarray) -> np.ndarray:
        return (3 * vertex_ids[:, None] + np.arange(3)[None]).reshape(-1)

    r_shape, r_exp = rows(shape_rows), rows(front)
    k_id, k_exp, k_tex = min(N_ID, shape_pc.shape[1]), min(N_EXP, exp_pc.shape[1]), min(N_TEX, tex_pc.shape[1])
    return DengFront(
        meanshape=shape_mu[r_shape] / 1e5,
        idBase=(shape_pc[:, :k_id] * shape_ev[None, :k_id])[r_shape] / 1e5,
        exBase=(exp_pc[:, :k_exp] * std_exp[None, :k_exp])[r_exp] / 1e5,
        meantex=tex_mu[r_shape],
        texBase=(tex_pc[:, :k_tex] * tex_ev[None, :k_tex])[r_shape],
        tri=_key(info, "tri", info_path).astype(np.int64),
        keypoints=_key(info, "keypoints", info_path).reshape(-1).astype(np.int64),
    )


def front_to_arrays(front: DengFront, meta: dict) -> ModelArrays:
    """Convert a :class:`DengFront` (dm, 1-based) to face3d arrays (mm, 0-based, CCW, linear RGB)."""
    n = front.meanshape.size // 3
    for name, arr in (("idBase", front.idBase), ("exBase", front.exBase), ("texBase", front.texBase)):
        if arr.shape[0] != 3 * n:
            raise ValueError(f"{name} has {arr.shape[0]} rows, expected {3 * n}")
    if front.meantex.size != 3 * n:
        raise ValueError(f"meantex has {front.meantex.size} values, expected {3 * n}")
    if front.keypoints.size != 68:
        raise ValueError(f"keypoints must hold 68 ids, got {front.keypoints.size}")
    mean = front.meanshape.reshape(n, 3) * DM_TO_MM
    id_basis = front.idBase.T.reshape(-1, n, 3) * DM_TO_MM
    exp_basis = front.exBase.T.reshape(-1, n, 3) * DM_TO_MM
    tri = front.tri - 1
    lm = front.keypoints - 1
    if tri.min() < 0 or tri.max() >= n or lm.min() < 0 or lm.max() >= n:
        raise ValueError("tri / keypoints are not 1-based ids of this model's vertices")

    tex_srgb = front.meantex.reshape(n, 3) / 255.0
    mean_albedo = srgb_to_linear(tex_srgb)
    tex_basis = front.texBase.T.reshape(-1, n, 3) / 255.0 * srgb_to_linear_slope(tex_srgb)[None]

    mirrored = bool(mean[lm[36], 0] > mean[lm[45], 0])
    if mirrored:  # subject's right eye must be on the viewer's left (x < 0 side)
        mean[:, 0] *= -1
        id_basis[..., 0] *= -1
        exp_basis[..., 0] *= -1
        tri = tri[:, [0, 2, 1]]
    uvs = cylindrical_uvs(mean, lm)
    tri, uvt, flipped = ensure_outward(mean, tri, tri.copy(), probe=int(lm[30]))
    front_mask = mean[:, 2] > mean[lm[[0, 16]], 2].mean()
    meta = dict(meta)
    meta.update({
        "units": "mm",
        "unit_conversion": "Deng front model decimetres x 100 (= BFM micrometres / 1000)",
        "expression_kind": "pca",
        "identity_kind": "pca, modes pre-scaled by their std-dev (id_std = 1)",
        "albedo": "BFM vertex colours / 255 decoded from sRGB to linear; basis linearised at the mean",
        "uvs": "cylindrical unwrap (none ships with BFM)",
        "mirrored_x": mirrored,
        "triangles_flipped": bool(flipped),
    })
    arrays = ModelArrays(
        mean_shape=mean.astype(np.float32), id_basis=id_basis.astype(np.float32),
        id_std=np.ones(len(id_basis), np.float32), exp_basis=exp_basis.astype(np.float32),
        exp_std=np.ones(len(exp_basis), np.float32), mean_albedo=mean_albedo.astype(np.float32),
        albedo_basis=tex_basis.astype(np.float32), albedo_std=np.ones(len(tex_basis), np.float32),
        triangles=tri, uvs=uvs.astype(np.float32), uv_triangles=uvt, landmark_ids=lm,
        contour_lines=jaw_contour_lines(mean, tri, lm), meta=meta,
        skin_mask=skin_mask_from_landmarks(mean, tri, lm, front_only=front_mask),
    )
    arrays.validate()
    return arrays


_BASE_META = {
    "name": "bfm",
    "licence": "Basel Face Model 2009 licence (University of Basel; non-commercial, user-supplied)",
    "citation": "Paysan et al., AVSS 2009; layout of Deng et al., CVPR-W 2019",
}


def convert_bfm(source: str | os.PathLike, exp_pca: Optional[str | os.PathLike] = None,
                helpers: Optional[str | os.PathLike] = None) -> ModelArrays:
    """Convert BFM 2009 in the Deng et al. layout to face3d arrays.

    ``source``: ``BFM_model_front.mat``; or ``01_MorphableModel.mat`` (then ``exp_pca`` defaults to
    ``Exp_Pca.bin`` and ``helpers`` to the folder next to it); or a folder holding either.
    """
    src = Path(source)
    if src.is_dir():
        if (src / "BFM_model_front.mat").is_file():
            src = src / "BFM_model_front.mat"
        elif (src / "01_MorphableModel.mat").is_file():
            src = src / "01_MorphableModel.mat"
        else:
            raise FileNotFoundError(f"{src} holds neither BFM_model_front.mat nor 01_MorphableModel.mat")
    require_file(src, "BFM model file")
    meta = dict(_BASE_META, source=str(src), source_sha256=sha256_file(src))
    d = _loadmat(src)
    if "meanshape" in d:
        meta["route"] = "BFM_model_front.mat"
        return front_to_arrays(read_deng_front(src), meta)
    if "shapeMU" in d:
        del d
        exp = Path(exp_pca) if exp_pca is not None else src.parent / "Exp_Pca.bin"
        hdir = Path(helpers) if helpers is not None else src.parent
        meta["route"] = "01_MorphableModel.mat + Exp_Pca.bin"
        meta["exp_pca_sha256"] = sha256_file(require_file(exp, "Exp_Pca.bin"))
        return front_to_arrays(transfer_bfm09(src, exp, hdir), meta)
    raise ValueError(f"{src} is neither BFM_model_front.mat (meanshape, idBase, …) nor 01_MorphableModel.mat (shapeMU, …)")
