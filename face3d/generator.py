"""One interface for every de-occlusion / frontalization generator, and their registry.

The toolkit offers several generators that users can pick and compare (``deocclude
--generator NAME``): the 3D-guided ones of :mod:`selfsup` (CFR-GAN, the 3DMM-conditioned GAN)
and the image-only ones of :mod:`deocc` (RLA, FD-StackGAN, coarse-to-fine completion). They
all take a :class:`GeneratorInput` and return a :class:`GeneratorOutput`.

Conventions (every generator, every tensor):

* images are ``(B, 3, S, S)`` float sRGB in [0, 1], aligned face crops framed as the
  regressor's input (:mod:`face3d.align` / :func:`face3d.coefficients.aligned_camera`),
  ``S = generator.image_size``; the caller resizes;
* masks are ``(B, 1, S, S)`` float in [0, 1]; in an occlusion mask **1 = occluded** (the pixels
  the generator had to invent); in a face mask 1 = the fitted model covers the pixel.

A generator is an :class:`torch.nn.Module` subclass of :class:`Generator` with a dataclass
``config`` (its architecture settings, ``image_size`` among them), registered by name with
:func:`register_generator`. The built-in names map to modules imported on first use, so
``import face3d`` stays light and has no registry side effects.

Files: :func:`save_generator` writes config and weights together (atomically);
:func:`load_generator` reads such a file or a trainer checkpoint whose task saved
``{"generator": {"name", "config"}}`` next to a module named ``generator``; both are read
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GeneratorInput", "GeneratorOutput", "Generator", "GeneratorEntry", "register_generator",
           "get_generator", "available_generators", "build_generator", "save_generator", "load_generator",
           "generator_state", "difference_mask", "BUILTIN_GENERATORS", "GENERATOR_FORMAT"]

#: the format tag of :func:`save_generator` files
GENERATOR_FORMAT = "face3d-generator/1"

#: built-in generator name → module that registers it (imported on first use)
BUILTIN_GENERATORS: dict[str, str] = {
    "cfrgan": "selfsup.cfrgan",
    "conditioned": "selfsup.conditioned",
    "rla": "deocc.rla",
    "stackgan": "deocc.stackgan",
    "c2f": "deocc.c2f",
}


@dataclass
class GeneratorInput:
    """What a generator sees (module doc for shapes and ranges).

    Attributes:
        image: (B, 3, S, S) the photo crop to repair (occluded; for frontalization the
            caller passes ``render_p`` at the target pose here as well).
        render_e: (B, 3, S, S) R_e: the fitted model's albedo under the estimated light at the
            target pose, occlusion-free by construction (3D-guided generators only).
        render_p: (B, 3, S, S) R_p: the photo's pixels projected on the fitted shape and
            rendered at the target pose (carries the occluders; zero in self-occluded holes).
        face_mask: (B, 1, S, S) where the fitted model covers the crop at the target pose.
        mask: (B, 1, S, S) a prior occlusion mask (e.g. Swap-R&R's eq. 5), if one is known.
    """

    image: Tensor
    render_e: Optional[Tensor] = None
    render_p: Optional[Tensor] = None
    face_mask: Optional[Tensor] = None
    mask: Optional[Tensor] = None

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None
           ) -> "GeneratorInput":
        return GeneratorInput(**{f.name: (None if getattr(self, f.name) is None
                                          else getattr(self, f.name).to(device=device, dtype=dtype))
                                 for f in dataclasses.fields(self)})

    @property
    def batch(self) -> int:
        return int(self.image.shape[0])


@dataclass
class GeneratorOutput:
    """A generator's answer: ``image`` (B, 3, S, S) in [0, 1], the repaired crop; ``mask``
    (B, 1, S, S) in [0, 1], where it found an occlusion (1 = occluded, i.e. replaced)."""

    image: Tensor
    mask: Tensor


class Generator(nn.Module):
    """Base class of the registered generators.

    Subclasses set ``uses_3d`` (needs ``render_e`` / ``render_p`` / ``face_mask``) and implement
    :meth:`forward`; their ``config`` is a dataclass with an ``image_size`` field. ``name`` and
    ``config_class`` are filled in by :func:`register_generator`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)
    uses_3d: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def check_input(self, inputs: GeneratorInput) -> None:
        """A one-line ValueError for inputs this generator cannot use."""
        s = self.image_size
        if inputs.image.dim() != 4 or tuple(inputs.image.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.name}: image must be (B, 3, {s}, {s}), got {tuple(inputs.image.shape)}")
        if self.uses_3d and (inputs.render_e is None or inputs.render_p is None):
            raise ValueError(f"{self.name} is 3D-guided: it needs render_e and render_p (R_e, R_p) of a fit")

    def forward(self, inputs: GeneratorInput) -> GeneratorOutput:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class GeneratorEntry:
    """A registered generator.

    Attributes:
        name: registry name (``--generator NAME``).
        cls: the :class:`Generator` subclass; ``cls.config_class`` its architecture config.
        train_config: dataclass of a training run (fields ``trainer``
            (:class:`~face3d.training.config.TrainerConfig`) and ``data`` at least; ``stage``,
            ``init`` where the model has them), or None if the generator is not trainable here.
        train: runs training from such a config and returns the
            :class:`~face3d.training.trainer.Trainer`.
        summary: one line for ``--help`` and listings.
    """

    name: str
    cls: type
    train_config: Optional[type] = None
    train: Optional[Callable[[Any], Any]] = None
    summary: str = ""


