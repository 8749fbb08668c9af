"""Unpaired face photos from a folder, as aligned 224² crops with landmarks and 3DMM fits.

:class:`PhotoFolderDataset` lists the images of a folder and, once (:meth:`prepare`, called
by the trainer or on first use), for each image:

1. detects faces and their 68 landmarks (:func:`face3d.landmarks.get_detector`), keeping the
   largest face (or all with ``all_faces``) whose box side is at least ``min_face_side``;
2. aligns each face by the five-point similarity of Deng et al. 2019 onto the template of
   :mod:`face3d.align` and resamples the aligned ``size``² crop;
3. fits the morphable model to the landmarks *in crop pixels* with the aligned camera
   (:func:`face3d.coefficients.aligned_camera`, LM fitting of paper 004 eq. 2), so the fit is
   a coefficient vector in the layout of :class:`face3d.coefficients.FaceParams` — the
   regressor's own output space (δ and the SH lighting γ are zero: landmarks do not
   determine them).

Results are cached in ``cache_dir`` as ``.npz`` files named by the sha256 of the image file's
bytes and a hash of every setting that affects them (two levels: ``detections/`` depends on
the detector only, ``faces/`` also on the alignment, the model and the fit settings), so a
second pass reads the cache and never decodes a photo; renaming or moving photos keeps
their cache entries. Images without a usable face are cached as such and skipped, with a
one-line note in the log (logger ``face3d.training``); unreadable files are skipped with a
note and not cached.

An item is a dict:

* ``image``: ``(3, S, S)`` float32 in [0, 1], the aligned crop (sRGB as in the photo);
* ``landmarks``: ``(68, 2)`` float32, the detected landmarks in crop pixels;
* ``params``: ``(P,)`` float32, ``FaceParams.join()`` of the fit (P = coefficient_count);
* ``transform``: ``(2, 3)`` float32, photo → crop similarity (see :mod:`face3d.align`);
* ``fit_error``: float32, mean landmark distance of the fit in crop pixels;
* ``index``: int, the item's position.

:attr:`PhotoFolderDataset.items` gives the source image path of each item.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from face3d.align import (five_point_template, five_points, similarity_to_template, template_from_model,
                          transform_points, warp_to_aligned)
from face3d.coefficients import ALIGNED_SIZE, FaceParams, aligned_camera, coefficient_count
from face3d.config import config_to_dict
from face3d.converters.common import sha256_file
from face3d.errors import ImageInputError, MissingInputError
from face3d.fitting import LandmarkFitter, LMFitConfig
from face3d.imageio import IMAGE_SUFFIXES, image_to_tensor, load_image
from face3d.io_utils import atomic_write

__all__ = ["PhotoDatasetConfig", "PhotoFolderDataset", "IMAGE_EXTENSIONS", "CACHE_VERSION"]

log = logging.getLogger("face3d.training")

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the folder listing of every command
#: Bump when the cached content or its meaning changes.
CACHE_VERSION = 1


@dataclass
class PhotoDatasetConfig:
    """Settings of :class:`PhotoFolderDataset`.

    * ``size``: side of the aligned crop (224 in Deng et al.).
    * ``landmarks``: detector backend (see :func:`face3d.landmarks.get_detector`).
    * ``model``: morphable model name or .npz path for the fits.
    * ``template``: ``default`` (:data:`face3d.align.DEFAULT_TEMPLATE`) or ``model`` (derived
      from the active model's mean face, :func:`face3d.align.template_from_model`).
    * ``all_faces``: one item per face instead of the largest face per image.
    * ``min_face_side``: faces whose box (width and height mean) is smaller, in photo pixels,
      are skipped.
    * ``max_detect_side``: faces are detected on a copy at most this large.
    * ``recursive``: also list images in sub-folders.
    * ``device``: torch device for detection networks and the fit.
    * ``fit``: landmark fitting settings.
    """

    size: int = ALIGNED_SIZE
    landmarks: str = "auto"
    model: str = "auto"
    template: str = "default"
    all_faces: bool = False
    min_face_side: float = 40.0
    max_detect_side: int = 1024
    recursive: bool = True
    device: str = "cpu"
    fit: LMFitConfig = field(default_factory=LMFitConfig)

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if self.template not in ("default", "model"):
            raise ValueError(f"template must be 'default' or 'model', got {self.template!r}")


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_fingerprint(model) -> str:
    h = hashlib.sha256(str(model.name).encode())
    for name in ("mean_shape", "id_basis", "exp_basis", "landmark_ids", "contour_lines"):
        t = getattr(model, name, None)
        if t is not None:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path, make_parents=True) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez_compressed(f, **arrays)


class PhotoFolderDataset(Dataset):
    """Aligned face crops, landmarks and landmark fits of the photos in ``folder``.

    Args:
        folder: a folder of photos (see :data:`IMAGE_EXTENSIONS`).
        cache_dir: where detections and fits are cached (created).
        config: :class:`PhotoDatasetConfig`.
        model: the morphable model to fit (default: ``load_model(config.model)``).
        detector: a landmark detector (default: ``get_detector(config.landmarks)``).
        progress: show a tqdm bar while preparing.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no image.
    """

    def __init__(self, folder: Union[str, Path], cache_dir: Union[str, Path],
                 config: Optional[PhotoDatasetConfig] = None, *, model=None, detector=None,
                 progress: bool = False) -> None:
        self.folder = Path(folder)
        self.cache_dir = Path(cache_dir)
        self.config = config or PhotoDatasetConfig()
        if not self.folder.is_dir():
            raise MissingInputError(f"{self.folder}: no such folder")
        pattern = "**/*" if self.config.recursive else "*"
        self.files = sorted(p for p in self.folder.glob(pattern)
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise MissingInputError(f"{self.folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        self._model = model
        self._detector = detector
        self.progress = progress
        #: (source image, cache file, face index within it) per item, after prepare()
        self.items: list[tuple[Path, Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        self._prepared = False

    # -- lazily built helpers (dropped after prepare so DataLoader workers stay light)
    @property
    def model(self):
        if self._model is None:
            from face3d.model_zoo import load_model

            self._model = load_model(self.config.model, device=self.config.device)
        return self._model

    @property
    def detector(self):
        if self._detector is None:
            from face3d.landmarks import get_detector

            self._detector = get_detector(self.config.landmarks, device=self.config.device,
                                          max_detect_side=self.config.max_detect_side)
        return self._detector

    def _detector_name(self) -> str:
        """The backend's name, without loading it when it is not built yet (a fully cached
        pass never loads the detector). ``auto`` resolves as :func:`get_detector` does."""
        if self._detector is not None:
            return self._detector.name
        name = self.config.landmarks.strip().lower()
        if name == "auto":
            from face3d.landmarks.fan_backend import fan_status

            name = "fan" if fan_status("2d") is None else "cascade"
        return name

    def _detector_key(self) -> str:
        return _digest({"v": CACHE_VERSION, "detector": self._detector_name(),
                        "max_detect_side": self.config.max_detect_side})

    def _template(self) -> torch.Tensor:
        if self.config.template == "model":
            return template_from_model(self.model, self.config.size)
        return five_point_template(self.config.size)

    def _faces_key(self, det_key: str) -> str:
        cfg = self.config
        return _digest({"v": CACHE_VERSION, "det": det_key, "size": cfg.size, "all_faces": cfg.all_faces,
                        "min_face_side": cfg.min_face_side, "template": self._template().tolist(),
                        "model": _model_fingerprint(self.model), "fit": config_to_dict(cfg.fit)})

    # -- preparation ------------------------------------------------------------------
    def prepare(self) -> "PhotoFolderDataset":
        """Detect, align and fit every image not yet in the cache; build the item list."""
        if self._prepared:
            return self
        keys: Optional[tuple[str, str]] = None
        items: list[tuple[Path, Path, int]] = []
        self.skipped = []
        files = self.files
        if self.progress:
            from tqdm.auto import tqdm

            files = tqdm(files, desc="faces", unit="img")
        for path in files:
            try:
                content = sha256_file(path)
            except OSError as e:
                self._skip(path, f"cannot read ({e.strerror or e})")
                continue
            if keys is None:
                det_key = self._detector_key()
                keys = (det_key, self._faces_key(det_key))
            faces_file = self.cache_dir / "faces" / f"{content[:32]}-{keys[1]}.npz"
            if not faces_file.is_file():
                try:
                    self._process(path, content, keys[0], faces_file)
                except (ImageInputError, MissingInputError) as e:
                    self._skip(path, str(e).split(": ", 1)[-1])
                    continue
            with np.load(faces_file, allow_pickle=False) as z:
                n = int(z["params"].shape[0])
                note = str(z["note"]) if "note" in z.files else ""
            if n == 0:
                self._skip(path, note or "no face found")
            items.extend((path, faces_file, j) for j in range(n))
        self.items = items
        self._prepared = True
        # the detector and model are only needed here; workers need not carry them
        self._detector = None
        self._model = None
        log.info("%s: %d face(s) from %d image(s), %d skipped", self.folder, len(items), len(self.files),
                 len(self.skipped))
        return self

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append((path, reason))
        log.warning("%s: %s; skipped", path, reason)

    def _detect(self, image, content: str, det_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        det_file = self.cache_dir / "detections" / f"{content[:32]}-{det_key}.npz"
        if det_file.is_file():
            with np.load(det_file, allow_pickle=False) as z:
                return z["boxes"], z["scores"], z["landmarks"]
        faces = self.detector.detect_image(image)
        boxes = np.array([f.bbox for f in faces], np.float64).reshape(-1, 4)
        scores = np.array([f.score for f in faces], np.float64).reshape(-1)
        lms = np.array([f.landmarks for f in faces], np.float32).reshape(-1, 68, 2)
        _save_npz(det_file, boxes=boxes, scores=scores, landmarks=lms)
        return boxes, scores, lms

    def _process(self, path: Path, content: str, det_key: str, faces_file: Path) -> None:
        cfg = self.config
        image = load_image(path)
        boxes, scores, lms = self._detect(image, content, det_key)
        side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
        order = [i for i in np.lexsort((-scores, -side)) if side[i] >= cfg.min_face_side]
        if not cfg.all_faces:
            order = order[:1]
        if not order:
            note = "no face found" if len(boxes) == 0 else \
                f"no face of at least {cfg.min_face_side:g} px (largest {side.max():.0f} px)"
            P = coefficient_count(self.model)
            _save_npz(faces_file, crops=np.zeros((0, cfg.size, cfg.size, 3), np.uint8),
                      landmarks=np.zeros((0, 68, 2), np.float32), params=np.zeros((0, P), np.float32),
                      transforms=np.zeros((0, 2, 3), np.float32), fit_error=np.zeros(0, np.float32),
                      bboxes=np.zeros((0, 4), np.float64), source_landmarks=np.zeros((0, 68, 2), np.float32),
                      note=np.array(note))
            return
        lm_img = torch.from_numpy(lms[order]).to(torch.float64)
        A = similarity_to_template(five_points(lm_img), self._template())
        photo = image_to_tensor(image.rgb)
        crops = warp_to_aligned(photo.expand(len(order), -1, -1, -1), A.to(torch.float32), cfg.size)
        crops_u8 = (crops.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        lm_crop = transform_points(A, lm_img)
        model = self.model
        fitter = LandmarkFitter(model, cfg.fit, device=model.device)
        K = aligned_camera(len(order), cfg.size, dtype=cfg.fit.dtype, device=model.device)
        fit = fitter.fit(lm_crop.to(device=model.device, dtype=cfg.fit.dtype), K)
        dt = fit.alpha.dtype
        params = FaceParams.from_pose(fit.alpha, fit.beta, fit.R, fit.t,
                                      delta=torch.zeros(len(order), model.n_albedo, dtype=dt, device=fit.alpha.device))
        _save_npz(faces_file, crops=crops_u8, landmarks=lm_crop.numpy().astype(np.float32),
                  params=params.join().detach().cpu().numpy().astype(np.float32),
                  transforms=A.numpy().astype(np.float32),
                  fit_error=fit.mean_error().detach().cpu().numpy().astype(np.float32),
                  bboxes=boxes[order], source_landmarks=lms[order], note=np.array(""))

    # -- Dataset ------------------------------------------------------------------------
    def __len__(self) -> int:
        self.prepare()
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.prepare()
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} faces")
        index = index % len(self.items)
        _, file, j = self.items[index]
        with np.load(file, allow_pickle=False) as z:
            crop = z["crops"][j]
            out = {
                "image": image_to_tensor(crop)[0],
                "landmarks": torch.from_numpy(z["landmarks"][j].copy()),
                "params": torch.from_numpy(z["params"][j].copy()),
                "transform": torch.from_numpy(z["transforms"][j].copy()),
                "fit_error": torch.tensor(float(z["fit_error"][j]), dtype=torch.float32),
                "index": index,
            }
        return out
