"""Side-by-side pictures of a reconstruction: input | landmarks | shaded fit | textured front view."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from face3d.camera import Intrinsics, euler_to_matrix, transform
from face3d.color import linear_to_srgb
from face3d.pipeline import FaceReconstruction
from face3d.render import Renderer, RenderSettings

__all__ = ["overlay_panels"]

_DETECTED = (40, 220, 60)
_FITTED = (235, 50, 40)


def _fit_height(img: Image.Image, height: int) -> Image.Image:
    w = max(1, round(img.width * height / img.height))
    return img.resize((w, height), Image.LANCZOS)


def _crop_box(faces: Sequence[FaceReconstruction], width: int, height: int) -> tuple[int, int, int, int]:
    """A square around all faces (box grown by 60%), clipped to the image."""
    boxes = np.array([f.face.bbox for f in faces])
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    side = max(x1 - x0, y1 - y0) * 1.6
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return left, top, int(min(width, cx + side / 2)), int(min(height, cy + side / 2))


def overlay_panels(photo: np.ndarray, faces: Sequence[FaceReconstruction], triangles: torch.Tensor,
                   height: int = 512) -> Image.Image:
    """The overlay of the ``reconstruct`` command as one RGB image.

    Panels (each ``height`` px tall, cropped around the faces): the input; the detected
    (green) and fitted (red) landmarks; the fitted model with its estimated albedo and light
    over the photo (R_e: the occlusion-free model rendering); the textured mesh of the first face rendered from the front.

    Args:
        photo: (H, W, 3) uint8 input image.
        faces: the reconstructions of that image.
        triangles: (F, 3) triangles of the coarse model (``model.triangles``).
    """
    if not faces:
        raise ValueError("overlay_panels needs at least one reconstructed face")
    H, W = photo.shape[:2]
    box = _crop_box(faces, W, H)
    base = Image.fromarray(photo).crop(box)
    scale = height / base.height
    panel_in = _fit_height(base, height)

    panel_lm = panel_in.copy()
    draw = ImageDraw.Draw(panel_lm)
    rad = max(2, round(height / 200))
    for f in faces:
        for pts, colour in ((f.face.landmarks, _DETECTED), (f.landmarks_fitted, _FITTED)):
            for x, y in pts:
                px, py = (x - box[0] + 0.5) * scale - 0.5, (y - box[1] + 0.5) * scale - 0.5
                draw.ellipse([px - rad, py - rad, px + rad, py + rad], fill=colour)

    # shaded fit: render at the crop's resolution with a crop camera
    overlay = np.asarray(panel_in).astype(np.float32) / 255.0
    ph, pw = overlay.shape[:2]
    for f in faces:
        K = f.intrinsics
        crop_k = Intrinsics(K.fxy() * scale, (K.principal - torch.tensor([box[0], box[1]]) + 0.5) * scale - 0.5)
        verts = transform(f.coarse_vertices[None], f.R[None], f.t[None])
        out = Renderer(RenderSettings(image_size=(ph, pw), sh_ambient=0.0)).render(
            verts, triangles, crop_k, albedo=f.albedo[None], sh=f.sh[None])
        shaded = linear_to_srgb(out.image[0]).permute(1, 2, 0).numpy()
        m = out.mask[0, 0].numpy()[..., None] * 0.85
        overlay = overlay * (1 - m) + shaded * m
    panel_fit = Image.fromarray((overlay * 255 + 0.5).astype(np.uint8))

    # textured front view of the first face (its detailed mesh), unlit
    f = faces[0]
    R = euler_to_matrix(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    fov = 14.0
    extent = float((f.vertices.amax(0) - f.vertices.amin(0))[:2].max())
    dist = 1.15 * extent / (2 * math.tan(math.radians(fov) / 2))
    centre = (f.vertices.amax(0) + f.vertices.amin(0)) / 2
    verts = transform(f.vertices[None] - centre, R, torch.tensor([[0.0, 0.0, dist]]))
    tex = torch.from_numpy(f.texture).permute(2, 0, 1)[None].float() / 255.0
    out = Renderer(RenderSettings(image_size=height, background=(1.0, 1.0, 1.0))).render(
        verts, f.triangles, Intrinsics.default(height, height, fov_deg=fov), texture=tex, uvs=f.uvs,
        uv_triangles=f.uv_triangles)
    panel_tex = Image.fromarray((out.image[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))

    panels = [panel_in, panel_lm, panel_fit, panel_tex]
    sheet = Image.new("RGB", (sum(p.width for p in panels), height), (255, 255, 255))
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width
    return sheet