_REGISTRY: dict[str, GeneratorEntry] = {}


def difference_mask(output: Tensor, image: Tensor, threshold: float = 0.1, kernel: int = 5) -> Tensor:
    """An occlusion mask for generators that predict none: where the output departs from the input.

    ``d = box_k(mean_c |output − image|)`` (a k×k box filter, so isolated pixel noise does not
    count), ``m = [d > threshold]``, then dilated by a k×k max filter so the mask covers the
    soft edge of a replaced region. Honest by construction: it marks exactly the pixels the
    generator changed by more than ``threshold`` (in [0, 1] intensity units) on average over a
    k×k neighbourhood.

    Args:
        output, image: (B, 3, H, W) in [0, 1].
        threshold: mean absolute change that counts as replaced (0.1 ≈ 25 grey levels: well
            above JPEG noise and the small colour drift of a generator's reconstruction).
        kernel: odd box / dilation size in pixels (1: per pixel, no dilation).

    Returns:
        (B, 1, H, W) float mask in {0, 1}, 1 = changed (occluded).
    """
    if output.shape != image.shape or output.dim() != 4:
        raise ValueError(f"difference_mask: output {tuple(output.shape)} and image {tuple(image.shape)} "
                         "must be the same (B, C, H, W)")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"difference_mask: kernel must be odd and >= 1, got {kernel}")
    d = (output - image).abs().mean(1, keepdim=True)
    if kernel > 1:
        d = F.avg_pool2d(F.pad(d, [kernel // 2] * 4, mode="replicate"), kernel, stride=1)
    m = (d > threshold).to(output.dtype)
    if kernel > 1:
        m = F.max_pool2d(m, kernel, stride=1, padding=kernel // 2)
    return m


def register_generator(name: str, config_class: type, *, train_config: Optional[type] = None,
                       train: Optional[Callable[[Any], Any]] = None, summary: str = ""
                       ) -> Callable[[type], type]:
    """Class decorator: register a :class:`Generator` subclass under ``name``.

    ``config_class`` is its architecture config (a dataclass with ``image_size``).
    Re-registering a name with another class raises ValueError.
    """
    if not dataclasses.is_dataclass(config_class) or "image_size" not in {f.name for f in
                                                                          dataclasses.fields(config_class)}:
        raise ValueError(f"generator {name!r}: config_class must be a dataclass with an image_size field")

    def wrap(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Generator)):
            raise ValueError(f"generator {name!r}: {cls!r} is not a face3d.generator.Generator subclass")
        old = _REGISTRY.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"generator name {name!r} is already registered by {old.cls.__module__}")
        cls.name = name
        cls.config_class = config_class
        _REGISTRY[name] = GeneratorEntry(name, cls, train_config, train, summary)
        return cls

    return wrap


def get_generator(name: str) -> GeneratorEntry:
    """The registry entry of ``name`` (importing its built-in module on first use).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY and name in BUILTIN_GENERATORS:
        try:
            importlib.import_module(BUILTIN_GENERATORS[name])
        except ImportError as e:
            raise ValueError(f"generator {name!r} is not available ({e})") from None
    if name not in _REGISTRY:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(available_generators())}")
    return _REGISTRY[name]


def available_generators() -> list[str]:
    """Names of the built-in generators whose modules import, plus any registered since."""
    for name, module in BUILTIN_GENERATORS.items():
        if name not in _REGISTRY:
            try:
                importlib.import_module(module)
            except ImportError:  # a built-in not written yet (or a missing optional dependency)
                continue
    return sorted(_REGISTRY)


def build_generator(name: str, config: Any = None, overrides: Optional[Mapping[str, Any]] = None) -> Generator:
    """A randomly initialised generator ``name`` with ``config`` (default: its defaults),
    updated by ``overrides`` (nested mapping, see :func:`face3d.config.apply_overrides`)."""
    from face3d.config import apply_overrides

    entry = get_generator(name)
    cfg = config if config is not None else entry.cls.config_class()
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return entry.cls(cfg)


def generator_state(generator: Generator) -> dict[str, Any]:
    """``{"name", "config"}`` of a generator as plain data (what training tasks checkpoint
    under the task state key ``"generator"``, so :func:`load_generator` can rebuild it)."""
    from face3d.config import config_to_dict

    return {"name": generator.name, "config": config_to_dict(generator.config)}


def save_generator(generator: Generator, path: Union[str, os.PathLike]) -> Path:
    """Write ``generator``'s name, config and weights to one file (temporary file + rename)."""
    from face3d.io_utils import atomic_write

    p = Path(path)
    state = {"format": GENERATOR_FORMAT, **generator_state(generator),
             "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()}}
    with atomic_write(p, make_parents=True) as tmp:
        torch.save(state, tmp)
    return p


def load_generator(path: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
                   name: Optional[str] = None) -> Generator:
    """A generator from a :func:`save_generator` file or a trainer checkpoint (file or run
    folder), in eval mode on ``device``. ``name``, if given, must match the file's.

    Raises:
        FileNotFoundError: nothing at ``path``; ValueError: not a generator file, another
        generator than ``name``, or weights that do not fit the saved config.
    """
    from face3d.config import apply_overrides
    from face3d.training.checkpoint import read_checkpoint

    state, p = read_checkpoint(path)
    if state.get("format") == GENERATOR_FORMAT:
        meta, weights = state, state.get("state_dict")
    else:
        task = state.get("task") if isinstance(state.get("task"), Mapping) else {}
        meta = task.get("generator") if isinstance(task.get("generator"), Mapping) else None
        mods = state.get("modules") if isinstance(state.get("modules"), Mapping) else {}
        weights = mods.get("generator")
        if meta is None:
            raise ValueError(f"{p}: not a generator file (no {GENERATOR_FORMAT} tag, no generator in the checkpoint)")
    if not isinstance(weights, Mapping) or not isinstance(meta.get("name"), str):
        raise ValueError(f"{p}: generator file without weights or name")
    if name is not None and meta["name"] != name:
        raise ValueError(f"{p} holds a {meta['name']!r} generator, not {name!r}")
    entry = get_generator(meta["name"])
    cfg = apply_overrides(entry.cls.config_class(), dict(meta.get("config") or {}))
    gen = entry.cls(cfg)
    try:
        gen.load_state_dict(dict(weights))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{p}: weights do not fit a {meta['name']} generator with the saved config ({first})") \
            from None
    return gen.to(device).eval()
