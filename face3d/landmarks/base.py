"""The landmark-detector interface: an RGB image in, a list of faces out.

Conventions
-----------
* Coordinates are pixels of the image passed to :meth:`LandmarkDetector.detect`, x right,
  y down, the centre of the top-left pixel at (0, 0) (as in :mod:`face3d.camera`).
* ``DetectedFace.landmarks`` are the 68 iBUG / 300-W points in their usual order
  (0–16 jaw, 17–26 brows, 27–35 nose, 36–47 eyes, 48–67 mouth), ``(68, 2)`` float32.
* ``DetectedFace.bbox`` is ``[x0, y0, x1, y1]`` (float64) giving the box *edges*: a box
  covering pixel columns ``i..j`` has ``x0 = i - 0.5`` and ``x1 = j + 0.5``, so its width is
  the number of pixels it covers and the whole image is ``[-0.5, -0.5, W - 0.5, H - 0.5]``.
  Boxes may reach outside the image.

Large images
------------
:class:`TwoStageDetector` (the base of the dlib and FAN backends) finds faces on a copy
downscaled so that its longer side is at most ``max_detect_side`` (1024 by default), maps
the boxes back exactly (:func:`face3d.imageio.rescale_points`) and fits the landmarks on
the full-resolution image inside those boxes, so that landmark precision does not depend
on the downscaling.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from face3d.errors import NoFaceError, UsageError
from face3d.imageio import LoadedImage, rescale_points, resize_rgb

__all__ = [
    "N_LANDMARKS",
    "DetectedFace",
    "LandmarkDetector",
    "TwoStageDetector",
    "check_rgb",
    "select_faces",
    "box_from_landmarks",
]

PathLike = Union[str, os.PathLike]

#: Number of points of the iBUG 68-point scheme.
N_LANDMARKS = 68


@dataclass
class DetectedFace:
    """One face found in an image.

    Attributes:
        bbox: ``(4,)`` float64 ``[x0, y0, x1, y1]`` box edges in pixels (see module doc).
        score: detector confidence; its scale depends on the backend (dlib HOG: SVM margin,
            usually 0–3; dlib CNN and FAN/SFD: a confidence near 1; file: 1.0).
        landmarks: ``(68, 2)`` float32, pixels.
        depth: ``(68,)`` float32 relative depth (pixels, FAN 3D only), else None.
        detector: name of the backend that produced it.
    """

    bbox: np.ndarray
    score: float
    landmarks: np.ndarray
    depth: Optional[np.ndarray] = None
    detector: str = field(default="")

    def __post_init__(self) -> None:
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(4)
        self.score = float(self.score)
        lm = np.asarray(self.landmarks, dtype=np.float32)
        if lm.shape != (N_LANDMARKS, 2):
            raise ValueError(f"landmarks must have shape ({N_LANDMARKS}, 2), got {lm.shape}")
        self.landmarks = lm
        if self.depth is not None:
            self.depth = np.asarray(self.depth, dtype=np.float32).reshape(N_LANDMARKS)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> np.ndarray:
        """``(2,)`` box centre (x, y)."""
        return 0.5 * (self.bbox[:2] + self.bbox[2:])

    def rescaled(self, src_size: Sequence[int], dst_size: Sequence[int]) -> "DetectedFace":
        """The same face in the image resized from ``src_size`` to ``dst_size`` ((W, H) each)."""
        box = rescale_points(self.bbox.reshape(2, 2), src_size, dst_size).reshape(4)
        lm = rescale_points(self.landmarks, src_size, dst_size)
        depth = None
        if self.depth is not None:
            depth = self.depth * float(np.sqrt(dst_size[0] * dst_size[1] / (src_size[0] * src_size[1])))
        return DetectedFace(box, self.score, lm, depth, self.detector)


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """``(4,)`` box edges enclosing the pixels the points fall in: ``[min - 0.5, max + 0.5]``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.concatenate([lm.min(0) - 0.5, lm.max(0) + 0.5])


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an ``(H, W, 3)`` uint8 image; returns it C-contiguous."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise UsageError(f"expected an (H, W, 3) RGB image, got shape {a.shape} (use face3d.imageio.load_image)")
    if a.dtype != np.uint8:
        raise UsageError(f"expected a uint8 RGB image, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


class LandmarkDetector(ABC):
    """Finds faces and their 68 landmarks in an RGB image."""

    #: Backend name as used by :func:`face3d.landmarks.get_detector`.
    name: str = "base"

    @abstractmethod
    def detect(self, rgb: np.ndarray, *, image_path: Optional[PathLike] = None) -> list[DetectedFace]:
        """Faces in ``rgb`` (``(H, W, 3)`` uint8), in the backend's order.

        ``image_path`` is the file the pixels came from; only backends that read
        side files (the ``file`` backend) use it.
        """

    def detect_image(self, image: LoadedImage) -> list[DetectedFace]:
        """:meth:`detect` on a :class:`~face3d.imageio.LoadedImage` (passes its path along)."""
        return self.detect(image.rgb, image_path=image.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class TwoStageDetector(LandmarkDetector):
    """A detector that finds boxes, then fits landmarks in each box.

    Boxes are found on a copy downscaled to ``max_detect_side`` (None: never downscale);
    landmarks are fitted at full resolution. Subclasses implement :meth:`_find_faces` and
    :meth:`_fit_landmarks`.
    """

    def __init__(self, max_detect_side: Optional[int] = 1024) -> None:
        if max_detect_side is not None and max_detect_side < 64:
            raise UsageError(f"max_detect_side must be at least 64 pixels, got {max_detect_side}")
        self.max_detect_side = max_detect_side

    @abstractmethod
    def _find_faces(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(K, 4)`` (edges, pixels of ``rgb``) and scores ``(K,)``."""

    @abstractmethod
    def _fit_landmarks(
        self, rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray
    ) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
        """For each box (pixels of ``rgb``): ``(landmarks (68, 2), depth (68,) or None)``."""

    def detect(self, rgb: np.ndarray, *, image_path: Optional[PathLike] = None) -> list[DetectedFace]:
        rgb = check_rgb(rgb)
        full = (rgb.shape[1], rgb.shape[0])
        small, size = rgb, full
        if self.max_detect_side is not None and max(full) > self.max_detect_side:
            k = self.max_detect_side / max(full)
            size = (max(1, round(full[0] * k)), max(1, round(full[1] * k)))
            small = resize_rgb(rgb, size)
        boxes, scores = self._find_faces(small)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(boxes) == 0:
            return []
        if size != full:
            boxes = rescale_points(boxes.reshape(-1, 2), size, full).reshape(-1, 4)
        fitted = self._fit_landmarks(rgb, boxes, scores)
        return [
            DetectedFace(bbox=b, score=s, landmarks=lm, depth=d, detector=self.name)
            for b, s, (lm, d) in zip(boxes, scores, fitted)
        ]


def select_faces(
    faces: Sequence[DetectedFace],
    all_faces: bool = False,
    source: Optional[PathLike] = None,
) -> tuple[list[DetectedFace], Optional[str]]:
    """Choose the face(s) to reconstruct.

    Args:
        faces: detections of one image.
        all_faces: keep every face (largest first) instead of only the largest box.
        source: the image path, for the messages.

    Returns:
        ``(faces, message)``: the chosen faces, largest box first, and a one-line note for the
        user when the image held several faces (None otherwise).

    Raises:
        NoFaceError: ``faces`` is empty.
    """
    where = f"{source}: " if source is not None else ""
    if not faces:
        raise NoFaceError(f"{where}no face found")
    ordered = sorted(faces, key=lambda f: (-f.area, -f.score))
    if len(ordered) == 1:
        return ordered, None
    if all_faces:
        return ordered, f"{where}{len(ordered)} faces found; using all of them, largest first"
    b = ordered[0].bbox
    msg = (
        f"{where}{len(ordered)} faces found; using the largest "
        f"(box x {b[0]:.0f}..{b[2]:.0f}, y {b[1]:.0f}..{b[3]:.0f}); pass --all-faces to use every face"
    )
    return ordered[:1], msg
