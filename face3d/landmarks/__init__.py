"""68-point facial landmarks: one interface, several backends.

``get_detector(name)`` returns a :class:`LandmarkDetector` whose ``detect(rgb)`` gives a list
of :class:`DetectedFace` (bbox, score, 68 iBUG landmarks in pixels; conventions in
:mod:`face3d.landmarks.base`). Backends:

==========  =================================================================
``dlib``    dlib HOG detector + 68-point shape predictor (offline, CPU)
``dlib-cnn`` the same with dlib's MMOD CNN detector (more poses, much slower)
``fan``     face-alignment 2D-FAN (optional extra, needs its cached weights)
``fan3d``   face-alignment 3D-FAN (2D projection of 3D points, plus depth)
``cascade`` dlib HOG → OpenCV Haar (CNN-verified) → dlib CNN boxes, dlib's 68 points in
            the HOG framing (:mod:`face3d.landmarks.cascade`; finds profiles HOG misses)
``file``    landmarks from ``<image stem>.pts/.txt/.npy/.json`` or a given file
``auto``    ``fan`` when installed with weights present, else ``cascade``
==========  =================================================================

Typical use::

    from face3d.imageio import load_image
    from face3d.landmarks import get_detector, select_faces

    img = load_image("photo.jpg")
    det = get_detector("auto", device="cpu")
    faces, note = select_faces(det.detect_image(img), all_faces=False, source=img.path)
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from face3d.errors import BackendUnavailableError, UsageError
from face3d.landmarks.base import (
    N_LANDMARKS,
    DetectedFace,
    LandmarkDetector,
    TwoStageDetector,
    box_from_landmarks,
    check_rgb,
    select_faces,
)
from face3d.landmarks.cascade import CascadeDetector, CascadeSettings
from face3d.landmarks.dlib_backend import DlibDetector, dlib_status
from face3d.landmarks.fan_backend import FANDetector, fan_status
from face3d.landmarks.file_backend import FileLandmarks, find_landmark_file, read_landmarks, write_landmarks

__all__ = [
    "N_LANDMARKS",
    "DetectedFace",
    "LandmarkDetector",
    "TwoStageDetector",
    "DlibDetector",
    "CascadeDetector",
    "CascadeSettings",
    "FANDetector",
    "FileLandmarks",
    "BACKENDS",
    "available_backends",
    "get_detector",
    "select_faces",
    "box_from_landmarks",
    "check_rgb",
    "read_landmarks",
    "write_landmarks",
    "find_landmark_file",
]

#: Names accepted by :func:`get_detector`.
BACKENDS = ("auto", "cascade", "dlib", "dlib-cnn", "fan", "fan3d", "file")


def available_backends() -> dict[str, Optional[str]]:
    """``{name: None}`` for each backend that can run here, ``{name: reason}`` otherwise.

    Cheap: checks imports and model files, loads no model.
    """
    return {
        "cascade": dlib_status("cnn"),
        "dlib": dlib_status("hog"),
        "dlib-cnn": dlib_status("cnn"),
        "fan": fan_status("2d"),
        "fan3d": fan_status("3d"),
        "file": None,
    }


def get_detector(
    name: str = "auto",
    device: Union[str, torch.device] = "cpu",
    *,
    max_detect_side: Optional[int] = 1024,
    **kwargs,
) -> LandmarkDetector:
    """Build a landmark detector by name (see the module table).

    Args:
        name: one of :data:`BACKENDS`.
        device: torch device for network backends (FAN); dlib runs on CPU.
        max_detect_side: faces are detected on a copy whose longer side is at most this.
        **kwargs: passed to the backend's constructor (:class:`DlibDetector`,
            :class:`FANDetector`, :class:`FileLandmarks`); not accepted with ``auto``.

    Raises:
        UsageError: unknown name, or backend options given with ``auto``.
        BackendUnavailableError: the backend (for ``auto``: every candidate) cannot run;
            the message says how to install it or which alternative to use.
    """
    key = name.strip().lower()
    if key == "cascade":
        return CascadeDetector(max_detect_side=max_detect_side, **kwargs)
    if key == "dlib":
        return DlibDetector(max_detect_side=max_detect_side, **kwargs)
    if key == "dlib-cnn":
        return DlibDetector(detector="cnn", max_detect_side=max_detect_side, **kwargs)
    if key == "fan":
        return FANDetector(landmarks_type="2d", device=device, max_detect_side=max_detect_side, **kwargs)
    if key == "fan3d":
        return FANDetector(landmarks_type="3d", device=device, max_detect_side=max_detect_side, **kwargs)
    if key == "file":
        return FileLandmarks(**kwargs)
    if key != "auto":
        raise UsageError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if kwargs:
        raise UsageError(f"backend options {sorted(kwargs)} need an explicit backend name, not 'auto'")
    reasons = []
    fan_reason = fan_status("2d")
    if fan_reason is None:
        try:
            return FANDetector(landmarks_type="2d", device=device, max_detect_side=max_detect_side)
        except BackendUnavailableError as e:  # weights present but unusable: fall back
            fan_reason = str(e)
    reasons.append(f"fan: {fan_reason}")
    try:
        return CascadeDetector(max_detect_side=max_detect_side)
    except BackendUnavailableError as e:
        reasons.append(f"cascade: {e}")
    raise BackendUnavailableError("no landmark backend can run here — " + "; ".join(reasons))
