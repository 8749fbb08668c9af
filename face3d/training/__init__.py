"""The training foundation shared by every learned part of the toolkit.

* :mod:`~face3d.training.config` — :class:`TrainerConfig` (dataclass, YAML / ``--set``).
* :mod:`~face3d.training.task` — :class:`TrainingTask`, the protocol a model implements
  (named optimisers = phases; see its module doc for the GAN / regressor design).
* :mod:`~face3d.training.trainer` — :class:`Trainer`: AMP, DDP via ``torchrun``, gradient
  accumulation, exact resumption, CSV / TensorBoard logs, tqdm, sample sheets.
* :mod:`~face3d.training.checkpoint` — atomic checkpoints loaded with ``weights_only=True``.
* :mod:`~face3d.training.sampler` — the resumable distributed data order.
* :mod:`~face3d.training.data` — :class:`PhotoFolderDataset`: aligned 224² crops of the
  faces in a folder of photos, with cached detections, alignments and landmark fits.
* :mod:`~face3d.training.grid`, :mod:`~face3d.training.logs` — sample sheets, logs.

``face3d.training.data`` is not imported here (it pulls in the detectors and the fitter).
"""
from face3d.training.checkpoint import (CheckpointManager, capture_rng_state, load_checkpoint,
                                        restore_rng_state, save_checkpoint)
from face3d.training.config import OptimizerConfig, ScheduleConfig, TrainerConfig
from face3d.training.grid import make_grid
from face3d.training.sampler import ResumableSampler
from face3d.training.task import OptimizerSpec, StepContext, TrainingTask
from face3d.training.trainer import Trainer

__all__ = ["TrainerConfig", "OptimizerConfig", "ScheduleConfig", "Trainer", "TrainingTask", "OptimizerSpec",
           "StepContext", "CheckpointManager", "save_checkpoint", "load_checkpoint", "capture_rng_state",
           "restore_rng_state", "ResumableSampler", "make_grid"]
