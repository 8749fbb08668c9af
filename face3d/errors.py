"""The toolkit's exceptions, each carrying the process exit code the CLI maps it to.

Every error raised on bad input is one line naming the file (where there is one) and the
reason, so that the CLI can print ``face3d: error: <message>`` on stderr and go on with the
next image of a batch.

Exit codes
----------
====  ==========================  ===================================================
code  exception                   meaning
====  ==========================  ===================================================
0     —                           success
1     :class:`Face3DError`        any other failure (also any unexpected exception)
2     :class:`UsageError`         bad command line / arguments / option values
3     :class:`InputError`         an input cannot be read: missing file, directory,
                                  not an image, truncated or corrupt, too small or
                                  too large (:class:`ImageInputError`), a bad
                                  landmark file (:class:`LandmarkFileError`)
4     :class:`NoFaceError`        the image was read but no face was found in it
5     :class:`OutputError`        an output cannot be written (missing directory,
                                  not writable, path is a directory, unknown format)
6     :class:`BackendUnavailableError`  a requested backend (landmark detector, …) is
                                  not installed or its weights are missing
====  ==========================  ===================================================

The classes also derive from the matching built-in exception (``ValueError`` for bad
values, ``FileNotFoundError`` for a missing input, ``OSError`` for outputs,
``RuntimeError`` for a missing backend), so library callers can catch either.
"""
from __future__ import annotations

__all__ = [
    "Face3DError",
    "UsageError",
    "InputError",
    "ImageInputError",
    "MissingInputError",
    "LandmarkFileError",
    "NoFaceError",
    "OutputError",
    "BackendUnavailableError",
    "exit_code_for",
]


class Face3DError(Exception):
    """Base class of the toolkit's errors; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(Face3DError, ValueError):
    """Invalid arguments or option values."""

    exit_code = 2


class InputError(Face3DError, ValueError):
    """An input file (image, landmarks, …) cannot be used."""

    exit_code = 3


class ImageInputError(InputError):
    """An input image cannot be read (not an image, truncated, too small, too large, …)."""


class MissingInputError(ImageInputError, FileNotFoundError):
    """The input path does not exist (also a ``FileNotFoundError``)."""


class LandmarkFileError(InputError):
    """A landmark file is missing, unreadable or holds the wrong number of points."""


class NoFaceError(Face3DError, ValueError):
    """The image was read but no face was detected in it."""

    exit_code = 4


class OutputError(Face3DError, OSError):
    """An output cannot be written."""

    exit_code = 5


class BackendUnavailableError(Face3DError, RuntimeError):
    """A requested optional backend is not installed or its weights are missing."""

    exit_code = 6


def exit_code_for(exc: BaseException) -> int:
    """Exit code for an exception: its ``exit_code`` for toolkit errors, 130 for Ctrl-C, else 1."""
    if isinstance(exc, Face3DError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1
