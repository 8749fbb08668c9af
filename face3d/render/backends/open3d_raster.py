"""Open3D ray-casting backend (``pip install open3d``; on Debian its import needs libusb-1.0-0).

One ray per pixel centre through :class:`open3d.t.geometry.RaycastingScene` (Embree BVH,
multi-threaded). The rays are cast in a space built from the screen-space vertices so
that the result is exact for both projections:

* perspective: vertex (x_px, y_px, z) ↦ (x_px·z, y_px·z, z). This is a *linear* map of the
  camera frame (x_px·z = f_x·X + c_x·Z, …), so triangles stay planar triangles, and the
  ray from the origin with direction (u, v, 1) meets a triangle exactly where the camera
  ray through pixel (u, v) does, at parameter t = z. Nothing about the intrinsics is needed.
* orthographic: the vertices as they are; rays (u, v, z_min − 1) + t·(0, 0, 1).

Open3D reports the nearest hit with t > 0, on either face side (no culling).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

from face3d.render.rasterizer import Rasterizer


class Open3DRasterizer(Rasterizer):
    """Visibility by Open3D ray casting; see the module doc. ``threads`` = 0 uses all cores."""

    name = "open3d"

    def __init__(self, threads: int = 0) -> None:
        self.threads = int(threads)
        self._rays: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def is_available(cls) -> bool:
        if importlib.util.find_spec("open3d") is None:
            return False
        try:
            import open3d  # noqa: F401  (fails without libusb-1.0 on some systems)
        except (ImportError, OSError):
            return False
        return True

    @classmethod
    def install_hint(cls) -> str:
        return "pip install open3d; on Debian/Ubuntu also apt-get install libusb-1.0-0"

    def _pixel_grid(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._rays:
            v, u = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
            self._rays[key] = np.stack([u.ravel(), v.ravel()], 1)
        return self._rays[key]

    def triangle_ids(self, screen_vertices: Tensor, triangles: Tensor, height: int, width: int,
                     perspective: bool = True) -> Tensor:
        import open3d as o3d

        b = screen_vertices.shape[0]
        sv = screen_vertices.to(torch.float32).cpu().numpy()
        tris = o3d.core.Tensor(triangles.cpu().numpy().astype(np.uint32))
        uv = self._pixel_grid(height, width)
        rays = np.zeros((uv.shape[0], 6), np.float32)
        out = np.full((b, height * width), -1, np.int64)
        for i in range(b):
            verts = sv[i].copy()
            if perspective:
                verts[:, :2] *= verts[:, 2:3]
                rays[:, 3:5] = uv
                rays[:, 5] = 1.0
            else:
                rays[:, :2] = uv
                rays[:, 2] = float(verts[:, 2].min()) - 1.0
                rays[:, 5] = 1.0
            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(o3d.core.Tensor(verts), tris)
            hit = scene.cast_rays(o3d.core.Tensor(rays), nthreads=self.threads)
            prim = hit["primitive_ids"].numpy().astype(np.int64)
            valid = np.isfinite(hit["t_hit"].numpy())
            out[i] = np.where(valid, prim, -1)
        return torch.from_numpy(out).to(screen_vertices.device).view(b, height, width)
