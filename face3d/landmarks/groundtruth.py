"""Ground-truth 68-point landmarks of evaluation sets: AFLW2000-3D and ``.pts`` / dlib XML folders.

:func:`load_landmark_set` reads a folder in any of the layouts below into one list of
:class:`LandmarkSample`:

* **AFLW2000-3D** (Zhu et al., CVPR 2016): ``imageNNNNN.jpg`` + ``imageNNNNN.mat`` with
  ``pt3d_68`` (3 × 68: x, y in pixels, z; the 68 iBUG points of the fitted 3DMM, the
  customary ground truth, the hidden jaw where it lies in 3-D) and ``Pose_Para`` (1 × 7:
  pitch, yaw, roll in radians, …). An optional ``labels.npz`` beside them (as in
  ``../shared/data/faces/aflw2000_dev``) adds MERL-RAV per-point visibility
  (``has_visibility``, ``externally_occluded``, ``self_occluded``, 68 booleans per image).
  AFLW's ``.mat`` coordinates are 1-based MATLAB pixels; they are used as written, as the
  published evaluations do (the half-pixel offset is 0.1 % NME on a 450-px crop).
* **``.pts`` files** next to images and **dlib imglab XML** datasets
  (:func:`face3d.landmarks.file_backend.annotated_faces`); these carry no pose, so
  :attr:`LandmarkSample.yaw_deg` is None and :func:`estimate_yaw` can fill it from an LM fit
  of the ground-truth points themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from face3d.errors import MissingInputError

__all__ = ["LandmarkSample", "read_aflw2000", "load_landmark_set", "estimate_yaw", "YAW_BINS"]

PathLike = Union[str, os.PathLike]

#: |yaw| bin edges of the AFLW2000-3D protocol, degrees: [0, 30), [30, 60), [60, 90]
YAW_BINS: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0)


@dataclass(frozen=True)
class LandmarkSample:
    """One face with ground truth.

    Attributes:
        image: the photo's path.
        landmarks: (68, 2) float64 ground-truth points, pixels (x right, y down).
        name: a unique name within the set (the image stem, ``#k`` for faces of one XML image).
        yaw_deg: the face's yaw in degrees (signed), or None when the set gives none.
        externally_occluded, self_occluded: (68,) bool visibility labels, or None.
    """

    image: Path
    landmarks: np.ndarray
    name: str
    yaw_deg: Optional[float] = None
    externally_occluded: Optional[np.ndarray] = None
    self_occluded: Optional[np.ndarray] = None

    @property
    def box(self) -> np.ndarray:
        """(4,) the ground-truth points' box ``[x0, y0, x1, y1]`` (the NME normaliser's box)."""
        return np.concatenate([self.landmarks.min(0), self.landmarks.max(0)])

    @property
    def yaw_bin(self) -> Optional[int]:
        """Index of :data:`YAW_BINS` |yaw| falls in (90° and beyond go to the last bin)."""
        if self.yaw_deg is None:
            return None
        return int(min(np.searchsorted(YAW_BINS, abs(self.yaw_deg), side="right") - 1, len(YAW_BINS) - 2))


def read_aflw2000(folder: PathLike, names: Optional[Sequence[str]] = None) -> list[LandmarkSample]:
    """The AFLW2000-3D layout of ``folder`` (module doc), sorted by name.

    ``names``: image stems to keep (default all). Raises MissingInputError for an empty folder.
    """
    import scipy.io

    root = Path(folder)
    mats = sorted(p for p in root.glob("*.mat") if p.with_suffix(".jpg").is_file())
    if names is not None:
        keep = set(names)
        mats = [p for p in mats if p.stem in keep]
    if not mats:
        raise MissingInputError(f"{root}: no AFLW2000-3D image with its .mat (imageNNNNN.jpg + .mat)")
    vis: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labels = root / "labels.npz"
    if labels.is_file():
        with np.load(labels, allow_pickle=False) as z:
            if {"names", "has_visibility", "externally_occluded", "self_occluded"} <= set(z.files):
                for k, n in enumerate(z["names"]):
                    if bool(z["has_visibility"][k]):
                        vis[str(n)] = (z["externally_occluded"][k].astype(bool), z["self_occluded"][k].astype(bool))
    out = []
    for p in mats:
        m = scipy.io.loadmat(p)
        pts = np.asarray(m["pt3d_68"], np.float64)[:2].T.copy()
        yaw = float(np.degrees(np.asarray(m["Pose_Para"], np.float64).reshape(-1)[1]))
        ext, self_occ = vis.get(p.stem, (None, None))
        out.append(LandmarkSample(p.with_suffix(".jpg"), pts, p.stem, yaw, ext, self_occ))
    return out


def load_landmark_set(folder: PathLike) -> list[LandmarkSample]:
    """Every face with 68-point ground truth under ``folder``: the AFLW2000-3D layout when
    the folder holds ``.mat`` files with ``pt3d_68``, else ``.pts`` / dlib XML files
    (recursive). Raises MissingInputError when there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingInputError(f"{root}: no such folder")
    if any(p.with_suffix(".jpg").is_file() for p in root.glob("*.mat")):
        return read_aflw2000(root)
    from face3d.landmarks.file_backend import annotated_faces

    faces = annotated_faces(root)
    if not faces:
        raise MissingInputError(f"{root}: no face with 68-point ground truth (AFLW2000-3D .mat, .pts or dlib XML)")
    return [LandmarkSample(f.image, np.asarray(f.landmarks, np.float64), f.name) for f in faces]


def estimate_yaw(samples: Sequence[LandmarkSample], model) -> list[LandmarkSample]:
    """Samples without a yaw get the yaw of an LM fit of ``model`` to their ground-truth points
    (in their own image's camera, 30° field of view as ``reconstruct`` assumes)."""
    import torch
    from PIL import Image

    from face3d.camera import Intrinsics
    from face3d.fitting import LandmarkFitter, LMFitConfig

    todo = [i for i, s in enumerate(samples) if s.yaw_deg is None]
    if not todo:
        return list(samples)
    fitter = LandmarkFitter(model, LMFitConfig(), device=model.device)
    out = list(samples)
    for i in todo:
        s = samples[i]
        with Image.open(s.image) as im:
            w, h = im.size
        K = Intrinsics.default(w, h, batch=1, dtype=model.dtype, device=model.device)
        fit = fitter.fit(torch.as_tensor(s.landmarks, dtype=model.dtype, device=model.device)[None], K)
        yaw = float(fit.yaw_pitch_roll()[0][0])
        out[i] = replace(s, yaw_deg=yaw)
    return out
