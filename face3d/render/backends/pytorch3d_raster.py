"""PyTorch3D backend, for users who already have PyTorch3D (it has no PyPI build; never required).

Uses ``pytorch3d.renderer.mesh.rasterize_meshes`` on vertices mapped from the toolkit's
screen space to PyTorch3D's NDC (+x left, +y up; the shorter image side spans [-1, 1]):
for pixel column x of an image W wide, ``x_ndc = (W − 1 − 2x) / S`` with S = min(H, W)
(likewise y with H), which puts pixel centres where PyTorch3D samples them. z stays the
depth in mm. Only ``pix_to_face`` is kept; barycentrics and depth are recomputed by the
caller like for every backend. Written against PyTorch3D's documented API and not
exercised by this project's tests (PyTorch3D cannot be installed here).
"""
from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from face3d.render.rasterizer import Rasterizer


class PyTorch3DRasterizer(Rasterizer):
    """Visibility by PyTorch3D's ``rasterize_meshes`` (CPU or CUDA); see the module doc."""

    name = "pytorch3d"

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("pytorch3d") is not None

    @classmethod
    def install_hint(cls) -> str:
        return "install PyTorch3D following its own instructions; it is not on PyPI"

    def triangle_ids(self, screen_vertices: Tensor, triangles: Tensor, height: int, width: int,
                     perspective: bool = True) -> Tensor:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes

        b = screen_vertices.shape[0]
        s = float(min(height, width))
        x, y, z = screen_vertices.to(torch.float32).unbind(-1)
        ndc = torch.stack([(width - 1 - 2.0 * x) / s, (height - 1 - 2.0 * y) / s, z], -1)
        meshes = Meshes(verts=list(ndc), faces=[triangles] * b)
        pix_to_face, _, _, _ = rasterize_meshes(
            meshes, image_size=(height, width), blur_radius=0.0, faces_per_pixel=1,
            perspective_correct=perspective, cull_backfaces=False)
        ids = pix_to_face[..., 0]  # packed face index b·F + f, -1 for background
        f = triangles.shape[0]
        return torch.where(ids >= 0, ids % f, ids).long()
