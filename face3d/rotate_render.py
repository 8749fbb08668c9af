"""Renders of a fitted face: R_e, R_p and rotate-and-render (CFR-GAN §3.2; Zhou et al. 2020).

Seed paper ``cfr_gan_swap_rr.txt`` (Ju et al., CFR-GAN), §3.2: from a photo and its 3DMM fit
two faces are rendered,

* **R_e** — the model's albedo under the estimated SH light: occlusion-free by construction,
  since a 3DMM cannot represent a hand or a mask;
* **R_p** — the photo's own pixels projected onto the fitted shape: it carries the occluders;

and *rotate-and-render* (their ref. [55], Zhou et al., "Rotate-and-Render", CVPR 2020) renders
R_p from another pose: surface the photo did not show (self-occlusion, grazing angles) comes out
as **holes**. Two passes (a pose, then back) give Swap-R&R's damaged input (:mod:`selfsup.swap_rr`).

Everything lives in the aligned crop of :mod:`face3d.coefficients` (S² pixels, S = 224 by
default, camera :func:`~face3d.coefficients.aligned_camera`, poses as
:class:`~face3d.coefficients.FaceParams`); images are (B, C, S, S), sRGB in [0, 1] for colour.

Closed surface: face models have openings at the eyes and the mouth (ICT-FaceKit, anny); a
frontalized face would come out with black eyes. :func:`closed_mesh` caps every boundary loop but
the outer one with a fan around the loop's mean point, so the photo's eyes and teeth are carried
like the rest of the face (R_e shows the loop's mean albedo there).

How R_p is sampled: rather than per-vertex colours (which blur a 224² crop: a face model has
fewer vertices than the face has pixels), every pixel of the *target* render looks up its
surface point, projects it into the *source* view and samples the photo there bilinearly — a
per-pixel texture projection at full resolution. The point is usable ("valid") when the source
camera sees it: it projects inside the crop, passes a depth test against the source render
(any of the four pixels around it, ``depth_tolerance_mm``, as :func:`face3d.render.vertex_visibility`
does) and faces the source camera at less than ``max_angle_deg`` (texture at grazing angles is
smeared; :mod:`face3d.texture` uses the same 80° limit). At the source pose itself every valid
pixel therefore reproduces the photo exactly.

R_e reuses the toolkit's renderer and SH shading (:class:`face3d.render.Renderer`,
:mod:`face3d.lighting`); lighting and albedo gain come from the photometric refinement of the
reconstruct pipeline (:func:`face3d.photometric.refine_photometric`) run in the aligned camera
(:func:`fit_appearance`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from face3d.camera import project, transform, vertex_normals
from face3d.coefficients import ALIGNED_SIZE, FaceParams, aligned_camera
from face3d.color import linear_to_srgb
from face3d.lighting import DENG_AMBIENT, NUM_SH
from face3d.morphable_model import MorphableModel
from face3d.render import Renderer, RenderSettings, interpolate_vertex_attributes

__all__ = ["ClosedMesh", "closed_mesh", "ProjectionSettings", "PhotoRender", "FaceRenders", "with_pose", "rotate_params", "fit_appearance",
           "render_estimate", "project_photo", "rotate_and_render", "render_views"]


@dataclass
class ProjectionSettings:
    """How photo pixels are carried onto the fitted surface (see the module doc).

    * ``depth_tolerance_mm``: slack of the depth test in a 224² crop (≈ 1 mm per pixel at the
      aligned distance); scaled by 224/S for other crop sizes, as the pixel footprint grows.
    * ``max_angle_deg``: surface seen more obliquely than this by the source camera is a hole.
    * ``backend``: rasterizer backend (:func:`face3d.render.get_rasterizer`).
    """

    depth_tolerance_mm: float = 3.0
    max_angle_deg: float = 80.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.depth_tolerance_mm < 0:
            raise ValueError(f"depth_tolerance_mm must be >= 0, got {self.depth_tolerance_mm}")
        if not 0 < self.max_angle_deg <= 90:
            raise ValueError(f"max_angle_deg must be within (0, 90], got {self.max_angle_deg}")


@dataclass
class PhotoRender:
    """A photo (or any image) projected on the fitted shape and rendered at ``params``' pose.

    * ``image`` (B, C, S, S): sampled values, 0 where not ``valid``.
    * ``valid`` (B, 1, S, S) {0, 1}: the target pixel's surface point was seen in the source.
    * ``face_mask`` (B, 1, S, S) {0, 1}: the model covers the pixel at the target pose.
    * ``params``: the target pose's :class:`FaceParams`; ``landmarks`` (B, 68, 2) its
      projected model landmarks, crop pixels.
    """

    image: Tensor
    valid: Tensor
    face_mask: Tensor
    params: FaceParams
    landmarks: Tensor

    @property
    def holes(self) -> Tensor:
        """(B, 1, S, S): face pixels with no photo colour (self-occluded or grazing in the source)."""
        return self.face_mask * (1.0 - self.valid)


@dataclass
class FaceRenders:
    """R_e and R_p of a fit at one pose (sRGB (B, 3, S, S)), with ``face_mask``, ``valid`` (where
    R_p is defined), ``landmarks`` (B, 68, 2) and the pose ``params``; see :func:`render_views`."""

    render_e: Tensor
    render_p: Tensor
    face_mask: Tensor
    valid: Tensor
    landmarks: Tensor
    params: FaceParams

    @property
    def holes(self) -> Tensor:
        return self.face_mask * (1.0 - self.valid)


def with_pose(params: FaceParams, yaw: Optional[Tensor | float] = None, pitch: Optional[Tensor | float] = None,
              roll: Optional[Tensor | float] = None, translation: Optional[Tensor] = None) -> FaceParams:
    """``params`` with some of yaw / pitch / roll (degrees; scalar or (B,)) or the translation
    offset (B, 3) mm replaced; shape, albedo and light stay."""
    angles = params.angles.clone()
    for i, v in enumerate((yaw, pitch, roll)):
        if v is not None:
            angles[:, i] = torch.as_tensor(v, dtype=angles.dtype, device=angles.device) * (math.pi / 180.0)
    t = params.translation if translation is None else translation.to(params.translation)
    return replace(params, angles=angles, translation=t)


def rotate_params(params: FaceParams, yaw_deg: Tensor | float) -> FaceParams:
    """``params`` turned by ``yaw_deg`` (scalar or (B,), degrees, sign of :mod:`face3d.camera`)
    about the model's vertical axis through its origin; the translation stays."""
    d = torch.as_tensor(yaw_deg, dtype=params.angles.dtype, device=params.angles.device) * (math.pi / 180.0)
    angles = params.angles.clone()
    angles[:, 0] = angles[:, 0] + d
    return replace(params, angles=angles)


