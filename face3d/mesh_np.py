"""NumPy mesh helpers shared by the model converters and the exporters (no torch).

* :func:`face_normals`, :func:`vertex_normals_np` — area-weighted normals of CCW triangles
  (the numpy twin of :func:`face3d.camera.vertex_normals`, for code that runs on arrays);
* :func:`sample_uv_bilinear` — bilinear texture lookup at OBJ-convention UVs.

UVs follow the OBJ convention: u right, v **up**, (0, 0) at the bottom-left corner of the
image; texel (i, j) covers [j, j+1) × [i, i+1) in pixels, row 0 being the top (v = 1).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["face_normals", "vertex_normals_np", "sample_uv_bilinear"]


def face_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unnormalised face normals (F, 3) (length = 2 × area) of CCW triangles."""
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    return np.cross(v1 - v0, v2 - v0)


def vertex_normals_np(vertices: np.ndarray, triangles: np.ndarray,
                      isolated: Optional[Sequence[float]] = None) -> np.ndarray:
    """Area-weighted unit vertex normals (N, 3) float64.

    ``isolated``: the normal given to vertices with no triangle area around them (unused or
    only in degenerate triangles); None leaves them zero. glTF needs a unit normal
    everywhere, so the exporter passes (0, 0, 1).
    """
    fn = face_normals(vertices, triangles)
    n = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    out = n / np.maximum(length, 1e-12)
    if isolated is not None:
        out = np.where(length > 1e-12, out, np.asarray(isolated, dtype=np.float64))
    return out


def sample_uv_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``image`` (H, W) or (H, W, C) at UVs (M, 2); returns (M,) or (M, C)
    float64 in the image's value range. Coordinates outside the image clamp to the edge."""
    t = np.asarray(image, dtype=np.float64)
    h, w = t.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0.0, h - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    if t.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bottom = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
