"""dlib backend: HOG (default) or CNN (MMOD) face detector + the 68-point shape predictor.

Runs offline on CPU. Needs the ``dlib`` module (the prebuilt wheel ``dlib-bin`` on PyPI)
and the model files of the ``face_recognition_models`` package
(``shape_predictor_68_face_landmarks.dat``, ``mmod_human_face_detector.dat``). The files
are located without importing that package (its ``__init__`` needs ``pkg_resources``,
which recent setuptools no longer ships); ``$FACE3D_DLIB_MODELS`` names another folder
holding them, and explicit paths can be passed.

Coordinate conventions (checked against dlib's own example data, see the tests)
-------------------------------------------------------------------------------
* A ``dlib.rectangle(left, top, right, bottom)`` is inclusive: it covers pixel columns
  ``left..right`` (``width() == right - left + 1``). In our box-edge convention that is
  ``[left - 0.5, top - 0.5, right + 0.5, bottom + 0.5]``; the reverse rounds.
* Shape-predictor parts are integer pixel indices (column, row) with the pixel centre at
  the integer, i.e. already our convention; the Python API rounds them to integers, so the
  landmarks carry a quantisation error of up to half a pixel (σ ≈ 0.29 px).
* Scores: HOG returns the SVM margin (``adjust_threshold`` = ``min_score``, default 0);
  CNN returns the MMOD confidence.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from face3d.errors import BackendUnavailableError, UsageError
from face3d.landmarks.base import N_LANDMARKS, TwoStageDetector, check_rgb

__all__ = ["DlibDetector", "dlib_model_dir", "dlib_model_paths", "dlib_status", "DLIB_INSTALL_HINT"]

PathLike = Union[str, os.PathLike]

DLIB_INSTALL_HINT = "pip install dlib-bin face_recognition_models"
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_FILE = "mmod_human_face_detector.dat"


def dlib_model_dir() -> Optional[Path]:
    """Folder holding dlib's model files: ``$FACE3D_DLIB_MODELS`` or the ``models`` folder
    of the installed ``face_recognition_models`` package (None when neither exists)."""
    env = os.environ.get("FACE3D_DLIB_MODELS")
    if env:
        return Path(env)
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def dlib_model_paths() -> dict[str, Optional[Path]]:
    """``{"predictor": ..., "cnn": ...}`` paths of the model files (None when not found)."""
    d = dlib_model_dir()
    out: dict[str, Optional[Path]] = {}
    for key, name in (("predictor", PREDICTOR_FILE), ("cnn", CNN_FILE)):
        p = d / name if d is not None else None
        out[key] = p if p is not None and p.is_file() else None
    return out


def dlib_status(detector: str = "hog") -> Optional[str]:
    """None when the dlib backend can run with this detector, else the reason it cannot."""
    if importlib.util.find_spec("dlib") is None:
        return f"the 'dlib' landmark backend needs the dlib module: {DLIB_INSTALL_HINT}"
    paths = dlib_model_paths()
    if paths["predictor"] is None:
        return (
            f"dlib's {PREDICTOR_FILE} not found (looked in {dlib_model_dir()}); "
            f"{DLIB_INSTALL_HINT}, or set FACE3D_DLIB_MODELS to the folder holding it"
        )
    if detector == "cnn" and paths["cnn"] is None:
        return f"dlib's {CNN_FILE} not found (looked in {dlib_model_dir()}); {DLIB_INSTALL_HINT}"
    return None


class DlibDetector(TwoStageDetector):
    """dlib face detector + 68-point shape predictor (Kazemi & Sullivan 2014, ERT).

    Args:
        detector: ``"hog"`` (HOG + linear SVM, fast, frontal-ish faces) or ``"cnn"``
            (MMOD CNN, finds more poses, about 10–30× slower on CPU).
        upsample: times the detection image is upsampled ×2 before detection (finds
            faces smaller than ≈ 80 px at the cost of ≈ 4× the time per step).
        min_score: detection threshold (HOG ``adjust_threshold``; CNN minimum confidence).
        predictor_path, cnn_model_path: explicit model files (default: see module doc).
        max_detect_side: longer side of the copy detection runs on (None: full size).
    """

    name = "dlib"

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 1,
        min_score: float = 0.0,
        predictor_path: Optional[PathLike] = None,
        cnn_model_path: Optional[PathLike] = None,
        max_detect_side: Optional[int] = 1024,
    ) -> None:
        super().__init__(max_detect_side)
        if detector not in ("hog", "cnn"):
            raise UsageError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        if upsample < 0:
            raise UsageError(f"upsample must be >= 0, got {upsample}")
        try:
            import dlib
        except ImportError as e:
            raise BackendUnavailableError(
                f"the 'dlib' landmark backend needs the dlib module ({e}): {DLIB_INSTALL_HINT}"
            ) from e
        self._dlib = dlib
        self.detector = detector
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        paths = dlib_model_paths()
        pred = Path(predictor_path) if predictor_path is not None else paths["predictor"]
        if pred is None or not pred.is_file():
            raise BackendUnavailableError(
                f"dlib's 68-point model {pred or PREDICTOR_FILE} not found; {DLIB_INSTALL_HINT}, "
                "or set FACE3D_DLIB_MODELS to the folder holding it"
            )
        self.predictor_path = pred
        self._predictor = dlib.shape_predictor(str(pred))
        if detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
            self._cnn = None
        else:
            cnn = Path(cnn_model_path) if cnn_model_path is not None else paths["cnn"]
            if cnn is None or not cnn.is_file():
                raise BackendUnavailableError(f"dlib's CNN face detector {cnn or CNN_FILE} not found; {DLIB_INSTALL_HINT}")
            self._hog = None
            self._cnn = dlib.cnn_face_detection_model_v1(str(cnn))

    def __repr__(self) -> str:
        return f"DlibDetector(detector={self.detector!r}, upsample={self.upsample}, max_detect_side={self.max_detect_side})"

    @staticmethod
    def _rect_to_box(r) -> list[float]:
        return [r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5]

    def _box_to_rect(self, box: np.ndarray):
        x0, y0, x1, y1 = (float(v) for v in box)
        return self._dlib.rectangle(
            int(round(x0 + 0.5)), int(round(y0 + 0.5)), int(round(x1 - 0.5)), int(round(y1 - 0.5))
        )

    def _find_faces(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._hog is not None:
            rects, scores, _ = self._hog.run(rgb, self.upsample, self.min_score)
            boxes = [self._rect_to_box(r) for r in rects]
            return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)
        dets = [d for d in self._cnn(rgb, self.upsample) if d.confidence >= self.min_score]
        boxes = [self._rect_to_box(d.rect) for d in dets]
        scores = [d.confidence for d in dets]
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)

    def landmarks_in_box(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Run only the shape predictor in a given box (edges, pixels): ``(68, 2)`` float32."""
        shape = self._predictor(check_rgb(rgb), self._box_to_rect(box))
        if shape.num_parts != N_LANDMARKS:
            raise BackendUnavailableError(
                f"{self.predictor_path} predicts {shape.num_parts} points, not {N_LANDMARKS}"
            )
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def _fit_landmarks(self, rgb, boxes, scores):
        return [(self.landmarks_in_box(rgb, b), None) for b in boxes]
