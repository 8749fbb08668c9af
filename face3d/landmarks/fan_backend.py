"""FAN backend: the ``face-alignment`` package (Bulat & Tzimiropoulos, "How far are we from
solving the 2D & 3D face alignment problem?", ICCV 2017), 2D or 3D 68-point landmarks.

Optional: ``pip install 'face3d-toolkit[fan]'``. face-alignment downloads its weights
(the S3FD face detector and the FAN network) into torch.hub's cache,
``$TORCH_HOME/hub/checkpoints``, the first time it is used. This toolkit never downloads at
run time by default: :class:`FANDetector` checks for the files first and, when they are
absent, raises one :class:`~face3d.errors.BackendUnavailableError` naming the folder, the
files and the ``dlib`` alternative. With ``allow_download=True`` face-alignment is allowed
to fetch them, and a failed download becomes the same kind of one-line error.

Coordinates: FAN's landmarks are used as face-alignment returns them (pixel coordinates of
the input array, which its heat-map decoding places with pixel centres at integers). Boxes
come from its detector as ``[x0, y0, x1, y1]`` and are taken as box edges; the half-pixel
ambiguity is far below the detector's accuracy. The pixel convention of FAN's output was not
checked against ground truth here because no weights can be fetched offline.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch

from face3d.errors import BackendUnavailableError, UsageError
from face3d.landmarks.base import TwoStageDetector

__all__ = ["FANDetector", "fan_status", "fan_weight_files", "fan_cache_dir", "FAN_INSTALL_HINT"]

FAN_INSTALL_HINT = "pip install 'face3d-toolkit[fan]'"
_DLIB_ALTERNATIVE = "or use the 'dlib' backend (--detector dlib), which runs offline"
_TYPES = ("2d", "3d")


def _one_line(e: BaseException) -> str:
    return " ".join((str(e).strip() or type(e).__name__).split())


def _import_face_alignment():
    try:
        import face_alignment  # noqa: F401
    except Exception as e:  # ImportError, or a broken dependency (cv2, numba, …) failing at import
        raise BackendUnavailableError(
            f"the 'fan' landmark backend needs the face-alignment package ({_one_line(e)}); "
            f"install it with {FAN_INSTALL_HINT}, {_DLIB_ALTERNATIVE}"
        ) from e
    return face_alignment


def fan_cache_dir() -> Path:
    """Where face-alignment keeps its weights: torch.hub's ``checkpoints`` folder."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def fan_weight_files(landmarks_type: str = "2d") -> list[Path]:
    """Weight files face-alignment needs for ``landmarks_type`` with its default S3FD detector.

    The names are taken from the installed face-alignment's own URL tables.

    Raises:
        BackendUnavailableError: face-alignment is not installed.
    """
    if landmarks_type not in _TYPES:
        raise UsageError(f"FAN landmarks_type must be '2d' or '3d', got {landmarks_type!r}")
    _import_face_alignment()
    from face_alignment import api
    from face_alignment.detection.sfd import sfd_detector

    urls = [sfd_detector.models_urls["s3fd"]]
    if landmarks_type == "2d":
        urls.append(api.models_urls["2DFAN-4"])
    else:
        urls += [api.models_urls["3DFAN-4"], api.models_urls["depth"]]
    d = fan_cache_dir()
    return [d / os.path.basename(urlparse(u).path) for u in urls]


def fan_status(landmarks_type: str = "2d") -> Optional[str]:
    """None when FAN can run offline (installed, weights cached), else the reason it cannot."""
    try:
        files = fan_weight_files(landmarks_type)
    except BackendUnavailableError as e:
        return str(e)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        return (
            f"face-alignment weights not found in {fan_cache_dir()} (missing {', '.join(missing)}); "
            f"face3d does not download weights at run time: copy them there, {_DLIB_ALTERNATIVE}"
        )
    return None


class FANDetector(TwoStageDetector):
    """face-alignment's S3FD detector + FAN landmarks.

    Args:
        landmarks_type: ``"2d"`` (2D-FAN, visible contour) or ``"3d"`` (3D-FAN: the 2D
            projection of 3D points, so the jaw line follows the 3D face contour, plus
            :attr:`DetectedFace.depth`).
        device: torch device the networks run on.
        allow_download: let face-alignment download missing weights (off by default).
        flip_input: average with the prediction on the mirrored crop (face-alignment's
            test-time augmentation; twice the cost).
        min_score: minimum detector confidence (S3FD already drops boxes below 0.5).
        max_detect_side: longer side of the copy detection runs on (None: full size).

    Raises:
        BackendUnavailableError: face-alignment missing, weights missing (and downloads not
            allowed), or a download / model load failed; the message names the alternative.
    """

    name = "fan"

    def __init__(
        self,
        landmarks_type: str = "2d",
        device: Union[str, torch.device] = "cpu",
        allow_download: bool = False,
        flip_input: bool = True,
        min_score: float = 0.5,
        max_detect_side: Optional[int] = 1024,
    ) -> None:
        super().__init__(max_detect_side)
        fa = _import_face_alignment()
        files = fan_weight_files(landmarks_type)
        missing = [f for f in files if not f.is_file()]
        if missing and not allow_download:
            raise BackendUnavailableError(fan_status(landmarks_type) or "face-alignment weights missing")
        self.landmarks_type = landmarks_type
        self.device = torch.device(device)
        self.min_score = float(min_score)
        lt = fa.LandmarksType.TWO_D if landmarks_type == "2d" else fa.LandmarksType.THREE_D
        kwargs = dict(device=str(self.device), flip_input=flip_input, face_detector="sfd")
        # face-alignment ≥ 1.5 compiles the network by default (minutes on CPU, caches in ~):
        # switch that off where the argument exists.
        if "compile" in inspect.signature(fa.FaceAlignment.__init__).parameters:
            kwargs["compile"] = False
        try:
            self._fa = fa.FaceAlignment(lt, **kwargs)
        except Exception as e:
            if missing:
                raise BackendUnavailableError(
                    f"could not download the face-alignment weights ({_one_line(e)}); "
                    f"copy {', '.join(f.name for f in missing)} into {fan_cache_dir()}, {_DLIB_ALTERNATIVE}"
                ) from e
            raise BackendUnavailableError(
                f"face-alignment could not load its models from {fan_cache_dir()} ({_one_line(e)}); "
                f"{_DLIB_ALTERNATIVE}"
            ) from e

    def __repr__(self) -> str:
        return f"FANDetector(landmarks_type={self.landmarks_type!r}, device={str(self.device)!r})"

    def _find_faces(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # face-alignment passes its RGB input straight to the detector; do the same.
        dets = self._fa.face_detector.detect_from_image(rgb.copy())
        dets = [np.asarray(d, dtype=np.float64) for d in dets]
        dets = [d for d in dets if d.shape[0] >= 5 and d[4] >= self.min_score]
        if not dets:
            return np.zeros((0, 4)), np.zeros((0,))
        a = np.stack(dets)
        return a[:, :4], a[:, 4]

    def _fit_landmarks(self, rgb, boxes, scores):
        dets = [np.r_[b, s] for b, s in zip(boxes, scores)]
        preds = self._fa.get_landmarks_from_image(rgb, detected_faces=dets)
        out = []
        for p in preds or []:
            p = np.asarray(p, dtype=np.float32)
            out.append((p[:, :2], p[:, 2] if p.shape[1] > 2 else None))
        return out
