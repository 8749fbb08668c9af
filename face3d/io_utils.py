"""Atomic file output: the one implementation every writer of the toolkit uses.

A file is written to a temporary name in its destination folder (same file system, so the
final :func:`os.replace` is atomic) and moved into place only when writing succeeded; on any
exception the temporary file is deleted and an existing file under the final name is left
untouched. The final file gets the usual permissions (``0o666`` less the umask), or those of
the file it replaces (:func:`tempfile.mkstemp` alone would leave ``0o600``).

Failures of the mechanics (missing or blocked folder, no write access, destination is a
directory, failed rename) raise :class:`~face3d.errors.OutputError` (an ``OSError``, CLI exit
code 5) with a one-line message naming the destination; ``errno`` is kept when the cause was
an ``OSError``. Callers with their own ``OutputError`` subclass or message style pass
``error``, a factory ``(destination, reason) -> OutputError``.

Only the standard library is imported here, so light modules (:mod:`face3d.morphable_model`,
:mod:`face3d.export`) can use it without pulling in Pillow.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from face3d.errors import OutputError

__all__ = ["atomic_write", "write_bytes_atomic", "ErrorFactory"]

PathLike = Union[str, os.PathLike]
#: Builds the exception to raise from the destination and a one-line reason.
ErrorFactory = Callable[[Path, str], OutputError]


def _default_error(path: Path, reason: str) -> OutputError:
    return OutputError(f"{path}: {reason}")


def _fail(error: ErrorFactory, path: Path, reason: str, cause: Optional[OSError] = None) -> OutputError:
    err = error(path, reason)
    if cause is not None:
        err.errno = cause.errno  # machine-readable cause, message stays one line
    return err


def _umask() -> int:
    # os.umask can only be read by setting it; restore at once (no lasting global change).
    old = os.umask(0o022)
    os.umask(old)
    return old


def _blocking_file(folder: Path) -> Path:
    """The first of ``folder`` and its ancestors that exists but is not a directory."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)


@contextlib.contextmanager
def atomic_write(path: PathLike, *, make_parents: bool = False, suffix: str = ".tmp",
                 error: ErrorFactory = _default_error) -> Iterator[Path]:
    """Context manager yielding a temporary path next to ``path``; on success it is moved
    onto ``path`` with :func:`os.replace`, on any exception it is deleted.

    The temporary name is ``.<name>.<random><suffix>`` in the destination folder. The body
    writes to the yielded path however it likes (``write_bytes``, ``np.save``, Pillow, …);
    exceptions it raises propagate unchanged.

    Args:
        path: destination file.
        make_parents: create missing parent folders (otherwise a missing folder is an error).
        suffix: suffix of the temporary name (e.g. ``".part"`` for downloads).
        error: exception factory, see the module docstring.

    Raises:
        OutputError (or what ``error`` builds): the destination is a directory, its folder
            is missing (without ``make_parents``) or blocked by a file, not writable, or the
            final rename failed.
    """
    dst = Path(path)
    parent = dst.parent
    if dst.is_dir():
        raise _fail(error, dst, "is a directory")
    if make_parents:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise _fail(error, dst, f"{_blocking_file(parent)} is a file, not a directory", e) from e
        except OSError as e:
            raise _fail(error, dst, f"cannot create {parent} ({e.strerror or e})", e) from e
    elif not parent.exists():
        raise _fail(error, dst, f"output directory {parent} does not exist")
    elif not parent.is_dir():
        raise _fail(error, dst, f"{parent} is not a directory")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{dst.name}.", suffix=suffix)
    except OSError as e:
        raise _fail(error, dst, f"cannot write to {parent} ({e.strerror or e})", e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            mode = dst.stat().st_mode & 0o777 if dst.exists() else 0o666 & ~_umask()
            os.chmod(tmp, mode)
            os.replace(tmp, dst)
        except OSError as e:
            raise _fail(error, dst, f"cannot write ({e.strerror or e})", e) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: PathLike, data: bytes, *, make_parents: bool = True,
                       error: ErrorFactory = _default_error) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns the path.

    Missing parent folders are created unless ``make_parents`` is False. A failed write of
    the data itself (e.g. a full disk) is reported like the other failures.
    """
    dst = Path(path)
    with atomic_write(dst, make_parents=make_parents, error=error) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as e:
            raise _fail(error, dst, f"cannot write ({e.strerror or e})", e) from e
    return dst
