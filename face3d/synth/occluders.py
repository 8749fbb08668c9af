"""Synthetic occlusion: objects pasted over a face, placed by its 68 landmarks, exact mask kept.

The recipe of CFR-GAN (Kim et al. 2022, §3.1, first fine-tuning stage): a hand shape,
randomly rotated and scaled, placed around the facial landmarks; the network sees the
occluded image and every loss is computed against the clean one. Its second stage uses
medical masks (Masked Face-Net), and de-occlusion work in general pastes glasses, cups,
scarves, rectangles and text. :func:`occlude` draws one such object and returns the
occluded image with the **exact** alpha of the object: ``out = image · (1 − a) + colour · a``
and pixels with ``a = 0`` are bit-identical to the input.

Kinds (:data:`OCCLUDER_KINDS`):

* ``hand`` — the hand silhouette of ``hand.png`` (its alpha; ``hand.npy`` is the same shape
  as a binary mask) or, without files, a procedural hand (palm + fingers); recoloured with
  a random skin tone and soft shading; around the mouth, an eye, a cheek, the nose or the
  chin, wrist pointing away from the face.
* ``medical_mask`` — a surgical-mask shape from the landmarks (under the eyes, over the nose
  bridge, round the jaw, ear loops) textured with one of the ``mask_*.jpg`` fabrics
  (cut out of their plain background by flood-fill keying) or a procedural pleated fabric.
* ``sunglasses`` / ``glasses`` — two lenses around the eye landmarks with bridge and temples;
  sunglasses have dark, nearly opaque lenses, glasses a thin frame and faint clear lenses.
* ``scarf`` — a textured band over the lower face (chin up to the mouth, sometimes the nose).
* ``cup`` — a mug/cup (tapered rounded body, rim, handle) raised to the mouth.
* ``book`` — a closed book (cover with title bands, spine shading, page edges) held up in
  front of the lower face, a cheek or an eye (RLA's training set, seeds/rla_lstm_autoencoders §IV-A).
* ``phone`` — a smartphone (rounded body, bezel, screen with a wallpaper or app grid) held
  against a cheek/ear or in front of the face (RLA, ibid.).
* ``rectangle`` — an axis-aligned rectangle of one random RGB colour, aspect ratio w/h in
  [0.5, 2] and area ratio a ∈ [0.01, 0.15] of the image, centred on a random face point
  (Blind face completion, seeds/c2f_blind_face_completion §III-A and §IV-A; the paper draws
  the aspect uniformly in [0.5, 2] — we draw log-uniformly so tall and wide are equally likely).
* ``ellipse`` (ellipses and irregular blobs) — patterned shapes anywhere on the face.
* ``text`` — a word in one random RGB colour whose line height is h ∈ [0.05, 0.5] of the image
  height, independent of word length (C2F §III-A, §IV-A), in PIL's default (FreeType) font.

Position buckets (C2F §III-A: "mouth; nose; eyes; outside"): :func:`face_regions` draws the
eye, nose and mouth regions from the landmarks and :func:`position_bucket` assigns a mask to
the region it covers most (as a fraction of that region), or ``outside`` when it covers less
than ``min_fraction`` of every region.

Image files are read at run time from a folder (:class:`OccluderLibrary`): by default
``$FACE3D_OCCLUDERS`` or ``../shared/data/occluders`` next to the repository; every kind also
works with no files at all.

Geometry is drawn with PIL at ``supersample``× resolution and box-filtered, so edges are
anti-aliased and the alpha is the coverage of each pixel. Everything random comes from the
``numpy.random.Generator`` passed in: the same generator state gives the same occluder.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from torch import Tensor

__all__ = ["OCCLUDER_KINDS", "OcclusionResult", "OccluderLibrary", "OccluderSampler", "occlude", "occlude_batch",
           "default_occluder_dir", "face_frame", "FaceFrame", "BUCKETS", "face_regions", "position_bucket",
           "RECT_AREA_RATIO", "RECT_ASPECT", "TEXT_HEIGHT_RATIO"]

#: Occluder kinds; new kinds are appended so the index of a kind never changes.
OCCLUDER_KINDS = ("hand", "medical_mask", "sunglasses", "glasses", "scarf", "cup", "rectangle", "ellipse", "text",
                  "book", "phone")
#: Position buckets of :func:`position_bucket` (C2F §III-A), by index.
BUCKETS = ("eyes", "nose", "mouth", "outside")
#: C2F §IV-A: rectangle area ratio a, aspect ratio range, text height ratio h.
RECT_AREA_RATIO = (0.01, 0.15)
RECT_ASPECT = (0.5, 2.0)
TEXT_HEIGHT_RATIO = (0.05, 0.5)

ImageLike = Union[np.ndarray, Tensor]
RngLike = Union[np.random.Generator, int, None]

#: sRGB skin tones for hands (light to dark).
_SKIN = np.array([[0.96, 0.80, 0.69], [0.92, 0.72, 0.60], [0.87, 0.65, 0.52], [0.78, 0.56, 0.42],
                  [0.65, 0.45, 0.32], [0.50, 0.33, 0.22], [0.36, 0.23, 0.16]], np.float32)
# C2F draws from 2048 English words; a shorter everyday list of our own keeps the module
# self-contained (word length still spans 2-11 letters, upper and lower case).
_WORDS = ("SALE", "hello", "2024", "OK", "face3d", "No. 7", "STOP", "lorem ipsum", "#42", "CAFE", "xyz",
          "MON-FRI", "55%", "Hi!", "ABC", "www", "love", "EXIT", "pi=3.14", "TEXT",
          "water", "garden", "window", "yellow", "morning", "river", "paper", "music", "simple", "travel",
          "bridge", "winter", "pocket", "silver", "market", "friend", "orange", "number", "Monday", "planet",
          "kitchen", "letter", "island", "summer", "station", "forest", "picture", "coffee", "animal", "yes",
          "open", "north", "pencil", "ticket", "table", "thunder", "castle", "basket", "mirror", "candle",
          "doctor", "engine", "flower", "guitar", "harbour", "jacket", "ladder", "meadow", "needle", "office",
          "rabbit", "saddle", "tunnel", "umbrella", "village", "whisper", "zebra", "apple", "cloud", "dream")


def default_occluder_dir() -> Path:
    """``$FACE3D_OCCLUDERS``, else ``<repository>/../shared/data/occluders``."""
    env = os.environ.get("FACE3D_OCCLUDERS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "occluders"


# -- the occluder images -----------------------------------------------------------------------


def _key_out_background(rgb: np.ndarray, tolerance: float = 0.10) -> np.ndarray:
    """Object mask (H, W) bool of a product photo on a plain background: pixels whose colour
    is within ``tolerance`` (RGB distance / √3) of the median border colour and connected to
    the border are background (flood fill from the border through similar colours)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    ref = np.median(border, 0)
    close = np.linalg.norm(rgb - ref, axis=-1) / math.sqrt(3.0) < tolerance
    labels, _ = ndimage.label(close)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])
    return ~background


