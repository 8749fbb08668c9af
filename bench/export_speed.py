"""Time face3d.export on a 30k-vertex, 60k-triangle textured mesh with normals.

Prints the wall time of each format (best of 3) and ends with the OBJ time, the slowest
writer, as ``export_obj_30k_ms VALUE ms``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from face3d.export import MeshData, export_mesh


def _grid_mesh(side: int = 174) -> MeshData:
    """A bumpy height field on a side × side grid (~30k vertices), UVs one per vertex."""
    u, v = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side))
    z = 10 * np.sin(6 * u) * np.cos(4 * v)
    verts = np.stack([u * 150 - 75, v * 200 - 100, z], -1).reshape(-1, 3)
    idx = np.arange(side * side).reshape(side, side)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    tris = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    rng = np.random.default_rng(0)
    normals = rng.normal(size=verts.shape)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    texture = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    uvs = np.stack([u, v], -1).reshape(-1, 2)
    return MeshData(verts, tris, normals=normals, uvs=uvs, uv_triangles=tris, texture=texture)


def main() -> None:
    mesh = _grid_mesh()
    print(f"mesh: {len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles, texture 1024x1024")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ext in (".obj", ".ply", ".glb"):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                export_mesh(Path(tmp) / f"bench{ext}", mesh)
                best = min(best, time.perf_counter() - t0)
            times[ext] = best * 1e3
            size = sum(p.stat().st_size for p in Path(tmp).glob("bench*"))
            print(f"{ext}: {times[ext]:.1f} ms (files so far {size / 1e6:.1f} MB)")
    print(f"export_obj_30k_ms {times['.obj']:.1f} ms")


if __name__ == "__main__":
    main()
