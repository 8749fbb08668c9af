"""The rasterizer interface and the registry of backends.

A backend implements :meth:`Rasterizer.triangle_ids` — visibility only: which triangle
each pixel centre sees, nearest surface first (no back-face culling). Calling the
rasterizer turns those ids into :class:`~face3d.render.fragments.Fragments` with
barycentrics and depth recomputed in torch, so every backend is differentiable the same
way (see :mod:`face3d.render.fragments` for the screen-space convention).

Backends (:func:`available_rasterizers` lists those importable here):

* ``"torch"`` — vectorised pure torch, no compiled extension; runs wherever torch runs.
* ``"open3d"`` — Open3D's Embree ray casting (``pip install open3d``), one ray per pixel centre.
* ``"pytorch3d"`` — PyTorch3D's rasterizer where the user has it installed (it has no PyPI
  build, so it is never required).

``get_rasterizer("auto")`` picks PyTorch3D for CUDA tensors when it is installed, otherwise
the torch backend, which is the fastest CPU backend measured by ``bench/render.py``.
"""
from __future__ import annotations

import abc
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor

from face3d.render.fragments import Fragments, corner_table_of, fragments_from_triangle_ids

__all__ = ["Rasterizer", "available_rasterizers", "get_rasterizer", "BACKENDS"]


class Rasterizer(abc.ABC):
    """Base class of the backends; call it to rasterize (see the module doc)."""

    #: Registry name of the backend.
    name: ClassVar[str] = ""

    @classmethod
    def is_available(cls) -> bool:
        """Whether the backend's dependencies import here."""
        return True

    @classmethod
    def install_hint(cls) -> str:
        """How a user gets the backend's dependencies (for error messages)."""
        return "no extra dependency"

    @abc.abstractmethod
    def triangle_ids(self, screen_vertices: Tensor, triangles: Tensor, height: int, width: int,
                     perspective: bool = True) -> Tensor:
        """(B, H, W) long triangle index per pixel, -1 where no triangle covers the pixel centre.

        ``screen_vertices`` (B, N, 3) = (x_px, y_px, z_mm), detached; ``triangles`` (F, 3) long.
        With ``perspective`` the nearest surface is the one with the smallest z along the
        ray through the pixel (1/z interpolated affinely in the image); otherwise z itself
        is interpolated (orthographic).
        """

    def triangle_table(self, name: str, triangles: Tensor, make: Callable[[], Tensor]) -> Tensor:
        """``make()``, cached per instance while the *same* ``triangles`` tensor is passed
        again unmodified (identity and in-place version counter), as when one mesh topology
        is rendered many times (fitting loops). For tables derived from the triangles only."""
        cache = self.__dict__.setdefault("_triangle_tables", {})
        hit = cache.get(name)
        if hit is not None and hit[0] is triangles and hit[1] == triangles._version:
            return hit[2]
        value = make()
        cache[name] = (triangles, triangles._version, value)
        return value

    def __call__(self, screen_vertices: Tensor, triangles: Tensor, height: int, width: int,
                 perspective: bool = True) -> Fragments:
        """Rasterize screen-space vertices (B, N, 3) with triangles (F, 3) into an H × W image."""
        if screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
            raise ValueError(f"screen_vertices must be (B, N, 3), got shape {tuple(screen_vertices.shape)}")
        if not screen_vertices.is_floating_point():
            raise ValueError("screen_vertices must be a floating-point tensor")
        if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.is_floating_point():
            raise ValueError(f"triangles must be an integer (F, 3) tensor, got {triangles.dtype} {tuple(triangles.shape)}")
        if int(height) <= 0 or int(width) <= 0:
            raise ValueError(f"image size must be positive, got {height} x {width}")
        triangles = triangles.to(device=screen_vertices.device, dtype=torch.long)
        n = screen_vertices.shape[1]
        lo, hi = self.triangle_table("range", triangles, lambda: (
            (int(triangles.min()), int(triangles.max())) if triangles.numel() else (0, -1)))
        if lo < 0 or hi >= n:
            raise ValueError(f"triangle index out of range for {n} vertices")
        with torch.no_grad():
            tri_id = self.triangle_ids(screen_vertices.detach(), triangles, int(height), int(width), perspective)
        corner_table = self.triangle_table("corners", triangles, lambda: corner_table_of(triangles))
        return fragments_from_triangle_ids(tri_id, screen_vertices, triangles, perspective, corner_table=corner_table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _backend_classes() -> dict[str, type[Rasterizer]]:
    # imported lazily so that optional dependencies are only touched when asked for
    from face3d.render.backends.open3d_raster import Open3DRasterizer
    from face3d.render.backends.pytorch3d_raster import PyTorch3DRasterizer
    from face3d.render.backends.torch_raster import TorchRasterizer

    return {"torch": TorchRasterizer, "open3d": Open3DRasterizer, "pytorch3d": PyTorch3DRasterizer}


#: Names of all known backends, in order of preference on CPU.
BACKENDS = ("torch", "open3d", "pytorch3d")


def available_rasterizers() -> list[str]:
    """Names of the backends whose dependencies are importable here."""
    classes = _backend_classes()
    return [name for name in BACKENDS if classes[name].is_available()]


def get_rasterizer(name: str = "auto", device: Optional[torch.device | str] = None) -> Rasterizer:
    """A rasterizer by name: "auto", "torch", "open3d" or "pytorch3d".

    "auto" = PyTorch3D when ``device`` is CUDA and PyTorch3D is installed, otherwise the
    torch backend (the fastest CPU backend here). Raises ``ValueError`` naming the
    available alternatives when the requested backend is unknown or not installed.
    """
    classes = _backend_classes()
    if name == "auto":
        if device is not None and torch.device(device).type == "cuda" and classes["pytorch3d"].is_available():
            return classes["pytorch3d"]()
        return classes["torch"]()
    if name not in classes:
        raise ValueError(f"unknown rasterizer backend {name!r}; choose one of "
                         f"{', '.join(['auto', *BACKENDS])} (available here: {', '.join(available_rasterizers())})")
    cls = classes[name]
    if not cls.is_available():
        raise ValueError(f"rasterizer backend {name!r} is not installed here ({cls.install_hint()}); "
                         f"available: {', '.join(available_rasterizers())}")
    return cls()
