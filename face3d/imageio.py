"""Robust image input and atomic image output.

Reading (:func:`load_image`)
----------------------------
Anything Pillow decodes is accepted and returned as an RGB ``uint8`` array of shape
``(H, W, 3)``:

* **EXIF orientation** is applied (the array is the image as a viewer shows it); the tag
  value and whether it changed anything are kept in :class:`LoadedImage`.
* **Pixel modes**: ``1``/``L`` are replicated to three channels; ``P`` is expanded through its
  palette; ``CMYK``/``YCbCr``/``LAB``/``HSV`` go through Pillow's conversion (ICC profiles are
  not applied). **Alpha** (``RGBA``, ``LA``, ``PA``, palette or ``tRNS`` transparency) is
  *composited on white*, not dropped: transparent pixels of cut-out portraits often hold
  arbitrary colours, and a plain light background keeps face detectors on the face.
* **High bit depth**: ``I;16*`` (16-bit grey, e.g. 16-bit PNG) is scaled by 255/65535 with
  rounding; ``I`` (32-bit integers) is read as 8-bit when its values lie in [0, 255], as
  16-bit when they lie in [0, 65535], otherwise stretched from its min–max range; ``F``
  (float) is read as [0, 1] when its values lie there, as [0, 255] when they lie there,
  otherwise min–max stretched (NaN → 0). Pillow itself reads 16-bit *colour* PNGs as 8-bit
  ``RGB`` (high byte), which is the same scaling up to rounding.
* Multi-frame files (GIF, TIFF, …): the first frame.

Every failure raises :class:`~face3d.errors.ImageInputError` (exit code 3) whose message is
one line ``<path>: <reason>``: missing file (also a ``FileNotFoundError``), directory, empty
file, not an image, truncated/corrupt data, zero-size, too small (< ``min_side`` px),
too large (more than ``max_pixels``, or over Pillow's decompression-bomb limit).

Coordinates: pixels of the image as returned, x right, y down, the centre of the top-left
pixel at (0, 0) (see :mod:`face3d.camera`). :func:`rescale_points` maps points between two
sizes of the same image under that convention.

Writing (:func:`save_image_atomic`, :func:`atomic_write`)
---------------------------------------------------------
Outputs are written to a temporary file in the destination folder and moved into place
with :func:`os.replace`, so a failed or interrupted write never leaves a partial file under
the final name. Failures raise :class:`~face3d.errors.OutputError` (exit code 5).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from face3d.errors import ImageInputError, MissingInputError, OutputError, UsageError
from face3d.io_utils import atomic_write  # re-exported: part of this module's public API

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedImage",
    "load_image",
    "pil_to_rgb",
    "resize_rgb",
    "rescale_points",
    "save_image_atomic",
    "atomic_write",
    "image_to_tensor",
    "tensor_to_image",
    "DEFAULT_MIN_SIDE",
    "DEFAULT_MAX_PIXELS",
]

#: file extensions taken for images when a folder is listed (lower case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")

PathLike = Union[str, os.PathLike]

#: Images with a side shorter than this are refused: no detector finds a face in them.
DEFAULT_MIN_SIDE = 32
#: Refuse images with more pixels than this (≈ 16k × 12k); Pillow's own decompression-bomb
#: error (at twice ``PIL.Image.MAX_IMAGE_PIXELS``) applies as well, whichever is lower.
DEFAULT_MAX_PIXELS = 200_000_000

_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)


@dataclass
class LoadedImage:
    """An image read by :func:`load_image`.

    Attributes:
        rgb: ``(H, W, 3)`` uint8, C-contiguous, EXIF orientation applied (and downscaled
            when ``max_side`` asked for it).
        path: the file it was read from.
        original_mode: Pillow mode of the decoded file (``"RGB"``, ``"L"``, ``"I;16"``, …).
        original_size: ``(width, height)`` as stored in the file, before EXIF orientation.
        exif_orientation: the EXIF Orientation tag (1 when absent).
        exif_rotated: True when the orientation tag changed the pixel layout (values 2–8).
        full_size: ``(width, height)`` after EXIF orientation, before any downscaling.
    """

    rgb: np.ndarray
    path: Optional[Path]
    original_mode: str
    original_size: tuple[int, int]
    exif_orientation: int = 1
    exif_rotated: bool = False
    full_size: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.full_size is None:
            self.full_size = self.size

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of :attr:`rgb`."""
        return self.width, self.height

    @property
    def downscaled(self) -> bool:
        return tuple(self.full_size) != self.size

    def to_full_resolution(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` pixel coordinates in :attr:`rgb` to the full-size image."""
        return rescale_points(points, self.size, self.full_size)


def _fail(path: Path, reason: str) -> ImageInputError:
    return ImageInputError(f"{path}: {reason}")


def load_image(
    path: PathLike,
    max_side: Optional[int] = None,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = _WHITE,
) -> LoadedImage:
    """Read an image file as RGB uint8, robustly (see the module docstring for the rules).

    Args:
        path: image file.
        max_side: when given and the (EXIF-oriented) image's longer side exceeds it, the
            returned array is downscaled (Lanczos) so that its longer side is ``max_side``;
            :attr:`LoadedImage.full_size` keeps the size before and
            :meth:`LoadedImage.to_full_resolution` maps points back.
        min_side: refuse images whose shorter side is below this many pixels.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).
        background: RGB colour that transparent pixels are composited on.

    Raises:
        ImageInputError: one line ``<path>: <reason>``; :class:`MissingInputError` (also a
            ``FileNotFoundError``) when the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"{p}: no such file")
    if p.is_dir():
        raise _fail(p, "is a directory, not an image file")
    try:
        nbytes = p.stat().st_size
    except OSError as e:
        raise _fail(p, f"cannot read ({e.strerror or e})") from e
    if nbytes == 0:
        raise _fail(p, "empty file (0 bytes)")
    if max_side is not None and max_side < 1:
        raise UsageError(f"max_side must be a positive number of pixels, got {max_side}")

    try:
        # Pillow warns (and at twice its limit raises) on huge images; we apply our own limit
        # with a clear message, so its warning is silenced here and its error translated.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as e:
        raise _fail(p, f"image too large to decode safely (decompression-bomb guard: {e})") from e
    except UnidentifiedImageError as e:
        raise _fail(p, "not an image (Pillow cannot identify the file format)") from e
    except PermissionError as e:
        raise _fail(p, "cannot read (permission denied)") from e
    except OSError as e:
        raise _fail(p, f"cannot read ({e.strerror or e})") from e

    with im:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise _fail(p, f"zero-size image ({w}x{h})")
        if w * h > max_pixels:
            raise _fail(
                p, f"image too large ({w}x{h} = {w * h} pixels, limit {max_pixels}; possible decompression bomb)"
            )
        if min(w, h) < min_side:
            raise _fail(p, f"image too small ({w}x{h} pixels; each side must be at least {min_side})")
        original_mode = im.mode
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        except MemoryError as e:
            raise _fail(p, f"not enough memory to decode a {w}x{h} image") from e
        except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError, …
            raise _fail(p, f"truncated or corrupt image data ({_one_line(e)})") from e

        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:  # a malformed EXIF block is not a reason to refuse the pixels
            orientation = 1
        rotated = orientation in range(2, 9)
        try:
            oriented = ImageOps.exif_transpose(im) if rotated else im
            rgb = pil_to_rgb(oriented, background=background)
        except ImageInputError:
            raise
        except Exception as e:
            raise _fail(p, f"cannot convert pixel mode {original_mode!r} to RGB ({_one_line(e)})") from e

    full_size = (rgb.shape[1], rgb.shape[0])
    if max_side is not None and max(full_size) > max_side:
        k = max_side / max(full_size)
        rgb = resize_rgb(rgb, (max(1, round(full_size[0] * k)), max(1, round(full_size[1] * k))))
    return LoadedImage(
        rgb=rgb,
        path=p,
        original_mode=original_mode,
        original_size=(w, h),
        exif_orientation=orientation,
        exif_rotated=rotated,
        full_size=full_size,
    )


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def _stretch(a: np.ndarray) -> np.ndarray:
    """Min–max stretch of a numeric array to [0, 255] uint8 (NaN → 0)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_uint8(im: Image.Image) -> np.ndarray:
    """16/32-bit integer or float single-channel image → (H, W) uint8 (rules in module doc)."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if im.mode == "I":
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 255:
            return a.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
        return _stretch(a)
    # "F"
    f = a.astype(np.float64)
    finite = f[np.isfinite(f)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    f = np.nan_to_num(f, nan=0.0, posinf=hi, neginf=lo)
    if lo >= 0.0 and hi <= 1.0:
        return np.round(f * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(f).astype(np.uint8)
    return _stretch(f)


def pil_to_rgb(im: Image.Image, background: tuple[int, int, int] = _WHITE) -> np.ndarray:
    """Convert any Pillow image to ``(H, W, 3)`` uint8 RGB (alpha composited on ``background``)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        g = _gray_to_uint8(im)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    has_alpha = "A" in mode or "a" in mode or im.has_transparency_data
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint32)
        a = rgba[..., 3:4]
        bg = np.asarray(background, dtype=np.uint32).reshape(1, 1, 3)
        out = (rgba[..., :3] * a + bg * (255 - a) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image to ``size = (width, height)`` (Lanczos, antialiased)."""
    w, h = int(size[0]), int(size[1])
    if (rgb.shape[1], rgb.shape[0]) == (w, h):
        return rgb
    out = Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def rescale_points(points: np.ndarray, src_size: Sequence[int], dst_size: Sequence[int]) -> np.ndarray:
    """Map ``(..., 2)`` pixel coordinates from an image of ``src_size = (W, H)`` to the same
    image resized to ``dst_size``.

    With pixel centres at integer coordinates the image spans [-0.5, W - 0.5], so the exact
    map is ``x' = (x + 0.5) · W'/W - 0.5`` (and likewise for y). Also correct for box edges.
    """
    pts = np.asarray(points, dtype=np.float64)
    k = np.array([dst_size[0] / src_size[0], dst_size[1] / src_size[1]])
    return (pts + 0.5) * k - 0.5


# --------------------------------------------------------------------------- output


def _as_pil(image: Union[Image.Image, np.ndarray, torch.Tensor]) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise UsageError(f"can only save one image at a time, got a batch of {t.shape[0]}")
            t = t[0]
        image = tensor_to_image(t)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise UsageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.round(np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0).astype(np.uint8)
        elif a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        else:
            raise UsageError(f"expected a uint8 image or floats in [0, 1], got dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def save_image_atomic(
    path: PathLike,
    image: Union[Image.Image, np.ndarray, torch.Tensor],
    **save_kwargs,
) -> Path:
    """Save an image atomically (temporary file in the same folder, then :func:`os.replace`).

    Args:
        path: destination; the format follows its extension (``.png``, ``.jpg``, …).
        image: a Pillow image; an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array, uint8 or
            float in [0, 1]; or a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor in [0, 1].
        **save_kwargs: passed to :meth:`PIL.Image.Image.save` (JPEG defaults to quality 95).
            Alpha is composited on white for formats without it (JPEG).

    Returns:
        The destination path.

    Raises:
        OutputError: unknown extension, missing or unwritable folder, or the encoder failed.
        UsageError: the array has an unsupported shape or dtype.
    """
    dst = Path(path)
    if dst.is_dir():
        raise OutputError(f"{dst}: is a directory")
    fmt = Image.registered_extensions().get(dst.suffix.lower())
    if fmt is None:
        raise OutputError(f"{dst}: unknown image format for extension {dst.suffix!r} (use .png or .jpg)")
    pil = _as_pil(image)
    if fmt == "JPEG":
        save_kwargs.setdefault("quality", 95)
        if pil.mode not in ("RGB", "L", "CMYK"):
            pil = Image.fromarray(pil_to_rgb(pil))
    with atomic_write(dst) as tmp:
        try:
            pil.save(tmp, format=fmt, **save_kwargs)
        except OSError as e:
            raise OutputError(f"{dst}: cannot write ({_one_line(e)})") from e
        except (ValueError, KeyError) as e:
            raise OutputError(f"{dst}: cannot encode a {pil.mode} image as {fmt} ({_one_line(e)})") from e
    return dst


# --------------------------------------------------------------------------- torch


def image_to_tensor(
    images: Union[np.ndarray, Sequence[np.ndarray]],
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RGB image(s) → ``(B, 3, H, W)`` tensor in [0, 1].

    Args:
        images: ``(H, W, 3)`` or ``(B, H, W, 3)`` array, or a sequence of same-sized
            ``(H, W, 3)`` arrays; uint8 (divided by 255) or float already in [0, 1].
    """
    if isinstance(images, np.ndarray):
        a = images[None] if images.ndim == 3 else images
    else:
        a = np.stack([np.asarray(x) for x in images])
    if a.ndim != 4 or a.shape[-1] != 3:
        raise UsageError(f"expected (H, W, 3) or (B, H, W, 3) RGB images, got shape {a.shape}")
    # torch cannot wrap a read-only array (a decoded image often is one): copy it then
    a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a, order="C")
    t = torch.from_numpy(a).permute(0, 3, 1, 2)
    if a.dtype == np.uint8:
        t = t.to(dtype=dtype) / 255.0
    else:
        t = t.to(dtype=dtype)
    return t.contiguous().to(device) if device is not None else t.contiguous()


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` or ``(3, H, W)`` tensor in [0, 1] → ``(B, H, W, 3)`` or ``(H, W, 3)``
    uint8 (clamped, rounded to nearest)."""
    t = tensor.detach()
    if t.dim() not in (3, 4) or t.shape[-3] != 3:
        raise UsageError(f"expected a (3, H, W) or (B, 3, H, W) tensor, got shape {tuple(t.shape)}")
    t = (t.to(torch.float32).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    t = t.movedim(-3, -1).cpu().contiguous()
    return t.numpy()
