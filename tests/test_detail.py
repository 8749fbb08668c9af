"""Shape-from-shading detail: known fine bumps rendered under SH light are recovered."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.camera import Intrinsics, euler_to_matrix, transform, vertex_normals
from face3d.color import linear_to_srgb
from face3d.detail import DetailSettings, apply_detail, estimate_detail
from face3d.mesh import subdivide
from face3d.morphable_model import MorphableModel
from face3d.render import Renderer, RenderSettings


def test_subdivision_keeps_geometry_and_orientation(toy_model):
    m = MorphableModel(toy_model, dtype=torch.float64)
    sub = subdivide(m.triangles, m.n_vertices, m.uv_triangles, len(m.uvs))
    v = sub.vertices(m.mean_shape)
    assert sub.triangles.shape[0] == 4 * m.triangles.shape[0]
    assert v.shape[0] == m.n_vertices + sub.edges.shape[0]
    # orientation: fine normals agree with the coarse ones at the original vertices
    n0 = vertex_normals(m.mean_shape[None], m.triangles)[0]
    n1 = vertex_normals(v[None], sub.triangles)[0, : m.n_vertices]
    assert (n0 * n1).sum(-1).min() > 0.95
    uv = sub.uvs(m.uvs)
    assert uv.shape[0] == len(m.uvs) + sub.uv_edges.shape[0] and sub.uv_triangles.max() < uv.shape[0]


def _bumpy_scene(toy_model, amplitude=0.8, wavelength=14.0):
    m = MorphableModel(toy_model, dtype=torch.float64)
    tris, verts = m.triangles, m.mean_shape
    for _ in range(2):
        sub = subdivide(tris, verts.shape[0])
        verts, tris = sub.vertices(verts), sub.triangles
    normals = vertex_normals(verts[None], tris)[0]
    x, y = verts[:, 0], verts[:, 1]
    window = torch.exp(-((x / 45.0) ** 2 + ((y - 10.0) / 55.0) ** 2) ** 2)
    bump = amplitude * torch.sin(2 * math.pi * x / wavelength) * torch.sin(2 * math.pi * y / wavelength) * window
    bumpy = verts + bump[:, None] * normals
    R = euler_to_matrix(torch.tensor([15.0], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64),
                        torch.zeros(1, dtype=torch.float64))
    t = torch.tensor([[0.0, 0.0, 900.0]], dtype=torch.float64)
    K = Intrinsics.default(320, 320, fov_deg=15.0, dtype=torch.float64)
    albedo = torch.tensor([0.6, 0.45, 0.38], dtype=torch.float64).expand(1, verts.shape[0], 3).clone()
    sh = torch.zeros(1, 27, dtype=torch.float64)
    for c in range(3):  # ambient + a light from the upper right front
        sh[0, c * 9 + 0], sh[0, c * 9 + 1], sh[0, c * 9 + 2], sh[0, c * 9 + 3] = 0.55, -0.25, 0.3, -0.25
    coarse = transform(verts[None], R, t)
    fine = transform(bumpy[None], R, t)
    image = Renderer(RenderSettings(image_size=320, sh_ambient=0.0)).render(fine, tris, K, albedo=albedo, sh=sh)
    return coarse, fine, tris, K, albedo, sh, linear_to_srgb(image.image)


@pytest.mark.parametrize("known_light", [True, False])
def test_sfs_recovers_known_bumps(toy_model, known_light):
    coarse, fine, tris, K, albedo, sh, photo = _bumpy_scene(toy_model)
    res = estimate_detail(photo, coarse, tris, K, albedo, sh=sh if known_light else None,
                          settings=DetailSettings(max_resolution=256))
    # the true displacement, seen by the crop camera: depth of the bumpy minus the coarse surface
    r = Renderer(RenderSettings(image_size=res.displacement.shape[-1], sh_ambient=0.0))
    true_d = (r.render(fine, tris, res.intrinsics, albedo=albedo).depth
              - r.render(coarse, tris, res.intrinsics, albedo=albedo).depth)
    sel = res.mask > 0.9
    a, b = res.displacement[sel], true_d[sel]
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert corr > 0.75, f"correlation {corr:.3f}"
    # the amplitude is recovered to within a factor of two
    ratio = a.std() / b.std()
    assert 0.5 < ratio < 2.0, f"amplitude ratio {ratio:.2f}"


def test_detail_strength_and_apply(toy_model):
    coarse, fine, tris, K, albedo, sh, photo = _bumpy_scene(toy_model)
    full = estimate_detail(photo, coarse, tris, K, albedo, sh=sh, settings=DetailSettings(max_resolution=160))
    half = estimate_detail(photo, coarse, tris, K, albedo, sh=sh,
                           settings=DetailSettings(max_resolution=160, strength=0.5))
    torch.testing.assert_close(half.displacement, 0.5 * full.displacement)
    moved = apply_detail(coarse, tris, full)
    shift = (moved - coarse).norm(dim=-1)
    assert shift.max() > 0.2 and shift.max() <= 4.0 + 1e-6
    # vertices move along their camera ray: the projection does not change
    from face3d.camera import project
    torch.testing.assert_close(project(moved, K), project(coarse, K), atol=1e-6, rtol=0)
    # seen from the camera, the displaced mesh is closer to the true bumpy surface than the coarse one
    r = Renderer(RenderSettings(image_size=full.displacement.shape[-1], sh_ambient=0.0))
    depth = {k: r.render(v, tris, full.intrinsics, albedo=albedo).depth for k, v in
             (("moved", moved), ("fine", fine), ("coarse", coarse))}
    sel = full.mask > 0.9
    err_moved = (depth["moved"] - depth["fine"])[sel].abs().mean()
    err_coarse = (depth["coarse"] - depth["fine"])[sel].abs().mean()
    assert err_moved < 0.8 * err_coarse, f"{err_moved:.3f} vs {err_coarse:.3f} mm"
    with pytest.raises(ValueError, match="within 0..1"):
        DetailSettings(strength=1.5)
