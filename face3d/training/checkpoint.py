"""Training checkpoints: atomic files, a ``latest`` pointer, the last K kept, safe loading.

A checkpoint is one ``torch.save`` file, ``<dir>/step_00001234.pt``, holding only what
:func:`torch.load` reads with ``weights_only=True`` — tensors, numbers, strings, ``None`` and
lists / tuples / dicts of them — so loading a checkpoint never unpickles arbitrary objects
(a checkpoint from elsewhere cannot run code). Random-generator states are stored as tensors
and numbers for that reason (:func:`capture_rng_state`), configs as plain dicts.

Writes go to a temporary file in the same folder, moved into place with :func:`os.replace`
(:func:`face3d.io_utils.atomic_write`); the text file ``latest`` naming the newest checkpoint
is replaced the same way *after* the checkpoint is complete, and older checkpoints are
deleted only after that. A crash at any moment leaves the previous checkpoint and pointer
intact, and never a partial file under a checkpoint's name.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from face3d.io_utils import atomic_write

__all__ = ["CheckpointManager", "save_checkpoint", "load_checkpoint", "find_checkpoint", "read_checkpoint", "module_state",
           "capture_rng_state", "restore_rng_state", "LATEST_NAME", "CheckpointError"]

log = logging.getLogger("face3d.training")

LATEST_NAME = "latest"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not one of ours (one-line message)."""


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator and torch's CPU (and
    CUDA) generators, as tensors and numbers only (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].cpu().numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log.warning("checkpoint holds CUDA RNG states of %d devices, %d present: CUDA RNG not restored",
                        len(cuda), torch.cuda.device_count())


# --------------------------------------------------------------------------- files


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    dst = Path(path)
    with atomic_write(dst, make_parents=True, suffix=".part") as tmp:
        torch.save(dict(state), tmp)
    return dst


def find_checkpoint(path: PathLike) -> Optional[Path]:
    """The checkpoint file meant by ``path``: the file itself, or for a folder the one its
    ``latest`` pointer names (falling back to the highest step); None if there is none."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        return None
    pointer = p / LATEST_NAME
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _NAME.match(name) and (p / name).is_file():
            return p / name
        log.warning("%s: names a missing checkpoint %r; using the newest file", pointer, name)
    files = sorted((f for f in p.iterdir() if _NAME.match(f.name)), key=lambda f: int(_NAME.match(f.name)[1]))
    return files[-1] if files else None


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint (a file, or a folder's latest) with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: nothing to load, or the file is not a readable checkpoint.
    """
    f = find_checkpoint(path)
    if f is None:
        raise CheckpointError(f"{path}: no checkpoint found")
    try:
        state = torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle refused by weights_only, …
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{f}: not a readable checkpoint ({first})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: not a checkpoint (top level is {type(state).__name__}, not a dict)")
    return state


def read_checkpoint(path: PathLike) -> tuple[dict[str, Any], Path]:
    """:func:`load_checkpoint` for user-given paths: a checkpoint file, a checkpoint folder or
    a run folder (its ``checkpoints/``); or any ``torch.save`` file of plain tensors and data.

    Returns ``(state, resolved path)``.

    Raises:
        FileNotFoundError: nothing at ``path``; ValueError: nothing loadable there.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    if p.is_dir() and find_checkpoint(p) is None and (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    try:
        return load_checkpoint(p), p
    except CheckpointError as e:
        raise ValueError(str(e)) from None


def module_state(path: PathLike, module: str) -> dict[str, torch.Tensor]:
    """The state dict of module ``module`` in a trainer checkpoint (see :func:`read_checkpoint`).

    Raises:
        FileNotFoundError: nothing at ``path``; ValueError: not a checkpoint or no such module.
    """
    state, p = read_checkpoint(path)
    mods = state.get("modules")
    if not isinstance(mods, Mapping) or module not in mods:
        have = ", ".join(mods) if isinstance(mods, Mapping) else "none"
        raise ValueError(f"{p}: the checkpoint has no module {module!r} (modules: {have})")
    return dict(mods[module])


class CheckpointManager:
    """Numbered checkpoints in one folder, with a ``latest`` pointer and the last K kept.

    Args:
        folder: where checkpoints live (created on the first save).
        keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, folder: PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write the checkpoint of ``step``, then move ``latest`` to it, then prune."""
        dst = save_checkpoint(self.path_for(step), state)
        with atomic_write(self.folder / LATEST_NAME) as tmp:
            tmp.write_text(dst.name + "\n")
        self._prune()
        return dst

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        files = [f for f in self.folder.iterdir() if _NAME.match(f.name)]
        return sorted(files, key=lambda f: int(_NAME.match(f.name)[1]))

    def latest(self) -> Optional[Path]:
        return find_checkpoint(self.folder) if self.folder.is_dir() else None

    def load(self, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.folder, map_location)

    def _prune(self) -> None:
        current = self.latest()
        for f in self.checkpoints()[:-self.keep]:
            if f != current:
                f.unlink(missing_ok=True)
