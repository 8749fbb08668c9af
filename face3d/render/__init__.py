"""Rendering: rasterize → (triangle id, barycentrics, depth) → differentiable shading in torch.

* :mod:`~face3d.render.fragments` — screen-space convention, :class:`Fragments`.
* :mod:`~face3d.render.rasterizer` — the backend interface and :func:`get_rasterizer`.
* :mod:`~face3d.render.backends` — "torch", "open3d", "pytorch3d".
* :mod:`~face3d.render.interpolate` — attribute interpolation, UV texture sampling.
* :mod:`~face3d.render.visibility` — per-vertex visibility from a depth buffer.
* :mod:`~face3d.render.renderer` — :class:`Renderer`, :class:`RenderSettings`, :class:`RenderOutput`.
"""
from face3d.render.fragments import Fragments, fragments_from_triangle_ids
from face3d.render.interpolate import (interpolate_corner_attributes, interpolate_corner_packed,
                                       interpolate_vertex_attributes, interpolate_vertex_packed, sample_texture)
from face3d.render.rasterizer import BACKENDS, Rasterizer, available_rasterizers, get_rasterizer
from face3d.render.renderer import RenderOutput, Renderer, RenderSettings
from face3d.render.visibility import vertex_visibility

__all__ = [
    "BACKENDS", "Fragments", "Rasterizer", "RenderOutput", "RenderSettings", "Renderer", "available_rasterizers",
    "fragments_from_triangle_ids", "get_rasterizer", "interpolate_corner_attributes", "interpolate_corner_packed",
    "interpolate_vertex_attributes", "interpolate_vertex_packed", "sample_texture", "vertex_visibility",
]