def _check_image(image: Tensor, params: FaceParams) -> int:
    if image.ndim != 4 or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"expected a square (B, C, S, S) crop, got shape {tuple(image.shape)}")
    if image.shape[0] != params.batch:
        raise ValueError(f"image batch {image.shape[0]} does not match {params.batch} face parameter sets")
    return int(image.shape[-1])


@dataclass
class ClosedMesh:
    """A model's triangles with its inner boundary loops (eyes, mouth) capped.

    * ``triangles`` (F + Σ|loop|, 3) long: the model's, then one fan per loop around an extra
      vertex N + k (the mean of loop k's vertices), wound to continue the surface's orientation.
    * ``loops``: vertex ids of each capped loop; ``n_vertices`` = N.
    """

    triangles: Tensor
    loops: list[Tensor]
    n_vertices: int

    def extend(self, values: Tensor) -> Tensor:
        """Per-vertex values (B, N, C) → (B, N + len(loops), C), cap centres = loop means."""
        if not self.loops:
            return values
        extra = torch.stack([values[:, loop.to(values.device)].mean(1) for loop in self.loops], 1)
        return torch.cat([values, extra], 1)


def closed_mesh(model: MorphableModel) -> ClosedMesh:
    """Cap every boundary loop of ``model``'s mesh except the longest (its outer rim).

    A directed boundary edge a→b belongs to one triangle, CCW seen from outside; the cap
    triangle (b, a, centre) runs the edge the other way, so the cap faces outward too.
    """
    tris = model.triangles.detach().cpu().long()
    n = model.n_vertices
    edges = torch.cat([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    key = edges.min(1).values * n + edges.max(1).values
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    boundary = edges[counts[inverse] == 1].tolist()
    following = {a: b for a, b in boundary}
    loops: list[list[int]] = []
    seen: set[int] = set()
    for start in following:
        if start in seen:
            continue
        loop, cur = [start], following[start]
        seen.add(start)
        while cur != start and cur not in seen and cur in following:
            loop.append(cur)
            seen.add(cur)
            cur = following[cur]
        if cur == start and len(loop) >= 3:
            loops.append(loop)
    if len(loops) <= 1:
        return ClosedMesh(model.triangles, [], n)
    loops.sort(key=len)
    inner = loops[:-1]  # the longest loop is the outer rim of the face
    caps = []
    for k, loop in enumerate(inner):
        a = torch.tensor(loop)
        b = torch.roll(a, -1)
        caps.append(torch.stack([b, a, torch.full_like(a, n + k)], 1))
    tri = torch.cat([tris] + caps).to(model.triangles.device)
    return ClosedMesh(tri, [torch.tensor(loop) for loop in inner], n)


def _camera_vertices(model: MorphableModel, params: FaceParams, mesh: Optional[ClosedMesh] = None) -> Tensor:
    shape = model.shape(params.alpha.to(model.dtype), params.beta.to(model.dtype))
    if mesh is not None:
        shape = mesh.extend(shape)
    return transform(shape, params.rotation().to(shape), params.camera_translation().to(shape))


def fit_appearance(image: Tensor, params: FaceParams, model: MorphableModel, landmarks: Optional[Tensor] = None,
                   settings=None) -> tuple[FaceParams, Tensor]:
    """SH light and albedo of a fit from its aligned crop (photometric stage of the reconstruct
    pipeline, robust to occluders, run with the aligned camera).

    Args:
        image: (B, 3, S, S) aligned crop, sRGB in [0, 1].
        params: the fit (pose, α, β) in the crop's aligned camera.
        landmarks: (B, 68, 2) optional, crop pixels (used only with ``refine_shape``).
        settings: :class:`face3d.photometric.PhotometricSettings` (default its defaults).

    Returns:
        ``params`` with ``sh`` (B, 27) in the FaceParams convention (Deng's +0.8 ambient added
        when shading), and the per-vertex linear albedo (B, N, 3) (model albedo × fitted gain).
    """
    from face3d.photometric import PhotometricSettings, refine_photometric

    size = _check_image(image, params)
    p = params.to(model.device, model.dtype)
    K = aligned_camera(params.batch, size, model.dtype, model.device)
    res = refine_photometric(image.to(model.device, model.dtype), model, p.alpha, p.beta, p.rotation(),
                             p.camera_translation(), K, landmarks=landmarks,
                             settings=settings or PhotometricSettings())
    # refine_photometric shades with no ambient offset; FaceParams.sh has Deng's +0.8 added at render
    sh = res.sh.view(-1, 3, NUM_SH).clone()
    sh[..., 0] -= DENG_AMBIENT
    return replace(p, sh=sh.reshape(-1, 3 * NUM_SH)), res.albedo


def render_estimate(params: FaceParams, model: MorphableModel, image_size: int = ALIGNED_SIZE,
                    albedo: Optional[Tensor] = None, renderer: Optional[Renderer] = None,
                    mesh: Optional[ClosedMesh] = None) -> tuple[Tensor, Tensor]:
    """R_e: the model's albedo under ``params.sh`` at ``params``' pose.

    Args:
        albedo: (B, N, 3) linear per-vertex albedo (e.g. from :func:`fit_appearance`); default
            ``model.albedo(params.delta)``.
        mesh: the capped mesh (default :func:`closed_mesh` of ``model``).

    Returns:
        (image (B, 3, S, S) sRGB in [0, 1], 0 off the face; face mask (B, 1, S, S)).
    """
    renderer = renderer or Renderer(RenderSettings(image_size=image_size))
    mesh = mesh or closed_mesh(model)
    params = params.to(model.device, model.dtype)
    cam = _camera_vertices(model, params, mesh)
    if albedo is None:
        albedo = model.albedo(params.delta.to(cam), batch=params.batch)
    albedo = mesh.extend(albedo.to(cam))
    out = renderer.render(cam, mesh.triangles, aligned_camera(params.batch, image_size, cam.dtype, cam.device),
                          albedo=albedo, sh=params.sh.to(cam))
    return linear_to_srgb(out.image) * out.mask, out.mask


def _sample(image: Tensor, xy: Tensor) -> Tensor:
    """Bilinear samples of (B, C, H, W) at pixel coordinates xy (B, H', W', 2) (pixel-centre convention)."""
    h, w = image.shape[-2:]
    grid = torch.stack([(2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1], -1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _seen_from_source(xy: Tensor, z: Tensor, depth: Tensor, mask: Tensor, tolerance: float) -> Tensor:
    """(B, H, W) bool: points at source pixels xy (B, H, W, 2) with source depth z (B, H, W) pass the
    depth test at one of the four pixel centres around them (module doc)."""
    b, h, w = depth.shape
    x, y = xy[..., 0], xy[..., 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    xf, yf = x.floor(), y.floor()
    flat_d, flat_m = depth.reshape(b, -1), mask.reshape(b, -1)
    seen = torch.zeros_like(inside)
    for dx in (0.0, 1.0):
        for dy in (0.0, 1.0):
            px, py = xf + dx, yf + dy
            ok = inside & (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
            idx = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1)).long().reshape(b, -1)
            d = torch.gather(flat_d, 1, idx).view(b, h, w)
            m = torch.gather(flat_m, 1, idx).view(b, h, w)
            seen |= ok & m & (z <= d + tolerance)
    return seen


def project_photo(image: Tensor, source: FaceParams, model: MorphableModel, target: Optional[FaceParams] = None,
                  valid: Optional[Tensor] = None, settings: Optional[ProjectionSettings] = None,
                  mesh: Optional[ClosedMesh] = None) -> PhotoRender:
    """Project ``image`` (seen at the ``source`` pose) onto the fitted shape and render it at ``target``.

    Args:
        image: (B, C, S, S) aligned crop(s) (any channels: colour, masks, …).
        source: the fit of ``image`` (pose, α, β) in the aligned camera.
        target: the pose to render at (its α, β are ignored: the shape is ``source``'s);
            default ``source`` (R_p at the input pose).
        valid: (B, 1, S, S) optional: where ``image`` itself is defined (e.g. a previous pass's
            ``valid``); points landing outside it become holes too.
        settings: :class:`ProjectionSettings`.
        mesh: the capped mesh (default :func:`closed_mesh` of ``model``).

    Returns:
        :class:`PhotoRender` at the target pose. Not differentiable in the pose (sampling
        positions come from the rasterizer) but differentiable in ``image``.
    """
    settings = settings or ProjectionSettings()
    size = _check_image(image, source)
    target = source if target is None else target
    if target.batch != source.batch:
        raise ValueError(f"target has batch {target.batch}, source {source.batch}")
    dev, dt = model.device, model.dtype
    src = source.to(dev, dt)
    tgt = replace(target.to(dev, dt), alpha=src.alpha, beta=src.beta)
    b = src.batch
    K = aligned_camera(b, size, dt, dev)
    renderer = Renderer(RenderSettings(image_size=size, backend=settings.backend))
    mesh = mesh or closed_mesh(model)
    tris = mesh.triangles
    with torch.no_grad():
        cam_src = _camera_vertices(model, src, mesh)
        cam_tgt = _camera_vertices(model, tgt, mesh)
        frags_src = renderer.rasterize(cam_src, tris, K)
        frags_tgt = renderer.rasterize(cam_tgt, tris, K)
        # the target pixel's surface point, in the source camera frame, and its source normal
        attrs = torch.cat([cam_src, vertex_normals(cam_src, tris)], -1)
        at = interpolate_vertex_attributes(frags_tgt, attrs)  # (B, S, S, 6)
        p_src, n_src = at[..., :3], F.normalize(at[..., 3:], dim=-1)
        cover = frags_tgt.mask
        z = torch.where(cover, p_src[..., 2], torch.ones_like(p_src[..., 2]))
        xy = project(torch.where(cover[..., None], p_src, torch.ones_like(p_src)).view(b, -1, 3), K).view(b, size,
                                                                                                       size, 2)
        tol = settings.depth_tolerance_mm * ALIGNED_SIZE / size
        seen = _seen_from_source(xy, z, frags_src.depth, frags_src.mask, tol)
        # the surface must face the source camera (camera at the origin, ray = p / |p|)
        cos = -(n_src * F.normalize(p_src, dim=-1)).sum(-1)
        ok = cover & seen & (cos > math.cos(math.radians(settings.max_angle_deg)))
        ok = ok[:, None].to(image.dtype)
        if valid is not None:
            ok = ok * (_sample(valid.to(ok), xy) > 0.5).to(ok)
        lm = project(model.landmarks(cam_tgt[:, :mesh.n_vertices]), K)
    sampled = _sample(image.to(device=dev), xy.to(image.dtype)) * ok.to(dev)
    return PhotoRender(image=sampled, valid=ok, face_mask=cover[:, None].to(image.dtype), params=tgt, landmarks=lm)


def rotate_and_render(image: Tensor, params: FaceParams, model: MorphableModel, yaw_deg: Tensor | float,
                      valid: Optional[Tensor] = None, settings: Optional[ProjectionSettings] = None,
                      mesh: Optional[ClosedMesh] = None) -> PhotoRender:
    """Rotate-and-render (Zhou et al. 2020): ``image`` projected on the fit ``params`` and rendered
    after turning the face by ``yaw_deg`` (scalar or (B,), degrees). Holes where the source did
    not see the surface (:attr:`PhotoRender.holes`). ``yaw_deg = 0`` returns the image on the
    visible face pixels."""
    return project_photo(image, params, model, rotate_params(params, yaw_deg), valid=valid, settings=settings,
                         mesh=mesh)


def render_views(image: Tensor, params: FaceParams, model: MorphableModel, target: Optional[FaceParams] = None,
                 albedo: Optional[Tensor] = None, settings: Optional[ProjectionSettings] = None,
                 mesh: Optional[ClosedMesh] = None) -> FaceRenders:
    """R_e and R_p of a fit, at the input pose (``target`` None) or at ``target``'s pose.

    Args:
        image: (B, 3, S, S) aligned crop, sRGB in [0, 1].
        params: its fit (with light ``sh``; see :func:`fit_appearance`).
        target: pose to render at (shape, albedo and light are ``params``'); e.g.
            ``with_pose(params, 0, 0, 0)`` for the frontal face.
        albedo: (B, N, 3) linear per-vertex albedo for R_e (default the model's).
    """
    size = _check_image(image, params)
    mesh = mesh or closed_mesh(model)
    pr = project_photo(image, params, model, target, settings=settings, mesh=mesh)
    re, mask = render_estimate(pr.params, model, size, albedo=albedo, mesh=mesh,
                               renderer=Renderer(RenderSettings(image_size=size,
                                                                backend=(settings or ProjectionSettings()).backend)))
    return FaceRenders(render_e=re.to(image), render_p=pr.image, face_mask=mask.to(image), valid=pr.valid,
                       landmarks=pr.landmarks, params=pr.params)
