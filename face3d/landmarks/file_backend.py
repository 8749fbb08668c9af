"""File backend: landmarks given by the user instead of detected.

Formats (one file per image; found next to the image as ``<stem>.pts``, ``<stem>.txt``,
``<stem>.npy`` or ``<stem>.json``, in that order, or given explicitly):

* ``.pts`` — iBUG / 300-W format (``version: 1``, ``n_points: 68``, ``{``, one ``x y`` per
  line, ``}``). Its coordinates are **1-based** (the centre of the top-left pixel is (1, 1),
  the common reading of the 300-W annotations, also menpo's), so 1 is subtracted on reading
  and added on writing; pass ``pts_one_based=False`` for files written 0-based.
* ``.txt`` — 68 rows ``x y`` (whitespace or comma separated; a third column is ignored), or
  68·K rows for K faces. 0-based (our convention).
* ``.npy`` — array ``(68, 2)`` / ``(68, 3)`` or ``(K, 68, 2|3)``; 0-based.
* ``.json`` — ``{"landmarks": [[x, y], ...]}``, ``{"landmarks": [[[x, y], ...], ...]}`` for
  several faces, ``{"faces": [{"landmarks": ...}, ...]}``, or the bare list; 0-based.

All coordinates are pixels of the image as displayed (after EXIF orientation), x right,
y down. A file with another number of points, non-numeric or non-finite values raises
:class:`~face3d.errors.LandmarkFileError` (exit code 3) naming the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from face3d.errors import LandmarkFileError, UsageError
from face3d.imageio import atomic_write
from face3d.landmarks.base import N_LANDMARKS, DetectedFace, LandmarkDetector, box_from_landmarks, check_rgb

__all__ = ["FileLandmarks", "read_landmarks", "write_landmarks", "find_landmark_file", "LANDMARK_SUFFIXES",
           "AnnotatedFace", "read_imglab_xml", "annotated_faces"]

PathLike = Union[str, os.PathLike]

#: Side-file extensions looked for next to an image, in order of preference.
LANDMARK_SUFFIXES = (".pts", ".txt", ".npy", ".json")


def find_landmark_file(image_path: PathLike, suffixes: Sequence[str] = LANDMARK_SUFFIXES) -> Optional[Path]:
    """The first existing ``<stem><suffix>`` next to ``image_path`` (None if there is none)."""
    p = Path(image_path)
    for s in suffixes:
        c = p.with_suffix(s)
        if c != p and c.is_file():
            return c
    return None


def _shape_faces(a: np.ndarray, path: Path, n_points: int) -> np.ndarray:
    """Reshape parsed numbers to ``(K, n_points, 2)``, or raise a clear error."""
    if a.ndim == 2 and a.shape[1] in (2, 3):
        if a.shape[0] == 0 or a.shape[0] % n_points:
            raise LandmarkFileError(f"{path}: expected {n_points} landmarks (x, y), found {a.shape[0]}")
        a = a.reshape(-1, n_points, a.shape[1])
    elif a.ndim == 3 and a.shape[2] in (2, 3):
        if a.shape[1] != n_points:
            raise LandmarkFileError(f"{path}: expected {n_points} landmarks (x, y) per face, found {a.shape[1]}")
    else:
        raise LandmarkFileError(
            f"{path}: expected an array of {n_points} (x, y) points, got shape {tuple(a.shape)}"
        )
    a = a[..., :2].astype(np.float64)
    if not np.isfinite(a).all():
        raise LandmarkFileError(f"{path}: landmarks contain NaN or infinite values")
    return a


def _read_pts(path: Path) -> tuple[np.ndarray, Optional[int]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [ln.strip() for ln in text.splitlines()]
    declared = None
    for ln in lines:
        if ln.lower().startswith("n_points"):
            try:
                declared = int(ln.split(":", 1)[1])
            except (IndexError, ValueError):
                raise LandmarkFileError(f"{path}: bad n_points line {ln!r}") from None
    try:
        start = lines.index("{") + 1
        end = lines.index("}", start)
    except ValueError:
        raise LandmarkFileError(f"{path}: not an iBUG .pts file (no '{{' ... '}}' block)") from None
    rows = []
    for ln in lines[start:end]:
        if not ln:
            continue
        try:
            rows.append([float(v) for v in ln.split()[:2]])
        except ValueError:
            raise LandmarkFileError(f"{path}: cannot parse point {ln!r}") from None
        if len(rows[-1]) != 2:
            raise LandmarkFileError(f"{path}: cannot parse point {ln!r}")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2), declared


def _json_points(obj, path: Path) -> np.ndarray:
    if isinstance(obj, dict):
        if "faces" in obj and isinstance(obj["faces"], list):
            faces = []
            for f in obj["faces"]:
                lm = f.get("landmarks") if isinstance(f, dict) else f
                faces.append(np.asarray(lm, dtype=np.float64))
            if not faces:
                raise LandmarkFileError(f"{path}: 'faces' is empty")
            shapes = {f.shape for f in faces}
            if len(shapes) != 1:
                raise LandmarkFileError(f"{path}: faces have different numbers of points {sorted(shapes)}")
            return np.stack(faces)
        if "landmarks" not in obj:
            raise LandmarkFileError(f"{path}: JSON object has no 'landmarks' (or 'faces') key")
        obj = obj["landmarks"]
    return np.asarray(obj, dtype=np.float64)


def read_landmarks(path: PathLike, *, pts_one_based: bool = True, n_points: int = N_LANDMARKS) -> np.ndarray:
    """Read a landmark file (format by extension, see the module doc).

    Returns:
        ``(K, n_points, 2)`` float64 pixel coordinates (0-based), K ≥ 1 faces.

    Raises:
        LandmarkFileError: missing or unreadable file, wrong number of points, bad values.
    """
    p = Path(path)
    if not p.is_file():
        raise LandmarkFileError(f"{p}: no such landmark file" if not p.exists() else f"{p}: not a file")
    ext = p.suffix.lower()
    try:
        if ext == ".pts":
            a, declared = _read_pts(p)
            if declared is not None and declared != len(a):
                raise LandmarkFileError(f"{p}: header says n_points: {declared} but the file holds {len(a)} points")
            if pts_one_based:
                a = a - 1.0
        elif ext == ".txt":
            text = p.read_text(encoding="utf-8", errors="replace").replace(",", " ")
            rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            try:
                a = np.asarray([[float(v) for v in r] for r in rows], dtype=np.float64)
            except ValueError as e:
                raise LandmarkFileError(f"{p}: cannot parse numbers ({e})") from None
            if a.ndim != 2:
                raise LandmarkFileError(f"{p}: rows have different numbers of columns")
        elif ext == ".npy":
            try:
                a = np.load(p, allow_pickle=False)
            except (ValueError, EOFError) as e:
                raise LandmarkFileError(f"{p}: not a plain numeric .npy array ({e})") from None
            if not np.issubdtype(a.dtype, np.number):
                raise LandmarkFileError(f"{p}: expected numbers, got dtype {a.dtype}")
        elif ext == ".json":
            try:
                obj = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise LandmarkFileError(f"{p}: invalid JSON ({e})") from None
            try:
                a = _json_points(obj, p)
            except (TypeError, ValueError) as e:
                if isinstance(e, LandmarkFileError):
                    raise
                raise LandmarkFileError(f"{p}: 'landmarks' must be a list of [x, y] pairs ({e})") from None
        else:
            raise LandmarkFileError(f"{p}: unknown landmark format {p.suffix!r} (use .pts, .txt, .npy or .json)")
    except OSError as e:
        raise LandmarkFileError(f"{p}: cannot read ({e.strerror or e})") from e
    return _shape_faces(np.asarray(a), p, n_points)


def write_landmarks(path: PathLike, landmarks: np.ndarray, *, pts_one_based: bool = True) -> Path:
    """Write ``(68, 2)`` or ``(K, 68, 2)`` landmarks (0-based pixels) atomically.

    The format follows the extension (see the module doc); ``.pts`` holds one face only.
    """
    p = Path(path)
    a = np.asarray(landmarks, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[2] != 2:
        raise UsageError(f"landmarks must have shape (N, 2) or (K, N, 2), got {np.asarray(landmarks).shape}")
    ext = p.suffix.lower()
    if ext not in LANDMARK_SUFFIXES:
        raise UsageError(f"{p}: unknown landmark format {p.suffix!r} (use .pts, .txt, .npy or .json)")
    if ext == ".pts" and a.shape[0] != 1:
        raise UsageError(f"{p}: a .pts file holds one face, got {a.shape[0]}")
    with atomic_write(p) as tmp:
        if ext == ".pts":
            b = a[0] + (1.0 if pts_one_based else 0.0)
            body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in b)
            tmp.write_text(f"version: 1\nn_points: {len(b)}\n{{\n{body}\n}}\n", encoding="utf-8")
        elif ext == ".txt":
            tmp.write_text("\n".join(f"{x:.6f} {y:.6f}" for x, y in a.reshape(-1, 2)) + "\n", encoding="utf-8")
        elif ext == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, a[0] if a.shape[0] == 1 else a)
        else:
            lm = a[0].tolist() if a.shape[0] == 1 else a.tolist()
            tmp.write_text(json.dumps({"landmarks": lm}), encoding="utf-8")
    return p


@dataclass(frozen=True)
class AnnotatedFace:
    """One face with ground-truth landmarks: ``image`` path, ``landmarks`` (68, 2) pixels
    (0-based, x right, y down), ``name`` (the image name, ``#k`` for the k-th face of an
    image listed in an XML file)."""

    image: Path
    landmarks: np.ndarray
    name: str


def read_imglab_xml(path: PathLike, n_points: int = N_LANDMARKS) -> list[AnnotatedFace]:
    """The faces of a dlib imglab XML dataset (``<image file=…><box …><part name= x= y=/>``,
    as dlib's ``*_with_face_landmarks.xml``) that have ``n_points`` parts; images are
    resolved relative to the XML file. Coordinates are used as written (dlib's are 0-based)."""
    import xml.etree.ElementTree as ET

    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as e:
        raise LandmarkFileError(f"{p}: not a readable imglab XML file ({e})") from None
    out = []
    for im in root.iter("image"):
        for k, box in enumerate(im.iter("box")):
            parts = sorted(box.iter("part"), key=lambda e: int(e.get("name", "0")))
            if len(parts) != n_points:
                continue
            lm = np.array([[float(e.get("x")), float(e.get("y"))] for e in parts], dtype=np.float64)
            out.append(AnnotatedFace(p.parent / im.get("file", ""), lm, f"{im.get('file')}#{k}"))
    return out


def annotated_faces(folder: PathLike, n_points: int = N_LANDMARKS) -> list[AnnotatedFace]:
    """Every face with ``n_points`` ground-truth landmarks under ``folder`` (recursive): images
    with a ``.pts`` file next to them, and the faces of dlib imglab XML datasets
    (``*.xml`` with ``<part>`` elements). Files with another number of points are skipped."""
    from face3d.imageio import IMAGE_SUFFIXES

    root = Path(folder)
    out: list[AnnotatedFace] = []
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() == ".pts":
            image = next((q for q in sorted(f.parent.glob(f.stem + ".*")) if q.suffix.lower() in IMAGE_SUFFIXES), None)
            if image is None:
                continue
            try:
                out.append(AnnotatedFace(image, read_landmarks(f, n_points=n_points)[0], image.name))
            except LandmarkFileError:
                continue
        elif f.suffix.lower() == ".xml" and b"<part" in f.read_bytes()[:1 << 20]:
            out.extend(face for face in read_imglab_xml(f, n_points) if face.image.is_file())
    return out


class FileLandmarks(LandmarkDetector):
    """Landmarks read from a file instead of detected.

    Args:
        path: explicit landmark file; when None, :meth:`detect` looks next to the image.
        pts_one_based: ``.pts`` coordinates are 1-based (the iBUG convention; see module doc).
        suffixes: side-file extensions looked for, in order.
    """

    name = "file"

    def __init__(
        self,
        path: Optional[PathLike] = None,
        *,
        pts_one_based: bool = True,
        suffixes: Sequence[str] = LANDMARK_SUFFIXES,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.pts_one_based = pts_one_based
        self.suffixes = tuple(suffixes)

    def __repr__(self) -> str:
        return f"FileLandmarks(path={str(self.path) if self.path else None!r})"

    def landmark_file_for(self, image_path: Optional[PathLike]) -> Path:
        """The landmark file used for ``image_path`` (explicit path first)."""
        if self.path is not None:
            return self.path
        if image_path is None:
            raise UsageError("the 'file' landmark backend needs the image path or an explicit landmark file")
        found = find_landmark_file(image_path, self.suffixes)
        if found is None:
            stem = Path(image_path).with_suffix("")
            looked = ", ".join(f"{stem.name}{s}" for s in self.suffixes)
            raise LandmarkFileError(f"{image_path}: no landmark file next to it (looked for {looked})")
        return found

    def detect(self, rgb: np.ndarray, *, image_path: Optional[PathLike] = None) -> list[DetectedFace]:
        rgb = check_rgb(rgb)
        src = self.landmark_file_for(image_path)
        faces = read_landmarks(src, pts_one_based=self.pts_one_based)
        h, w = rgb.shape[:2]
        out = []
        for lm in faces:
            box = box_from_landmarks(lm)
            cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
            # A face centred outside the picture means the wrong file, or landmarks of a
            # resized / un-rotated copy of the image.
            if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5):
                raise LandmarkFileError(
                    f"{src}: landmarks centred at ({cx:.0f}, {cy:.0f}) lie outside the {w}x{h} image"
                    + (f" {image_path}" if image_path is not None else "")
                )
            out.append(DetectedFace(bbox=box, score=1.0, landmarks=lm, detector=self.name))
        return out
