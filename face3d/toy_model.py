"""Small synthetic morphable models, for tests, examples and benchmarks.

A toy model is a face-like surface (a half-ellipsoid 150 mm wide with a nose bump)
with smooth random identity and expression bases. It has the full
:class:`~face3d.morphable_model.ModelArrays` content (68 landmark ids placed like
iBUG points, jaw contour lines, UVs), so every part of the toolkit can be exercised
without a licensed or downloaded model. It is *not* a face model for real photos.
"""
from __future__ import annotations

import math

import numpy as np

from face3d.morphable_model import ModelArrays

# Rough iBUG-68 positions on a unit frontal face: x ∈ [-1, 1] (viewer's right), y ∈ [-1, 1] (up).
def _ibug_layout() -> np.ndarray:
    pts = []
    for k in range(17):  # jaw: from the viewer's left ear, round the chin, to the right ear
        a = math.pi * (1.0 + k / 16.0)
        pts.append((0.92 * math.cos(a), 0.15 + 0.95 * math.sin(a)))
    for side in (-1, 1):  # brows 17-21 (viewer's left), 22-26
        xs = np.linspace(-0.75, -0.15, 5) if side < 0 else np.linspace(0.15, 0.75, 5)
        for x in xs:
            pts.append((x, 0.45 + 0.08 * math.cos((abs(x) - 0.45) * 4)))
    for y in np.linspace(0.3, -0.05, 4):  # nose bridge 27-30
        pts.append((0.0, y))
    for x in np.linspace(-0.2, 0.2, 5):  # nostrils 31-35
        pts.append((x, -0.15 + 0.05 * abs(x)))
    for cx in (-0.4, 0.4):  # eyes 36-41, 42-47
        for a in np.linspace(math.pi, -math.pi, 7)[:-1]:
            pts.append((cx + 0.17 * math.cos(a), 0.25 + 0.07 * math.sin(a)))
    for a in np.linspace(math.pi, -math.pi, 13)[:-1]:  # outer lip 48-59
        pts.append((0.38 * math.cos(a), -0.45 + 0.14 * math.sin(a)))
    for a in np.linspace(math.pi, -math.pi, 9)[:-1]:  # inner lip 60-67
        pts.append((0.28 * math.cos(a), -0.45 + 0.05 * math.sin(a)))
    return np.asarray(pts, np.float64)


def make_toy_model(seed: int = 0, grid: int = 36, n_id: int = 20, n_exp: int = 10,
                   n_albedo: int = 5) -> ModelArrays:
    """A deterministic toy model; see the module docstring. Units mm, frames as face3d."""
    rng = np.random.default_rng(seed)
    # Surface z = f(x, y) over an elliptic disc, sampled on a polar-ish grid so the rim
    # (the jaw silhouette) is a vertex line.
    rings, sectors = grid // 2, grid * 2
    uv = [(0.0, 0.0)]
    for i in range(1, rings + 1):
        r = i / rings
        for j in range(sectors):
            a = 2 * math.pi * j / sectors
            uv.append((r * math.cos(a), r * math.sin(a)))
    uv = np.asarray(uv)
    half_w, half_h, depth = 75.0, 100.0, 90.0
    x, y = uv[:, 0] * half_w, uv[:, 1] * half_h
    rr = np.clip(uv[:, 0] ** 2 + uv[:, 1] ** 2, 0, 1)
    z = depth * np.sqrt(1.0 - 0.97 * rr) + 25.0 * np.exp(-((uv[:, 0] / 0.12) ** 2 + ((uv[:, 1] + 0.05) / 0.2) ** 2))
    mean = np.stack([x, y, z - depth * 0.6], 1)

    tris = []
    for j in range(sectors):  # centre fan
        tris.append((0, 1 + j, 1 + (j + 1) % sectors))
    for i in range(rings - 1):
        a0, b0 = 1 + i * sectors, 1 + (i + 1) * sectors
        for j in range(sectors):
            j1 = (j + 1) % sectors
            tris.append((a0 + j, b0 + j, b0 + j1))
            tris.append((a0 + j, b0 + j1, a0 + j1))
    tris = np.asarray(tris, np.int64)
    # orient counter-clockwise seen from +z (outside)
    v0, v1, v2 = (mean[tris[:, k]] for k in range(3))
    flip = np.cross(v1 - v0, v2 - v0)[:, 2] < 0
    tris[flip] = tris[flip][:, ::-1]

    def smooth_basis(k: int, amp: float) -> np.ndarray:
        # low-frequency random fields: sums of a few Gaussian bumps per mode
        out = np.zeros((k, len(mean), 3))
        for m in range(k):
            for _ in range(3):
                c = rng.uniform(-0.8, 0.8, 2)
                s = rng.uniform(0.2, 0.5)
                w = np.exp(-(((uv - c) ** 2).sum(1)) / (2 * s * s))
                out[m] += w[:, None] * rng.normal(0, 1, 3)[None, :]
            out[m] /= np.abs(out[m]).max() + 1e-9
        return out * amp

    id_basis = smooth_basis(n_id, 1.0)
    id_std = (8.0 * 0.8 ** np.arange(n_id)).astype(np.float64)
    exp_basis = smooth_basis(n_exp, 1.0)
    exp_std = (5.0 * 0.8 ** np.arange(n_exp)).astype(np.float64)
    albedo_basis = smooth_basis(n_albedo, 1.0) * 0.5
    albedo_std = (0.1 * 0.7 ** np.arange(n_albedo)).astype(np.float64)
    albedo = np.tile(np.array([[0.72, 0.53, 0.44]]), (len(mean), 1))

    layout = _ibug_layout()
    layout_scaled = layout * np.array([0.85, 0.85])
    lm = np.array([int(np.argmin(((uv - p) ** 2).sum(1))) for p in layout_scaled])
    # contour lines: for each jaw landmark, vertices of its sector from the landmark out to the rim
    contour = []
    for k in range(17):
        a = math.atan2(uv[lm[k], 1], uv[lm[k], 0])
        j = int(round(a / (2 * math.pi) * sectors)) % sectors
        ring0 = max(1, int(round(math.hypot(*uv[lm[k]]) * rings)))
        contour.append([1 + (i - 1) * sectors + j for i in range(ring0, rings + 1)])
    width = max(len(c) for c in contour)
    contour = np.array([c + [-1] * (width - len(c)) for c in contour], np.int64)
    contour[:, 0] = lm[:17]

    uvs = (uv * 0.5 + 0.5).clip(0, 1)
    return ModelArrays(
        mean_shape=mean, id_basis=id_basis, id_std=id_std, exp_basis=exp_basis, exp_std=exp_std,
        mean_albedo=albedo, albedo_basis=albedo_basis, albedo_std=albedo_std,
        triangles=tris, uvs=uvs, uv_triangles=tris.copy(), landmark_ids=lm, contour_lines=contour,
        meta={"name": "toy", "licence": "CC0 (generated)", "source": "face3d.toy_model.make_toy_model",
              "source_sha256": "", "units": "mm", "expression_kind": "pca"},
    )