def _fabric_texture(rgb: np.ndarray) -> np.ndarray:
    """The rectangle of a mask photo that is all fabric: rows and columns that are ≥ 97 %
    object after keying (falls back to the object's bounding box)."""
    obj = _key_out_background(rgb)
    rows = np.flatnonzero(obj.mean(1) >= 0.97)
    cols = np.flatnonzero(obj.mean(0) >= 0.97)
    if len(rows) < 0.5 * obj.shape[0] or len(cols) < 0.5 * obj.shape[1]:
        ys, xs = np.nonzero(obj)
        if len(ys) == 0:
            return rgb
        return rgb[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    return rgb[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


class OccluderLibrary:
    """The file-based occluder images of a folder (see module doc); missing files are fine.

    Attributes: ``hand_alpha`` (h, w) float32 in [0, 1] cropped to the hand, or None;
    ``mask_textures``: list of (h, w, 3) float32 sRGB fabric crops; ``root``.
    ``root=None`` uses :func:`default_occluder_dir` and tolerates its absence; an explicit
    ``root`` that does not exist raises ``FileNotFoundError``.
    """

    def __init__(self, root: Optional[Union[str, os.PathLike]] = None) -> None:
        explicit = root is not None
        self.root = Path(root) if explicit else default_occluder_dir()
        self.hand_alpha: Optional[np.ndarray] = None
        self.mask_textures: list[np.ndarray] = []
        self.mask_names: list[str] = []
        if not self.root.is_dir():
            if explicit:
                raise FileNotFoundError(f"occluder folder not found: {self.root}")
            return
        png, npy = self.root / "hand.png", self.root / "hand.npy"
        if png.is_file():
            with Image.open(png) as im:
                im = im.convert("RGBA")
                alpha = np.asarray(im, np.float32)[..., 3] / 255.0
        elif npy.is_file():
            alpha = np.load(npy, allow_pickle=False).astype(np.float32)
        else:
            alpha = None
        if alpha is not None:
            if alpha.ndim != 2 or not alpha.any():
                raise ValueError(f"hand occluder in {self.root} is not a 2-D mask with content")
            ys, xs = np.nonzero(alpha > 0.02)
            self.hand_alpha = np.clip(alpha[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1], 0.0, 1.0)
        for path in sorted(self.root.glob("mask_*.*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0
            self.mask_textures.append(_fabric_texture(rgb))
            self.mask_names.append(path.name)

    @property
    def has_files(self) -> bool:
        return self.hand_alpha is not None or bool(self.mask_textures)

    def __repr__(self) -> str:
        return (f"OccluderLibrary(root={str(self.root)!r}, hand={'yes' if self.hand_alpha is not None else 'no'}, "
                f"masks={len(self.mask_textures)})")


# -- face geometry -----------------------------------------------------------------------------


@dataclass
class FaceFrame:
    """In-plane frame of a face from its landmarks (image pixels, y down).

    ``up``: unit image vector from the chin (8) to the nose bridge (27); ``right``: ``up``
    turned 90° (the viewer's right for an upright face); ``size``: the larger extent of the
    landmarks along those axes, px; ``centre``: their mean.
    """

    centre: np.ndarray
    up: np.ndarray
    right: np.ndarray
    size: float
    points: np.ndarray

    def at(self, origin: np.ndarray, x: float, y: float) -> np.ndarray:
        """``origin`` + x·right + y·up (x, y in pixels)."""
        return origin + x * self.right + y * self.up

    def angle(self) -> float:
        """Counter-clockwise angle (radians, as seen on screen) of ``up`` from the image's up."""
        return math.atan2(-self.up[0], -self.up[1])

    def anchors(self) -> dict[str, np.ndarray]:
        p = self.points
        return {
            "mouth": p[48:60].mean(0), "nose": p[30], "chin": 0.6 * p[8] + 0.4 * p[57],
            "left_eye": p[36:42].mean(0), "right_eye": p[42:48].mean(0),
            "left_cheek": (p[2] + p[31] + p[48]) / 3.0, "right_cheek": (p[14] + p[35] + p[54]) / 3.0,
        }


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """:class:`FaceFrame` of 68 landmarks (68, 2)."""
    p = np.asarray(landmarks, np.float64)
    up = p[27] - p[8]
    n = np.linalg.norm(up)
    up = up / n if n > 1e-6 else np.array([0.0, -1.0])
    right = np.array([-up[1], up[0]])
    local = np.stack([(p - p.mean(0)) @ right, (p - p.mean(0)) @ up], 1)
    size = float(max(np.ptp(local[:, 0]), np.ptp(local[:, 1]), 1.0))
    return FaceFrame(p.mean(0), up, right, size, p)


def face_regions(landmarks: Union[np.ndarray, Tensor], height: int, width: int, grow: float = 0.04) -> np.ndarray:
    """Binary masks (3, H, W) bool of the eye, nose and mouth regions of a face (:data:`BUCKETS`
    order without ``outside``), from 68 iBUG landmarks in pixels.

    Eyes: the hull of each eye with its eyebrow (17-21 + 36-41, 22-26 + 42-47); nose: the hull
    of the lower bridge and nostrils (29-35), widened at point 29 to half the inner eye
    corners' spacing so a thin bridge still has area; mouth: the hull of the outer lip (48-59). Every region is
    grown by ``grow`` × the face size (:class:`FaceFrame`) so small or tilted faces keep
    sensible regions.
    """
    lm = landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor) else np.asarray(landmarks, np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be (68, 2), got {lm.shape}")
    frame = face_frame(lm)
    half = 0.25 * np.linalg.norm(lm[42] - lm[39])
    # from point 29 down: the upper bridge (27-28) is where glasses rest, counted as eyes
    nose = np.concatenate([lm[29:36], lm[29:30] + frame.right * half, lm[29:30] - frame.right * half])
    polys = [[np.concatenate([lm[17:22], lm[36:42]]), np.concatenate([lm[22:27], lm[42:48]])], [nose], [lm[48:60]]]
    r = grow * frame.size
    out = np.zeros((3, height, width), bool)
    for i, group in enumerate(polys):
        im = Image.new("L", (width, height))
        d = ImageDraw.Draw(im)
        for pts in group:
            hull = _convex_hull(pts)
            # grow: push every hull vertex out from the hull's centre by r, then fill
            c = hull.mean(0)
            v = hull - c
            n = np.linalg.norm(v, axis=1, keepdims=True)
            hull = hull + v / np.maximum(n, 1e-9) * r
            d.polygon([(float(x), float(y)) for x, y in hull], fill=255)
        out[i] = np.asarray(im) > 0
    return out


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Convex hull (m, 2) of points (n, 2), counter-clockwise (monotone chain)."""
    p = sorted(map(tuple, np.asarray(pts, np.float64)))
    if len(p) < 3:
        return np.asarray(p)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    upper: list = []
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.asarray(lower[:-1] + upper[:-1])


def position_bucket(mask: Union[np.ndarray, Tensor], landmarks: Union[np.ndarray, Tensor],
                    min_fraction: float = 0.03) -> int:
    """Index into :data:`BUCKETS` of where an occlusion ``mask`` (H, W) (or (1, H, W); > 0.5 =
    occluded) sits on a face: the region of :func:`face_regions` with the largest covered
    fraction, or ``outside`` (3) when no region is covered by ``min_fraction`` or more.
    Ties go to the first of eyes, nose, mouth."""
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (1, H, W), got {m.shape}")
    regions = face_regions(landmarks, *m.shape)
    occ = m > 0.5
    area = regions.reshape(3, -1).sum(1)
    frac = (regions & occ[None]).reshape(3, -1).sum(1) / np.maximum(area, 1)
    best = int(np.argmax(frac))
    return best if frac[best] >= min_fraction and area[best] > 0 else BUCKETS.index("outside")


# -- drawing -----------------------------------------------------------------------------------


class _Canvas:
    """A supersampled premultiplied-RGBA layer stack for one image of (h, w) pixels."""

    def __init__(self, h: int, w: int, k: int) -> None:
        self.h, self.w, self.k = h, w, k
        self.H, self.W = h * k, w * k
        self.rgb = np.zeros((self.H, self.W, 3), np.float32)
        self.a = np.zeros((self.H, self.W), np.float32)
        self._xy: Optional[tuple[np.ndarray, np.ndarray]] = None

    def hi(self, pts: np.ndarray) -> list[tuple[float, float]]:
        """Low-res pixel coordinates → high-res drawing coordinates (pixel centres kept)."""
        q = (np.asarray(pts, np.float64).reshape(-1, 2) + 0.5) * self.k - 0.5
        return [(float(x), float(y)) for x, y in q]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) (H, W) low-res pixel coordinates of every high-res pixel centre."""
        if self._xy is None:
            ys = (np.arange(self.H, dtype=np.float32) + 0.5) / self.k - 0.5
            xs = (np.arange(self.W, dtype=np.float32) + 0.5) / self.k - 0.5
            self._xy = (np.broadcast_to(xs[None], (self.H, self.W)), np.broadcast_to(ys[:, None], (self.H, self.W)))
        return self._xy

    def shape(self, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
        """Coverage (H, W) in {0, 1} of what ``draw`` fills with 255 on an 'L' image."""
        im = Image.new("L", (self.W, self.H))
        draw(ImageDraw.Draw(im))
        return np.asarray(im, np.float32) / 255.0

    def paste(self, patch: Image.Image, x0: int, y0: int) -> np.ndarray:
        """Coverage (H, W) of an 'L' ``patch`` placed with its top-left at high-res (x0, y0)."""
        im = Image.new("L", (self.W, self.H))
        im.paste(patch, (int(x0), int(y0)))
        return np.asarray(im, np.float32) / 255.0

    def add(self, cover: np.ndarray, colour: Union[np.ndarray, Sequence[float]], opacity=1.0) -> None:
        """Composite ``colour`` ((3,) or (H, W, 3) sRGB) with alpha ``cover · opacity`` over the stack."""
        rows, cols = np.flatnonzero(cover.any(1)), np.flatnonzero(cover.any(0))
        if len(rows) == 0:
            return
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # work on the bounding box only
        op = opacity[sl] if isinstance(opacity, np.ndarray) else opacity
        a = (cover[sl] * op).astype(np.float32)
        col = np.asarray(colour, np.float32)
        if col.ndim == 3:
            col = col[sl]
        self.rgb[sl] = col * a[..., None] + self.rgb[sl] * (1.0 - a[..., None])
        self.a[sl] = a + self.a[sl] * (1.0 - a)

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """Box-filtered (premultiplied RGB (h, w, 3), alpha (h, w))."""
        k = self.k
        rgb = self.rgb.reshape(self.h, k, self.w, k, 3).mean((1, 3))
        a = self.a.reshape(self.h, k, self.w, k).mean((1, 3))
        a = np.where(a < 1e-6, 0.0, np.minimum(a, 1.0)).astype(np.float32)
        rgb = np.where(a[..., None] > 0, rgb, 0.0).astype(np.float32)
        return rgb, a


def _superellipse(c: np.ndarray, ax: np.ndarray, ay: np.ndarray, rx: float, ry: float, n: float,
                  count: int = 64) -> np.ndarray:
    """(count, 2) outline of |x/rx|^n + |y/ry|^n = 1 on axes ``ax``, ``ay`` around ``c``."""
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    x = rx * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2.0 / n)
    y = ry * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** (2.0 / n)
    return c + x[:, None] * ax + y[:, None] * ay


def _resample(poly: np.ndarray, count: int) -> np.ndarray:
    """``count`` points evenly spaced by arc length along an open polyline (m, 2)."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return np.repeat(poly[:1], count, 0)
    t = np.linspace(0.0, s[-1], count)
    return np.stack([np.interp(t, s, poly[:, 0]), np.interp(t, s, poly[:, 1])], 1)


def _warp_grid(canvas: _Canvas, texture: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine warp of ``texture`` (h, w, C) onto a (rows, cols, 2) grid of low-res
    image points (row 0 = texture top, col 0 = texture left). Returns (values (H, W, C),
    coverage (H, W) in {0, 1}) at the canvas's high resolution."""
    th, tw, C = texture.shape
    rows, cols = grid.shape[:2]
    G = (grid + 0.5) * canvas.k - 0.5
    src = np.stack(np.meshgrid(np.linspace(0, tw - 1, cols), np.linspace(0, th - 1, rows)), -1)  # (rows, cols, 2)
    out = np.zeros((canvas.H, canvas.W, C), np.float32)
    cover = np.zeros((canvas.H, canvas.W), np.float32)
    for i in range(rows - 1):
        for j in range(cols - 1):
            quad = [(i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j)]
            for tri in ((quad[0], quad[1], quad[2]), (quad[0], quad[2], quad[3])):
                d = np.array([G[a, b] for a, b in tri])
                sv = np.array([src[a, b] for a, b in tri])
                x0, y0 = np.floor(d.min(0)).astype(int)
                x1, y1 = np.ceil(d.max(0)).astype(int)
                x0, y0 = max(x0, 0), max(y0, 0)
                x1, y1 = min(x1, canvas.W - 1), min(y1, canvas.H - 1)
                if x1 < x0 or y1 < y0:
                    continue
                T = np.array([[d[1, 0] - d[0, 0], d[2, 0] - d[0, 0]], [d[1, 1] - d[0, 1], d[2, 1] - d[0, 1]]])
                det = np.linalg.det(T)
                if abs(det) < 1e-9:
                    continue
                yy, xx = np.mgrid[y0: y1 + 1, x0: x1 + 1].astype(np.float64)
                rel = np.stack([xx - d[0, 0], yy - d[0, 1]], -1) @ np.linalg.inv(T).T  # (…, 2) = (b1, b2)
                b1, b2 = rel[..., 0], rel[..., 1]
                inside = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
                if not inside.any():
                    continue
                su = sv[0, 0] + b1 * (sv[1, 0] - sv[0, 0]) + b2 * (sv[2, 0] - sv[0, 0])
                sy = sv[0, 1] + b1 * (sv[1, 1] - sv[0, 1]) + b2 * (sv[2, 1] - sv[0, 1])
                vals = _bilinear(texture, su[inside], sy[inside])
                oy, ox = yy[inside].astype(int), xx[inside].astype(int)
                out[oy, ox] = vals
                cover[oy, ox] = 1.0
    return out, cover


def _bilinear(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (n, C) of ``tex`` (h, w, C) at pixel coordinates x, y (clamped)."""
    h, w = tex.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx) * (1 - fy)
            + (tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx) * fy).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:  # neutral: black, grey, white objects are common
        return np.full(3, rng.uniform(0.05, 0.95), np.float32)
    return rng.uniform(0.05, 0.95, 3).astype(np.float32)


def _pattern(rng: np.random.Generator, canvas: _Canvas, frame: FaceFrame, base: np.ndarray) -> np.ndarray:
    """A random (H, W, 3) surface: solid, stripes, checks or noise, with a shading ramp."""
    X, Y = canvas.coords()
    s = frame.size
    kind = rng.choice(["solid", "stripes", "checks", "noise"], p=[0.4, 0.25, 0.15, 0.2])
    col = np.broadcast_to(base, (canvas.H, canvas.W, 3)).astype(np.float32)
    if kind in ("stripes", "checks"):
        other = _random_colour(rng)
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(0.04, 0.15) * s
        u = (np.cos(ang) * X + np.sin(ang) * Y) / period
        on = (np.floor(u) % 2).astype(bool)
        if kind == "checks":
            v = (-np.sin(ang) * X + np.cos(ang) * Y) / period
            on ^= (np.floor(v) % 2).astype(bool)
        col = np.where(on[..., None], other, col)
    elif kind == "noise":
        cells = int(rng.integers(4, 16))
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        n = np.asarray(Image.fromarray(grid, mode="F").resize((canvas.W, canvas.H), Image.BICUBIC))
        col = col * (1.0 + 0.35 * n[..., None])
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * X + np.sin(ang) * Y - (np.cos(ang) * frame.centre[0] + np.sin(ang) * frame.centre[1])) / s
    return np.clip(col * (1.0 + rng.uniform(0.0, 0.35) * ramp[..., None]), 0.0, 1.0).astype(np.float32)


def _place_alpha(canvas: _Canvas, alpha: np.ndarray, ref: tuple[float, float], anchor: np.ndarray,
                 height_px: float, angle: float) -> np.ndarray:
    """Coverage (H, W) of a source alpha (h, w) scaled to ``height_px`` low-res pixels tall,
    rotated counter-clockwise (on screen) by ``angle`` radians, with its point ``ref``
    (fractions of width, height) on ``anchor`` (low-res pixels)."""
    k = canvas.k
    h, w = alpha.shape
    scale = height_px * k / h
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    im = Image.fromarray(np.clip(alpha * 255.0, 0, 255).astype(np.uint8), "L").resize((nw, nh), Image.BILINEAR)
    rot = im.rotate(math.degrees(angle), resample=Image.BILINEAR, expand=True)
    dx, dy = ref[0] * nw - nw / 2.0, ref[1] * nh - nh / 2.0
    c, s = math.cos(angle), math.sin(angle)
    rdx, rdy = dx * c + dy * s, -dx * s + dy * c  # screen-CCW rotation in y-down coordinates
    ax, ay = canvas.hi(anchor)[0]
    x0 = ax + 0.5 - rot.width / 2.0 - rdx
    y0 = ay + 0.5 - rot.height / 2.0 - rdy
    return canvas.paste(rot, int(round(x0)), int(round(y0)))


# -- the kinds ---------------------------------------------------------------------------------


def _procedural_hand(rng: np.random.Generator) -> np.ndarray:
    """(256, 200) alpha of a hand, fingers up, wrist at the bottom."""
    im = Image.new("L", (200, 256))
    d = ImageDraw.Draw(im)
    spread = rng.uniform(0.0, 0.25)
    d.rounded_rectangle([40, 120, 160, 235], radius=40, fill=255)   # palm
    d.rectangle([62, 200, 142, 256], fill=255)                      # wrist
    fingers = [(58, 0.78), (88, 0.95), (118, 0.9), (146, 0.72)]
    for i, (x, length) in enumerate(fingers):
        a = (i - 1.5) * spread * 0.5
        L = 110 * length
        x1, y1 = x + L * math.sin(a), 135 - L * math.cos(a)
        d.line([(x, 140), (x1, y1)], fill=255, width=26, joint="curve")
        d.ellipse([x1 - 13, y1 - 13, x1 + 13, y1 + 13], fill=255)
    t = rng.uniform(0.6, 1.1)  # thumb angle from vertical, radians, toward the left
    x1, y1 = 50 - 80 * math.sin(t), 190 - 80 * math.cos(t)
    d.line([(60, 195), (x1, y1)], fill=255, width=30, joint="curve")
    d.ellipse([x1 - 15, y1 - 15, x1 + 15, y1 + 15], fill=255)
    return np.asarray(im, np.float32) / 255.0


def _draw_hand(rng, canvas, frame, lib):
    anchors = frame.anchors()
    name = str(rng.choice(["mouth", "left_eye", "right_eye", "left_cheek", "right_cheek", "nose", "chin"],
                          p=[0.3, 0.12, 0.12, 0.13, 0.13, 0.1, 0.1]))
    anchor = anchors[name]
    if lib is not None and lib.hand_alpha is not None:
        alpha, ref, source = lib.hand_alpha, (0.55, 0.68), "hand.png"
    else:
        alpha, ref, source = _procedural_hand(rng), (0.5, 0.68), "procedural"
    if rng.random() < 0.5:  # left or right hand
        alpha, ref = alpha[:, ::-1], (1.0 - ref[0], ref[1])
    out = anchor - frame.centre
    n = np.linalg.norm(out)
    out = out / n if n > 0.08 * frame.size else -frame.up
    # fingers point opposite the wrist, the wrist away from the face centre (± 40°)
    fingers = -out
    angle = math.atan2(-fingers[0], -fingers[1]) + rng.normal(0.0, math.radians(30))
    anchor = anchor + rng.normal(0.0, 0.04 * frame.size, 2)
    cover = _place_alpha(canvas, alpha, ref, anchor, rng.uniform(0.6, 0.95) * frame.size, angle)
    skin = _SKIN[int(rng.integers(len(_SKIN)))] * rng.uniform(0.9, 1.05)
    X, Y = canvas.coords()
    light = rng.normal(size=2)
    light /= np.linalg.norm(light) + 1e-9
    ramp = ((X - anchor[0]) * light[0] + (Y - anchor[1]) * light[1]) / frame.size
    # soft edge darkening from the blurred silhouette reads as the hand's volume
    sigma = 0.03 * frame.size * canvas.k
    inner = np.zeros_like(cover)
    rows, cols = np.flatnonzero(cover.any(1)), np.flatnonzero(cover.any(0))
    if len(rows):
        pad = int(3 * sigma) + 1
        sl = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
        inner[sl] = ndimage.gaussian_filter(cover[sl], sigma=sigma)
    shade = (0.9 + 0.25 * ramp) * (0.75 + 0.25 * np.clip(inner * 1.6, 0, 1))
    canvas.add(cover, np.clip(skin * shade[..., None], 0, 1))
    return anchor, source


def _procedural_fabric(rng: np.random.Generator) -> np.ndarray:
    """(120, 240, 3) sRGB pleated surgical-mask fabric."""
    base = [np.array([0.55, 0.75, 0.9]), np.array([0.93, 0.93, 0.93]), np.array([0.12, 0.12, 0.13]),
            np.array([0.5, 0.75, 0.65]), np.array([0.95, 0.8, 0.85])][int(rng.integers(5))]
    h, w = 120, 240
    y = np.arange(h)[:, None] / h
    tex = np.broadcast_to(base * rng.uniform(0.9, 1.05), (h, w, 3)).copy()
    for c in (0.33, 0.5, 0.67):  # pleats: a dark fold line with a light ridge above
        tex *= (1.0 - 0.25 * np.exp(-((y - c) / 0.012) ** 2))[..., None]
        tex *= (1.0 + 0.08 * np.exp(-((y - c + 0.03) / 0.02) ** 2))[..., None]
    tex *= (1.0 + 0.04 * rng.standard_normal((h, w)))[..., None]
    return np.clip(tex, 0, 1).astype(np.float32)


def _draw_medical_mask(rng, canvas, frame, lib):
    p, up, s = frame.points, frame.up, frame.size
    under_l = 0.5 * (p[40] + p[41]) - up * rng.uniform(0.06, 0.09) * s
    under_r = 0.5 * (p[46] + p[47]) - up * rng.uniform(0.06, 0.09) * s
    nose = p[29] + up * rng.uniform(-0.01, 0.02) * s
    top = np.stack([0.6 * p[1] + 0.4 * p[2], under_l, nose, under_r, 0.6 * p[15] + 0.4 * p[14]])
    # the lower edge follows the jaw, a little outside it and below the chin
    jaw = p[3:14].copy()
    jaw += (jaw - frame.centre) * 0.04 - up * 0.03 * s
    cols = 17
    top_r, bot_r = _resample(top, cols), _resample(jaw, cols)
    rows = 7
    v = np.linspace(0, 1, rows)[:, None, None]
    grid = (1 - v) * top_r[None] + v * bot_r[None]
    if lib is not None and lib.mask_textures and rng.random() < 0.75:
        i = int(rng.integers(len(lib.mask_textures)))
        tex, source = lib.mask_textures[i], lib.mask_names[i]
    else:
        tex, source = _procedural_fabric(rng), "procedural"
    th, tw = tex.shape[:2]
    u = np.linspace(0, 1, tw)[None, :]
    vv = np.linspace(0, 1, th)[:, None]
    tex = tex * ((0.8 + 0.2 * np.sin(np.pi * u)) * (1.0 - 0.12 * vv))[..., None]  # curvature shading
    col, cover = _warp_grid(canvas, tex.astype(np.float32), grid)
    canvas.add(cover, np.clip(col, 0, 1))
    # ear loops from the corners toward the ears
    loop_col = np.clip(tex[th // 2, 2] * 1.1, 0, 1)
    width = max(1, int(round(0.012 * s * canvas.k)))
    for corner_t, corner_b, ear in ((top_r[0], bot_r[0], p[0]), (top_r[-1], bot_r[-1], p[16])):
        ear = ear + (ear - frame.centre) * 0.08
        cov = canvas.shape(lambda d: d.line(canvas.hi(np.stack([corner_t, ear, corner_b])), fill=255, width=width,
                                            joint="curve"))
        canvas.add(cov, loop_col)
    return p[30].copy(), source


def _lens_geometry(frame: FaceFrame, rng: np.random.Generator) -> tuple[list, float]:
    p, s = frame.points, frame.size
    hh = rng.uniform(0.085, 0.12) * s
    n = rng.uniform(2.0, 4.0)
    widen = rng.uniform(1.55, 1.85)
    lenses = []
    for a, b in ((36, 39), (42, 45)):
        c = p[a:a + 6].mean(0) + frame.up * rng.uniform(-0.005, 0.02) * s
        axis = p[b] - p[a]
        width = np.linalg.norm(axis)
        axis = axis / width if width > 1e-6 else frame.right
        rx = max(0.5 * width * widen, 0.04 * s)
        lenses.append((c, axis, rx, _superellipse(c, axis, -frame.up * 1.0, rx, hh, n)))
    return lenses, hh


def _draw_glasses(rng, canvas, frame, lib, sun: bool):
    p, s = frame.points, frame.size
    lenses, hh = _lens_geometry(frame, rng)
    frame_col = _random_colour(rng) * (0.4 if sun else 1.0)
    fw = max(1, int(round((rng.uniform(0.02, 0.035) if sun else rng.uniform(0.01, 0.022)) * s * canvas.k)))
    X, Y = canvas.coords()
    for c, axis, rx, poly in lenses:
        cov = canvas.shape(lambda d: d.polygon(canvas.hi(poly), fill=255))
        ramp = np.clip(((X - c[0]) * frame.up[0] + (Y - c[1]) * frame.up[1]) / (2 * hh) + 0.5, 0, 1)
        if sun:
            tint = np.array([[0.05, 0.05, 0.05], [0.18, 0.12, 0.06], [0.06, 0.12, 0.08],
                             [0.05, 0.08, 0.18]][int(rng.integers(4))])
            col = tint[None, None] * (0.6 + 0.8 * (1 - ramp))[..., None]
            canvas.add(cov, np.clip(col, 0, 1), opacity=rng.uniform(0.88, 0.97))
        else:
            canvas.add(cov, np.array([0.85, 0.9, 0.95]), opacity=rng.uniform(0.06, 0.15))
        # a reflection streak across the lens
        d = np.array([math.cos(rng.uniform(0.5, 1.1)), -math.sin(rng.uniform(0.5, 1.1))])
        band = np.abs((X - c[0]) * d[1] - (Y - c[1]) * d[0] - rng.uniform(-0.5, 0.5) * rx) < 0.15 * rx
        canvas.add(cov * band, np.ones(3), opacity=0.25 if sun else 0.18)
        canvas.add(canvas.shape(lambda d_: d_.line(canvas.hi(np.vstack([poly, poly[:1]])), fill=255, width=fw,
                                                   joint="curve")), frame_col)
    (cl, al, rl, _), (cr, ar, rr, _) = lenses
    inner_l, inner_r = cl + al * rl, cr - ar * rr
    bridge = np.stack([inner_l, 0.5 * (inner_l + inner_r) + frame.up * 0.35 * hh, inner_r])
    outer_l, outer_r = cl - al * rl, cr + ar * rr
    temples = [np.stack([outer_l, p[0] + (p[0] - frame.centre) * 0.05]),
               np.stack([outer_r, p[16] + (p[16] - frame.centre) * 0.05])]
    for line in [bridge] + temples:
        canvas.add(canvas.shape(lambda d: d.line(canvas.hi(line), fill=255, width=fw, joint="curve")), frame_col)
    return 0.5 * (cl + cr), "procedural"


def _draw_scarf(rng, canvas, frame, lib):
    p, up, right, s = frame.points, frame.up, frame.right, frame.size
    anchors = frame.anchors()
    if rng.random() < 0.3:  # pulled up over the nose
        level = p[30] + (anchors["mouth"] - p[30]) * rng.uniform(0.0, 0.4)
    else:
        level = anchors["mouth"] + (p[8] - anchors["mouth"]) * rng.uniform(0.0, 0.8)
    rel = (p[:17] - level) @ right
    half = 0.5 * np.ptp(rel) * rng.uniform(1.15, 1.4)
    mid = level + right * (0.5 * (rel.max() + rel.min()))
    cols, rows = 15, 5
    x = np.linspace(-1, 1, cols)
    sag = rng.uniform(0.02, 0.07) * s
    wave = rng.uniform(0, 0.02) * s * np.sin(x * rng.uniform(3, 8) + rng.uniform(0, 6))
    top = mid[None] + (x * half)[:, None] * right[None] + (sag * (1 - x ** 2) * -1 + wave + sag)[:, None] * up[None]
    depth = rng.uniform(0.9, 1.4) * s
    v = np.linspace(0, 1, rows)[:, None, None]
    grid = top[None] - v * depth * up[None, None] + (v * x[None, :, None] * 0.15 * half) * right[None, None]
    # texture: stripes (knit), plaid or solid, with vertical folds
    th, tw = 100, 200
    yy, xx = np.mgrid[0:th, 0:tw] / np.array(th, np.float32)
    base, other = _random_colour(rng), _random_colour(rng)
    style = rng.choice(["stripes", "plaid", "solid"])
    tex = np.broadcast_to(base, (th, tw, 3)).copy()
    if style == "stripes":
        tex[(np.floor(yy / rng.uniform(0.06, 0.2)) % 2).astype(bool)] = other
    elif style == "plaid":
        per = rng.uniform(0.08, 0.2)
        on = ((np.floor(yy / per) % 2) + (np.floor(xx / per) % 2)) / 2.0
        tex = tex * (1 - 0.5 * on[..., None]) + other * 0.5 * on[..., None]
    folds = 0.85 + 0.15 * np.sin(xx * rng.uniform(8, 20) + rng.uniform(0, 6) + 2 * np.sin(yy * 5))
    knit = 1.0 + 0.05 * np.sin(xx * 2 * np.pi * 60) * np.sin(yy * 2 * np.pi * 30)
    tex = np.clip(tex * (folds * knit)[..., None], 0, 1).astype(np.float32)
    col, cover = _warp_grid(canvas, tex, grid)
    canvas.add(cover, col)
    return level.copy(), "procedural"


def _draw_cup(rng, canvas, frame, lib):
    up, right, s = frame.up, frame.right, frame.size
    mouth = frame.anchors()["mouth"]
    H = rng.uniform(0.45, 0.7) * s
    W = H * rng.uniform(0.55, 0.8)
    ang = rng.normal(0.0, math.radians(12))
    ca, sa = math.cos(ang), math.sin(ang)
    ax = right * ca + up * sa          # cup's horizontal axis
    ay = -right * sa + up * ca         # cup's up axis
    top_c = mouth + right * rng.uniform(-0.2, 0.2) * s + up * rng.uniform(-0.08, 0.12) * s
    taper = rng.uniform(0.75, 0.95)
    corners = [top_c - ax * W / 2, top_c + ax * W / 2, top_c + ax * W * taper / 2 - ay * H,
               top_c - ax * W * taper / 2 - ay * H]
    X, Y = canvas.coords()
    base = _random_colour(rng)
    side = 1.0 if rng.random() < 0.5 else -1.0
    # handle: a thick arc on one side
    hc = top_c + side * ax * W * 0.5 - ay * H * 0.45
    t = np.linspace(-np.pi / 2, np.pi / 2, 20)
    arc = hc[None] + (np.cos(t) * 0.25 * H * side)[:, None] * ax[None] + (np.sin(t) * 0.27 * H)[:, None] * ay[None]
    hw = max(1, int(round(0.07 * H * canvas.k)))
    canvas.add(canvas.shape(lambda d: d.line(canvas.hi(arc), fill=255, width=hw, joint="curve")),
               np.clip(base * 0.85, 0, 1))
    body = canvas.shape(lambda d: d.polygon(canvas.hi(np.stack(corners)), fill=255))
    u = ((X - top_c[0]) * ax[0] + (Y - top_c[1]) * ax[1]) / (W / 2)
    shade = 0.55 + 0.45 * np.cos(np.clip(u - rng.uniform(-0.4, 0.4), -1.6, 1.6))
    col = base * shade[..., None]
    if rng.random() < 0.4:  # a printed band
        v = ((X - top_c[0]) * ay[0] + (Y - top_c[1]) * ay[1]) / H
        lo = -rng.uniform(0.3, 0.6)
        col = np.where(((v < lo) & (v > lo - 0.25))[..., None], _random_colour(rng) * shade[..., None], col)
    canvas.add(body, np.clip(col, 0, 1))
    rim = _superellipse(top_c, ax, ay, W / 2, 0.07 * W, 2.0)
    canvas.add(canvas.shape(lambda d: d.polygon(canvas.hi(rim), fill=255)), np.clip(base * 0.35 + 0.05, 0, 1))
    canvas.add(canvas.shape(lambda d: d.line(canvas.hi(np.vstack([rim, rim[:1]])), fill=255,
                                             width=max(1, int(0.015 * W * canvas.k)))), np.clip(base * 1.1, 0, 1))
    return top_c.copy(), "procedural"


def _random_anchor(rng: np.random.Generator, frame: FaceFrame) -> np.ndarray:
    if rng.random() < 0.6:
        a = list(frame.anchors().values())
        return a[int(rng.integers(len(a)))] + rng.normal(0, 0.06 * frame.size, 2)
    i, j, k = rng.choice(68, 3, replace=False)
    w = rng.dirichlet(np.ones(3))
    return w[0] * frame.points[i] + w[1] * frame.points[j] + w[2] * frame.points[k]


def _draw_rectangle(rng, canvas, frame, lib):
    """C2F §III-A / §IV-A: area ratio a ~ U(0.01, 0.15) of the image, aspect w/h in [0.5, 2],
    one colour drawn freely in RGB, axis-aligned; centred on a random point of the face."""
    c = _random_anchor(rng, frame)
    area = rng.uniform(*RECT_AREA_RATIO) * canvas.h * canvas.w
    aspect = math.exp(rng.uniform(math.log(RECT_ASPECT[0]), math.log(RECT_ASPECT[1])))
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    # edges on pixel boundaries, so the binary mask has exactly the drawn area (up to rounding)
    x0, y0 = int(round(c[0] - w / 2 + 0.5)), int(round(c[1] - h / 2 + 0.5))
    x1, y1 = x0 + max(1, int(round(w))), y0 + max(1, int(round(h)))
    k = canvas.k
    cov = canvas.shape(lambda d: d.rectangle([x0 * k, y0 * k, x1 * k - 1, y1 * k - 1], fill=255))
    canvas.add(cov, rng.uniform(0.0, 1.0, 3).astype(np.float32))
    return c, "procedural"


def _draw_ellipse(rng, canvas, frame, lib):
    s = frame.size
    c = _random_anchor(rng, frame)
    rx, ry = rng.uniform(0.08, 0.3, 2) * s
    ang = rng.uniform(0, np.pi)
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    r = np.ones_like(t)
    if rng.random() < 0.5:  # irregular blob
        for k in (2, 3, 4, 5):
            r += rng.uniform(0, 0.12) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    pts = c + np.stack([x * math.cos(ang) - y * math.sin(ang), x * math.sin(ang) + y * math.cos(ang)], 1)
    cov = canvas.shape(lambda d: d.polygon(canvas.hi(pts), fill=255))
    canvas.add(cov, _pattern(rng, canvas, frame, _random_colour(rng)))
    return c, "procedural"


def _draw_text(rng, canvas, frame, lib):
    """C2F §III-A / §IV-A: one word, line height h ~ U(0.05, 0.5) of the image height whatever
    the word's length, one colour drawn freely in RGB; centred on a random point of the face,
    along the face's horizontal."""
    c = _random_anchor(rng, frame)
    word = _WORDS[int(rng.integers(len(_WORDS)))]
    height = rng.uniform(*TEXT_HEIGHT_RATIO) * canvas.h * canvas.k  # high-res pixels
    # the line height is the ascender-to-descender box of "Hg" at the chosen size
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    ref = ImageFont.load_default(size=100)
    _, t0, _, t1 = probe.textbbox((0, 0), "Hg", font=ref)
    px = max(4, int(round(100.0 * height / max(t1 - t0, 1))))
    font = ImageFont.load_default(size=px)
    x0, y0, x1, y1 = probe.textbbox((0, 0), word, font=font)
    _, r0, _, r1 = probe.textbbox((0, 0), "Hg", font=font)
    top, bottom = min(y0, r0), max(y1, r1)
    im = Image.new("L", (x1 - x0 + 4, bottom - top + 4))
    ImageDraw.Draw(im).text((2 - x0, 2 - top), word, font=font, fill=255)
    if rng.random() < 0.4:  # bold look: thicken the glyphs
        im = Image.fromarray(ndimage.grey_dilation(np.asarray(im), size=(3, 3)))
    alpha = np.asarray(im, np.float32) / 255.0
    cover = _place_alpha(canvas, alpha, (0.5, 0.5), c, alpha.shape[0] / canvas.k, frame.angle())
    canvas.add(cover, rng.uniform(0.0, 1.0, 3).astype(np.float32))
    return c, "procedural"


def _held_object_pose(rng, frame, places, probs):
    """Centre and (x, y) unit axes of an object held up in front of the face at one of the
    named ``places`` (anchors of :meth:`FaceFrame.anchors`), tilted up to ±25° from the face."""
    anchors = frame.anchors()
    name = str(rng.choice(places, p=probs))
    centre = anchors[name] + rng.normal(0.0, 0.05 * frame.size, 2)
    ang = rng.normal(0.0, math.radians(12)) + (rng.uniform(-0.45, 0.45) if rng.random() < 0.5 else 0.0)
    ca, sa = math.cos(ang), math.sin(ang)
    ax = frame.right * ca + frame.up * sa
    ay = -frame.right * sa + frame.up * ca  # object's up (image vector)
    return centre, ax, ay


def _draw_book(rng, canvas, frame, lib):
    """A closed hardback: cover with title bands, spine shading and page edges."""
    s = frame.size
    centre, ax, ay = _held_object_pose(rng, frame, ["mouth", "chin", "nose", "left_cheek", "right_cheek",
                                                    "left_eye", "right_eye"],
                                       [0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1])
    H = rng.uniform(0.6, 1.1) * s
    W = H * rng.uniform(0.62, 0.8)
    if rng.random() < 0.3:  # held sideways
        W, H = H, W
    pages = rng.uniform(0.03, 0.06) * s
    corners = lambda c, w, h: np.stack([c - ax * w / 2 + ay * h / 2, c + ax * w / 2 + ay * h / 2,  # noqa: E731
                                        c + ax * w / 2 - ay * h / 2, c - ax * w / 2 - ay * h / 2])
    side = 1.0 if rng.random() < 0.5 else -1.0
    # page block: offset toward one side and down, seen past the cover's edge
    block = corners(centre + ax * side * pages * 0.6 - ay * pages * 0.4, W, H)
    X, Y = canvas.coords()
    u = (X - centre[0]) * ax[0] + (Y - centre[1]) * ax[1]
    v = (X - centre[0]) * ay[0] + (Y - centre[1]) * ay[1]
    lines = 0.85 + 0.1 * np.cos(2 * np.pi * u / max(0.004 * s, 0.3))[..., None]  # fine page lines
    canvas.add(canvas.shape(lambda d: d.polygon(canvas.hi(block), fill=255)),
               np.clip(np.array([0.95, 0.93, 0.86], np.float32) * lines, 0, 1))
    base = _random_colour(rng)
    cover_col = np.broadcast_to(base, (canvas.H, canvas.W, 3)).astype(np.float32)
    spine = np.clip(1.0 - 0.35 * np.exp(-((u + side * W / 2) / (0.06 * W)) ** 2), 0, 1)  # hinge shadow
    cover_col = cover_col * spine[..., None]
    accent = _random_colour(rng)
    for _ in range(int(rng.integers(1, 4))):  # title / author bands
        v0 = rng.uniform(-0.3, 0.4) * H
        band = (np.abs(v - v0) < rng.uniform(0.03, 0.09) * H) & (np.abs(u) < rng.uniform(0.25, 0.42) * W)
        cover_col = np.where(band[..., None], accent, cover_col)
    ramp = (u * 0.6 + v * 0.4) / max(W, H)
    cover_col = np.clip(cover_col * (1.0 + rng.uniform(0.0, 0.3) * ramp[..., None]), 0, 1)
    canvas.add(canvas.shape(lambda d: d.polygon(canvas.hi(corners(centre, W, H)), fill=255)), cover_col)
    return centre.copy(), "procedural"


def _draw_phone(rng, canvas, frame, lib):
    """A smartphone: rounded dark body, bezel and a lit screen (wallpaper gradient or app grid)."""
    s = frame.size
    centre, ax, ay = _held_object_pose(rng, frame, ["left_cheek", "right_cheek", "mouth", "nose", "left_eye",
                                                    "right_eye", "chin"],
                                       [0.25, 0.25, 0.15, 0.1, 0.08, 0.08, 0.09])
    H = rng.uniform(0.45, 0.75) * s
    W = H * rng.uniform(0.46, 0.55)
    if rng.random() < 0.25:  # landscape, e.g. taking a photo
        ax, ay = ay, -ax
    body = _superellipse(centre, ax, ay, W / 2, H / 2, rng.uniform(6.0, 12.0), 96)
    body_col = np.array([[0.05, 0.05, 0.06], [0.85, 0.85, 0.87], [0.75, 0.62, 0.5], [0.15, 0.2, 0.35],
                         [0.6, 0.1, 0.15]], np.float32)[int(rng.integers(5))]
    canvas.add(canvas.shape(lambda d: d.polygon(canvas.hi(body), fill=255)), body_col)
    bezel = rng.uniform(0.03, 0.07)
    sw, sh = W / 2 * (1 - 2 * bezel), H / 2 * (1 - bezel * W / H * 2 - 0.02)
    screen = _superellipse(centre, ax, ay, sw, sh, 10.0, 96)
    X, Y = canvas.coords()
    u = ((X - centre[0]) * ax[0] + (Y - centre[1]) * ax[1]) / sw
    v = ((X - centre[0]) * ay[0] + (Y - centre[1]) * ay[1]) / sh
    if rng.random() < 0.3:  # screen off: dark glass with a reflection streak
        col = np.full((canvas.H, canvas.W, 3), 0.04, np.float32)
        col = col + 0.12 * np.exp(-((u + v - rng.uniform(-0.5, 0.5)) / 0.3) ** 2)[..., None]
    else:
        c0, c1 = rng.uniform(0.1, 0.95, 3), rng.uniform(0.1, 0.95, 3)
        t = np.clip(0.5 + 0.5 * v, 0, 1)[..., None]
        col = (c0 * t + c1 * (1 - t)).astype(np.float32)
        if rng.random() < 0.6:  # app icons: a 4 × 5 grid of rounded squares
            gu, gv = (u + 1) / 2 * 4, (1 - v) / 2 * 6
            inside = (np.abs(gu - np.floor(gu) - 0.5) < 0.3) & (np.abs(gv - np.floor(gv) - 0.5) < 0.3) & \
                     (gv >= 0.4) & (gv < 5.4)
            icons = rng.uniform(0.1, 1.0, (4, 7, 3)).astype(np.float32)
            iu = np.clip(np.floor(gu), 0, 3).astype(int)
            iv = np.clip(np.floor(gv), 0, 6).astype(int)
            col = np.where(inside[..., None], icons[iu, iv], col)
    canvas.add(canvas.shape(lambda d: d.polygon(canvas.hi(screen), fill=255)), np.clip(col, 0, 1))
    return centre.copy(), "procedural"


_DRAW = {
    "hand": _draw_hand,
    "medical_mask": _draw_medical_mask,
    "sunglasses": lambda rng, c, f, lib: _draw_glasses(rng, c, f, lib, sun=True),
    "glasses": lambda rng, c, f, lib: _draw_glasses(rng, c, f, lib, sun=False),
    "scarf": _draw_scarf,
    "cup": _draw_cup,
    "rectangle": _draw_rectangle,
    "ellipse": _draw_ellipse,
    "text": _draw_text,
    "book": _draw_book,
    "phone": _draw_phone,
}


# -- public API --------------------------------------------------------------------------------


@dataclass
class OcclusionResult:
    """Output of :func:`occlude`.

    * ``image``: the occluded image, same type, layout and dtype as the input.
    * ``mask`` (H, W) float32 in [0, 1]: the exact alpha of the occluder
      (``image = input · (1 − mask) + colour · mask``; 0 = untouched pixel).
    * ``kind``: one of :data:`OCCLUDER_KINDS`; ``source``: "procedural" or the file used.
    * ``bbox``: (x0, y0, x1, y1) pixel bounds of ``mask > 0`` (x1, y1 exclusive), or all 0
      when the occluder fell outside the image.
    * ``anchor``: (2,) the landmark-derived point the occluder was placed at, px.
    * ``layer``: (H, W, 3) float32 the occluder's colour premultiplied by ``mask``, so
      ``image = input · (1 − mask) + layer`` (and ``layer / mask`` its own colour where mask > 0);
      lets a caller re-composite with a binary mask.
    """

    image: ImageLike
    mask: np.ndarray
    kind: str
    bbox: tuple[int, int, int, int]
    anchor: np.ndarray
    source: str = "procedural"
    layer: Optional[np.ndarray] = None

    @property
    def coverage(self) -> float:
        """Mean alpha over the image."""
        return float(self.mask.mean())


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _to_hwc(image: ImageLike) -> tuple[np.ndarray, str]:
    """(H, W, 3) float32 in [0, 1] and the input's layout tag."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be (3, H, W), got {tuple(image.shape)}")
        return image.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy(), "torch"
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"a numpy image must be (H, W, 3), got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0, "uint8"
    return a.astype(np.float32), "float"


def occlude(image: ImageLike, landmarks: Union[np.ndarray, Tensor], kind: Optional[str] = None,
            rng: RngLike = None, library: Optional[OccluderLibrary] = None,
            kinds: Sequence[str] = OCCLUDER_KINDS, supersample: int = 4) -> OcclusionResult:
    """Paste one occluder on a face; see the module doc.

    Args:
        image: (3, H, W) tensor or (H, W, 3) numpy array (float sRGB in [0, 1], or uint8).
        landmarks: (68, 2) iBUG points in pixels of ``image``.
        kind: one of :data:`OCCLUDER_KINDS`; None draws one uniformly from ``kinds``.
        rng: numpy Generator (or seed); the result is a function of its state.
        library: file-based occluders (default: none — procedural shapes only).
        supersample: anti-aliasing factor of the drawn shapes.
    """
    rng = _as_rng(rng)
    if kind is None:
        if not kinds:
            raise ValueError("kinds is empty")
        kind = str(kinds[int(rng.integers(len(kinds)))])
    if kind not in _DRAW:
        raise ValueError(f"unknown occluder kind {kind!r}; use one of {', '.join(OCCLUDER_KINDS)}")
    lm = landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor) else np.asarray(landmarks)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise ValueError(f"landmarks must be finite (68, 2), got shape {lm.shape}")
    img, layout = _to_hwc(image)
    h, w = img.shape[:2]
    canvas = _Canvas(h, w, int(supersample))
    anchor, source = _DRAW[kind](rng, canvas, face_frame(lm), library)
    colour, alpha = canvas.resolve()
    a3 = alpha[..., None]
    out = np.where(a3 > 0, img * (1.0 - a3) + colour, img)
    ys, xs = np.nonzero(alpha > 0)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    if layout == "torch":
        t = image  # type: ignore[assignment]
        res_img: ImageLike = torch.where(torch.from_numpy(a3 > 0).permute(2, 0, 1).to(t.device),
                                         torch.from_numpy(out).permute(2, 0, 1).to(t.device, t.dtype), t)
    elif layout == "uint8":
        res_img = np.where(a3 > 0, np.clip(np.round(out * 255.0), 0, 255), np.asarray(image)).astype(np.uint8)
    else:
        res_img = np.where(a3 > 0, out, np.asarray(image)).astype(np.asarray(image).dtype)
    return OcclusionResult(res_img, alpha, kind, bbox, np.asarray(anchor, np.float64), source, colour)


class OccluderSampler:
    """Draws occluders with given kind weights; callable like :func:`occlude` without ``kind``.

    ``weights`` maps kinds to relative probabilities (default: uniform over
    :data:`OCCLUDER_KINDS`). ``library``: file occluders (default: :class:`OccluderLibrary`
    of the default folder, empty when it is absent).
    """

    def __init__(self, weights: Optional[dict[str, float]] = None, library: Optional[OccluderLibrary] = None,
                 supersample: int = 4) -> None:
        weights = weights or {k: 1.0 for k in OCCLUDER_KINDS}
        unknown = [k for k in weights if k not in _DRAW]
        if unknown:
            raise ValueError(f"unknown occluder kinds {unknown}; use {', '.join(OCCLUDER_KINDS)}")
        total = float(sum(weights.values()))
        if total <= 0 or any(v < 0 for v in weights.values()):
            raise ValueError("occluder weights must be non-negative with a positive sum")
        self.kinds = list(weights)
        self.p = np.array([weights[k] / total for k in self.kinds])
        self.library = library if library is not None else OccluderLibrary()
        self.supersample = supersample

    def __call__(self, image: ImageLike, landmarks: Union[np.ndarray, Tensor], rng: RngLike = None) -> OcclusionResult:
        rng = _as_rng(rng)
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.p))]
        return occlude(image, landmarks, kind, rng, self.library, supersample=self.supersample)


def occlude_batch(images: Tensor, landmarks: Tensor, rng: RngLike = None, kinds: Optional[Sequence[str]] = None,
                  library: Optional[OccluderLibrary] = None, prob: float = 1.0,
                  supersample: int = 4) -> tuple[Tensor, Tensor, list[str]]:
    """Occlude each image of a batch: images (B, 3, H, W), landmarks (B, 68, 2) →
    (occluded (B, 3, H, W), masks (B, 1, H, W) exact alpha, kinds (list of B str, "none"
    where no occluder was drawn, with probability 1 − ``prob``))."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if landmarks.shape != (images.shape[0], 68, 2):
        raise ValueError(f"landmarks must be (B, 68, 2) = ({images.shape[0]}, 68, 2), got {tuple(landmarks.shape)}")
    rng = _as_rng(rng)
    kinds = tuple(kinds) if kinds is not None else OCCLUDER_KINDS
    outs, masks, names = [], [], []
    for i in range(images.shape[0]):
        if rng.random() >= prob:
            outs.append(images[i])
            masks.append(torch.zeros_like(images[i, :1]))
            names.append("none")
            continue
        res = occlude(images[i], landmarks[i], None, rng, library, kinds, supersample)
        outs.append(res.image)
        masks.append(torch.from_numpy(res.mask)[None].to(images.device, images.dtype))
        names.append(res.kind)
    return torch.stack(outs), torch.stack(masks), names
