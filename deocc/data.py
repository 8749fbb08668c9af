"""Synthetic-occlusion training and evaluation data for the image-only de-occlusion models.

The papers build their training sets the same way: a clean face, an occluder pasted on it, and
the exact binary mask of what was pasted —

* Blind face completion (seeds/c2f_blind_face_completion.txt §III-A, eq. 1):
  ``I = (1 − M_gt) ⊙ I_gt + M_gt ⊙ c`` with rectangles (area ratio 0.01–0.15, aspect 0.5–2) and
  text (height ratio 0.05–0.5) of free colour, positions analysed in four buckets
  (eyes, nose, mouth, outside);
* RLA (seeds/rla_lstm_autoencoders.txt §IV-A.1): nine object types — glasses, sunglasses, masks,
  hands, eye masks, scarves, phones, books, cups — those that need a correct location placed by
  facial landmarks, on near-frontal faces (−45°…+45°);
* FD-StackGAN (seeds/fd_stackgan.txt §4.4.1): occluders pasted on CelebA faces with their
  binary mask, 256² crops.

Faces come from a photo folder (:class:`face3d.training.data.PhotoFolderDataset`: aligned crops,
detected landmarks, a cached landmark fit) and/or synthetic 3DMM faces
(:class:`face3d.synth.SyntheticFaceDataset`, exact coefficients); occluders from
:mod:`face3d.synth.occluders`. Items are numbered photos first, then synthetic faces.

Compositing: with ``edges="hard"`` (default, C2F eq. 1) the mask is the occluder's coverage
≥ 0.5 and every masked pixel takes the occluder's own colour, so ``occluded == image`` exactly
where ``mask == 0`` and ``occluded`` is the occluder where ``mask == 1``. ``edges="soft"`` keeps
the anti-aliased blend and marks every touched pixel (coverage > 0) as occluded.

Determinism: item ``i`` depends only on ``(config.seed, i)`` — the occluder is drawn from a
numpy generator seeded by :func:`face3d.synth.faces.sample_seed` and the synthetic face from its
own per-index generator — so it is the same whatever the batch, order or worker.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from face3d.synth.faces import SyntheticFaceConfig, sample_seed
from face3d.synth.occluders import BUCKETS, OCCLUDER_KINDS, OccluderLibrary, OccluderSampler, position_bucket

__all__ = ["OcclusionDataConfig", "OccludedFaceDataset", "build_occlusion_dataset", "OCCLUDER_KINDS", "BUCKETS",
           "NO_OCCLUDER"]

#: ``kind`` of an item drawn without an occluder (``occlusion_prob`` < 1).
NO_OCCLUDER = -1

# Occluder streams are seeded apart from the synthetic faces' streams (which use ``seed``).
_OCCLUDER_STREAM = 0x0CC1


def _near_frontal() -> SyntheticFaceConfig:
    # RLA §IV-A.1 trains on near-frontal faces (−45°…+45°); pasted objects on profiles look wrong.
    return SyntheticFaceConfig(yaw_deg=(-45.0, 45.0))


@dataclass
class OcclusionDataConfig:
    """Settings of :class:`OccludedFaceDataset`.

    Attributes:
        image_size: crop side S (the toolkit's aligned 224² crop; each model sets its paper's size).
        kinds: occluder kinds to draw (subset of :data:`OCCLUDER_KINDS`).
        weights: relative probability of each of ``kinds`` (None: uniform, as RLA picks one of
            its nine types at random).
        seed: the dataset's seed; item i is a function of (seed, i). Use another seed for a
            held-out set.
        occlusion_prob: probability that an item is occluded (1: every item, as in the papers).
        edges: "hard" (binary mask, C2F eq. 1) or "soft" (anti-aliased; mask = any coverage).
        min_area: an occluder covering less than this fraction of the image is redrawn (up to
            ``max_tries`` times) — e.g. one placed mostly outside the crop.
        max_tries: draws per item before accepting a small occluder.
        occluders: folder of occluder images (None: ``$FACE3D_OCCLUDERS`` or ../shared/data/occluders
            if present; procedural shapes always work).
        model: morphable model name or .npz path for synthetic faces and the photo fits.
        cache_dir: cache of photo detections/fits (None: ``$FACE3D_HOME/cache/photos``).
        landmarks: landmark detector for photos (see :func:`face3d.landmarks.get_detector`).
        synth: synthetic-face settings (``image_size`` is taken from ``image_size``).
    """

    image_size: int = 224
    kinds: tuple[str, ...] = OCCLUDER_KINDS
    weights: Optional[tuple[float, ...]] = None
    seed: int = 0
    occlusion_prob: float = 1.0
    edges: str = "hard"
    min_area: float = 0.005
    max_tries: int = 10
    occluders: Optional[str] = None
    model: str = "auto"
    cache_dir: Optional[str] = None
    landmarks: str = "auto"
    synth: SyntheticFaceConfig = field(default_factory=_near_frontal)

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        if not self.kinds or any(k not in OCCLUDER_KINDS for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty subset of {', '.join(OCCLUDER_KINDS)}, got {self.kinds}")
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(self.kinds) or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError("weights must give one non-negative value per kind with a positive sum")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise ValueError(f"occlusion_prob must be within 0..1, got {self.occlusion_prob}")
        if self.edges not in ("hard", "soft"):
            raise ValueError(f"edges must be 'hard' or 'soft', got {self.edges!r}")
        if not 0.0 <= self.min_area < 1.0 or self.max_tries < 1:
            raise ValueError("min_area must be within [0, 1) and max_tries at least 1")


class OccludedFaceDataset(Dataset):
    """Faces with one synthetic occluder each and its exact mask (module doc).

    Args:
        folder: a folder of face photos, or None for synthetic faces only.
        config: :class:`OcclusionDataConfig`.
        synthetic: number of synthetic 3DMM faces appended after the photos.
        model: the morphable model (:class:`~face3d.morphable_model.MorphableModel` or
            ``ModelArrays``) for synthetic faces and photo fits (default ``load_model(config.model)``).
        detector: a landmark detector for the photos (default from ``config.landmarks``).

    Items (dicts, default-collatable):
        * ``image`` (3, S, S) float32 [0, 1], the clean face (ground truth);
        * ``occluded`` (3, S, S), the network input;
        * ``mask`` (1, S, S) float32 in {0, 1}, 1 = occluded;
        * ``landmarks`` (68, 2) float32, crop pixels;
        * ``kind`` int, index into :data:`OCCLUDER_KINDS` (:data:`NO_OCCLUDER` if none was drawn);
        * ``bucket`` int, index into :data:`BUCKETS` (0 eyes, 1 nose, 2 mouth, 3 outside);
        * ``params`` (K,) float32, ``FaceParams.join()`` in the aligned camera — the exact
          coefficients of a synthetic face, the cached landmark fit of a photo;
        * ``exact`` float32 scalar, 1 for synthetic faces (exact params), 0 for photos;
        * ``index`` int.

    Raises:
        ValueError: neither photos nor synthetic faces; FileNotFoundError: ``folder`` missing
        or without images.
    """

    def __init__(self, folder: Optional[Union[str, Path]], config: Optional[OcclusionDataConfig] = None,
                 synthetic: int = 0, *, model: Any = None, detector: Any = None) -> None:
        self.config = cfg = config or OcclusionDataConfig()
        if synthetic < 0:
            raise ValueError(f"synthetic must be >= 0, got {synthetic}")
        if folder is None and synthetic == 0:
            raise ValueError("no faces: give a folder of photos and/or a number of synthetic faces")
        if model is not None:
            from face3d.morphable_model import ModelArrays, MorphableModel

            if isinstance(model, ModelArrays):
                model = MorphableModel(model)
        self._model = model
        self.photos = None
        if folder is not None:
            from face3d.training.data import PhotoDatasetConfig, PhotoFolderDataset

            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{folder}: no such folder of photos")
            if cfg.cache_dir:
                cache = Path(cfg.cache_dir)
            else:
                from face3d.model_zoo import face3d_home

                cache = face3d_home() / "cache" / "photos"
            pcfg = PhotoDatasetConfig(size=cfg.image_size, model=cfg.model, landmarks=cfg.landmarks)
            self.photos = PhotoFolderDataset(folder, cache, pcfg, model=model, detector=detector)
        self.n_synthetic = int(synthetic)
        self._synthetic = None
        weights = cfg.weights if cfg.weights is not None else (1.0,) * len(cfg.kinds)
        self.sampler = OccluderSampler(dict(zip(cfg.kinds, weights)), library=OccluderLibrary(cfg.occluders))

    # -- sources ---------------------------------------------------------------------------
    @property
    def synthetic_faces(self):
        """The :class:`face3d.synth.SyntheticFaceDataset` of the synthetic part (built on first use)."""
        if self._synthetic is None and self.n_synthetic > 0:
            from face3d.synth.faces import SyntheticFaceDataset, SyntheticFaces

            if self._model is None:
                from face3d.model_zoo import load_model

                self._model = load_model(self.config.model)
            scfg = dataclasses.replace(self.config.synth, image_size=self.config.image_size)
            faces = SyntheticFaces(self._model, scfg, seed=self.config.seed)
            self._synthetic = SyntheticFaceDataset(faces, self.n_synthetic)
        return self._synthetic

    def prepare(self) -> "OccludedFaceDataset":
        """Detect, align and fit the photos not yet cached (done on first use otherwise)."""
        if self.photos is not None:
            self.photos.prepare()
        return self

    @property
    def n_photos(self) -> int:
        return 0 if self.photos is None else len(self.photos)

    def __len__(self) -> int:
        return self.n_photos + self.n_synthetic

    def _face(self, index: int) -> dict[str, Any]:
        n = self.n_photos
        if index < n:
            it = self.photos[index]
            return {"image": it["image"].float(), "landmarks": it["landmarks"].float(),
                    "params": it["params"].float(), "exact": torch.tensor(0.0)}
        it = self.synthetic_faces[index - n]
        return {"image": it["image"].float().clamp(0, 1), "landmarks": it["landmarks"].float(),
                "params": it["coefficients"].float(), "exact": torch.tensor(1.0)}

    # -- occlusion -------------------------------------------------------------------------
    def occlude(self, image: torch.Tensor, landmarks: torch.Tensor, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One occluder on ``image`` (3, S, S): (occluded (3, S, S), binary mask (1, S, S), kind
        index), following ``config.edges``, ``min_area`` and ``max_tries``."""
        cfg = self.config
        best = None
        for _ in range(cfg.max_tries):
            res = self.sampler(image, landmarks, rng=rng)
            hard = res.mask >= 0.5 if cfg.edges == "hard" else res.mask > 0
            area = float(hard.mean())
            if best is None or area > best[0]:
                best = (area, res, hard)
            if area >= cfg.min_area:
                break
        _, res, hard = best
        m = torch.from_numpy(hard)[None].to(image.dtype)
        if cfg.edges == "hard":
            # C2F eq. 1: the occluder's own (un-premultiplied) colour inside the binary mask
            a = np.maximum(res.mask, 1e-6)[..., None]
            colour = torch.from_numpy(np.clip(res.layer / a, 0.0, 1.0)).permute(2, 0, 1).to(image.dtype)
            occluded = torch.where(m > 0, colour, image)
        else:
            occluded = res.image.to(image.dtype)
        return occluded, m, OCCLUDER_KINDS.index(res.kind)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} faces")
        index = int(index) % n
        item = self._face(index)
        image, lm = item["image"], item["landmarks"]
        rng = np.random.default_rng(sample_seed(self.config.seed ^ _OCCLUDER_STREAM, index))
        if rng.random() < self.config.occlusion_prob:
            occluded, mask, kind = self.occlude(image, lm, rng)
            bucket = position_bucket(mask[0], lm)
        else:
            occluded, mask, kind = image.clone(), torch.zeros_like(image[:1]), NO_OCCLUDER
            bucket = BUCKETS.index("outside")
        item.update(occluded=occluded, mask=mask, kind=kind, bucket=bucket, index=index)
        return item


def build_occlusion_dataset(config: OcclusionDataConfig, image_size: int, data: Optional[str], synthetic: int,
                            model: Any = None) -> OccludedFaceDataset:
    """The synthetic-occlusion training set of :mod:`deocc.data` for a generator of ``image_size``
    (``config.image_size`` is replaced by it); ``model``: a MorphableModel to use instead of
    loading ``config.model``."""
    occ = dataclasses.replace(config, image_size=image_size)
    return OccludedFaceDataset(data, occ, synthetic=synthetic, model=model)
