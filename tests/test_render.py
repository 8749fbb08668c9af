"""Rasterizer backends, fragments, interpolation, texture sampling, visibility and the Renderer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from face3d.camera import Intrinsics, euler_to_matrix, transform, vertex_normals
from face3d.lighting import DENG_AMBIENT, irradiance
from face3d.morphable_model import MorphableModel
from face3d.render import (RenderSettings, Renderer, available_rasterizers, get_rasterizer,
                           interpolate_corner_attributes, interpolate_vertex_attributes, sample_texture,
                           vertex_visibility)

HAVE_OPEN3D = "open3d" in available_rasterizers()
BACKENDS = ["torch"] + (["open3d"] if HAVE_OPEN3D else [])


def icosphere(level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosphere: vertices (N, 3) float64, CCW-outward triangles (F, 3)."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, float) / np.linalg.norm(p) for p in verts]
    for _ in range(level):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return torch.tensor(np.array(v)), torch.tensor(faces, dtype=torch.long)


@pytest.fixture(scope="module")
def sphere():
    return icosphere(5)  # 10 242 vertices, 20 480 triangles: the size of a real face mesh


def _sphere_scene(sphere, batch=1, dtype=torch.float32, size=224, radius=80.0, dist=900.0):
    v, f = sphere
    K = Intrinsics.default(size, size, batch=batch, dtype=dtype)
    centre = torch.tensor([12.0, -7.0, dist], dtype=dtype)
    verts = (v.to(dtype) * radius + centre)[None].expand(batch, -1, -1).contiguous()
    return verts, f, K, centre, radius


def _toy_scene(toy_model, yaw=25.0, pitch=-10.0, roll=5.0, size=224):
    m = MorphableModel(toy_model)
    R = euler_to_matrix(torch.tensor([yaw]), torch.tensor([pitch]), torch.tensor([roll]))
    K = Intrinsics.default(size, size)
    vc = transform(m.mean_shape[None], R, torch.tensor([[3.0, -5.0, 1000.0]]))
    return m, vc, K


# --------------------------------------------------------------------------- rasterizers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip", [False, True])
def test_single_triangle_coverage(backend, flip):
    """Right triangle (−0.3, −0.3), (8.7, −0.3), (−0.3, 8.7): pixel (row i, col j) is covered
    iff i + j ≤ 8 (x + y ≤ 8.4 at its centre) — 45 pixels; winding does not matter."""
    sv = torch.tensor([[[-0.3, -0.3, 5.0], [8.7, -0.3, 5.0], [-0.3, 8.7, 5.0]]])
    tri = torch.tensor([[0, 2, 1]] if flip else [[0, 1, 2]])
    frags = get_rasterizer(backend)(sv, tri, 12, 16)
    i, j = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
    expected = (i + j) <= 8
    assert torch.equal(frags.mask[0], expected)
    assert int(frags.mask.sum()) == 45
    assert torch.all(frags.tri_id[0][expected] == 0) and torch.all(frags.tri_id[0][~expected] == -1)
    torch.testing.assert_close(frags.depth[0][expected], torch.full((45,), 5.0))
    torch.testing.assert_close(frags.bary.sum(-1)[0][expected], torch.ones(45))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_triangles_and_image_borders(backend):
    """Triangles far larger than the padded tiles (the box-tested path) and overhanging every
    image border: pixel (i, j) of a 150 × 230 image is covered by the lower-left triangle
    iff i + j ≤ 200 (x + y ≤ 200.4 at its centre), by the upper-right one (further away) iff
    i + j ≥ 202 and it is inside the clipped quad."""
    h, w = 150, 230
    sv = torch.tensor([[[-40.3, -40.3, 5.0], [240.7, -40.3, 5.0], [-40.3, 240.7, 5.0],
                        [300.0, 300.0, 9.0]]])
    # second triangle shares the hypotenuse x + y = 200.4 and lies behind
    tri = torch.tensor([[0, 1, 2], [1, 3, 2]])
    frags = get_rasterizer(backend)(sv, tri, h, w)
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    first = (i + j) <= 200
    assert torch.equal(frags.tri_id[0] == 0, first)
    second = (i + j) >= 202  # centres at x + y = 201 lie 0.6 px past the first triangle's edge
    assert torch.all(frags.tri_id[0][second] == 1)
    assert torch.all(frags.mask[0])


def test_torch_rasterizer_caches_follow_the_inputs(sphere):
    """One instance across image sizes, batches and an in-place edit of the triangles gives the
    same ids as a fresh instance every time (scratch buffers and triangle tables are reused)."""
    verts, tris, K, _, _ = _sphere_scene(sphere)
    tris = tris.clone()
    r = Renderer(RenderSettings(backend="torch")).screen_vertices(verts, K)
    shared = get_rasterizer("torch")
    for size, b in ((224, 1), (64, 2), (224, 1)):
        sv = r[:, :, :] * torch.tensor([size / 224.0, size / 224.0, 1.0])
        sv = sv.expand(b, -1, -1).contiguous()
        got = shared(sv, tris, size, size).tri_id
        ref = get_rasterizer("torch")(sv, tris, size, size).tri_id
        assert torch.equal(got, ref)
    tris[:, [1, 2]] = tris[:, [2, 1]].clone()  # in place: flip the winding of every triangle
    tris[:100] = tris[100:200].clone()  # and hide the first 100
    got = shared(r, tris, 224, 224).tri_id
    ref = get_rasterizer("torch")(r, tris, 224, 224).tri_id
    assert torch.equal(got, ref)
    assert not torch.any((got >= 0) & (got < 100))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_surface_wins_and_perspective_depth(backend):
    """Two overlapping tilted quads: per pixel, the depth is the exact ray-plane intersection of
    the nearer one, and interpolated camera-frame positions lie on the pixel's ray."""
    K = Intrinsics.default(48, 40, dtype=torch.float64)
    f, c = K.fxy()[0], K.principal[0]

    def quad(z0, slope):  # plane z = z0 + slope·x over a 60 × 60 mm square
        xy = torch.tensor([[-30.0, -30.0], [30.0, -30.0], [30.0, 30.0], [-30.0, 30.0]], dtype=torch.float64)
        return torch.cat([xy, (z0 + slope * xy[:, 0])[:, None]], 1)

    verts = torch.cat([quad(500.0, 2.0), quad(520.0, -2.0)])[None]  # they cross at x = 5
    tris = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    r = Renderer(RenderSettings(image_size=(40, 48), backend=backend))
    frags = r.rasterize(verts, tris, K)
    v, u = torch.meshgrid(torch.arange(40, dtype=torch.float64), torch.arange(48, dtype=torch.float64), indexing="ij")
    dx, dy = (u - c[0]) / f[0], (v - c[1]) / f[1]
    z1 = 500.0 / (1 - 2.0 * dx)  # ray (dx·z, dy·z, z) meets z = z0 + s·x
    z2 = 520.0 / (1 + 2.0 * dx)
    inside = (dx.abs() * torch.minimum(z1, z2) < 29.0) & (dy.abs() * torch.minimum(z1, z2) < 29.0)
    assert inside.sum() > 300
    m = frags.mask[0]
    assert torch.all(m[inside])
    torch.testing.assert_close(frags.depth[0][inside], torch.minimum(z1, z2)[inside], rtol=1e-9, atol=1e-9)
    nearer_is_first = (z1 < z2)[inside]
    assert torch.equal(frags.tri_id[0][inside] < 2, nearer_is_first)
    pos = interpolate_vertex_attributes(frags, verts)[0]
    ray = torch.stack([dx * frags.depth[0], dy * frags.depth[0], frags.depth[0]], -1)
    torch.testing.assert_close(pos[inside], ray[inside], rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not HAVE_OPEN3D, reason="open3d is not importable here")
@pytest.mark.parametrize("scene", ["sphere", "toy"])
def test_backends_agree_on_real_size_meshes(scene, sphere, toy_model):
    if scene == "sphere":
        verts, tris, K, _, _ = _sphere_scene(sphere)
        # a second, bigger sphere partly behind the first: occlusion between surfaces
        v2 = verts + torch.tensor([60.0, 30.0, 150.0])
        verts = torch.cat([verts, v2], 1)
        tris = torch.cat([tris, tris + sphere[0].shape[0]])
    else:
        m, verts, K = _toy_scene(toy_model)
        tris = m.triangles
    out = {}
    for name in ("torch", "open3d"):
        out[name] = Renderer(RenderSettings(backend=name)).rasterize(verts, tris, K)
    a, b = out["torch"], out["open3d"]
    covered = a.mask | b.mask
    assert covered.sum() > 5000
    # boundary pixels whose centre lies within round-off of an edge may differ
    assert (a.mask == b.mask).float().mean() > 0.999
    agree = (a.tri_id == b.tri_id)[covered].float().mean()
    assert agree >= 0.99, agree
    both = a.mask & b.mask
    rel = ((a.depth - b.depth).abs() / b.depth.clamp_min(1.0))[both]
    assert rel.max() < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthographic_agrees_with_torch(backend, toy_model):
    m, verts, K = _toy_scene(toy_model, yaw=-35.0)
    r = Renderer(RenderSettings(backend=backend, projection="weak"))
    frags = r.rasterize(verts, m.triangles, K)
    ref = Renderer(RenderSettings(backend="torch", projection="weak")).rasterize(verts, m.triangles, K)
    covered = frags.mask | ref.mask
    assert (frags.tri_id == ref.tri_id)[covered].float().mean() > 0.99
    # weak perspective: depth is affine in the image, so interpolated z equals the screen-space plane
    pos = interpolate_vertex_attributes(frags, verts)[0]
    torch.testing.assert_close(pos[..., 2][frags.mask[0]], frags.depth[0][frags.mask[0]])


def test_rasterizer_registry_errors():
    with pytest.raises(ValueError, match="unknown rasterizer backend 'nope'.*torch"):
        get_rasterizer("nope")
    if "pytorch3d" not in available_rasterizers():
        with pytest.raises(ValueError, match="'pytorch3d' is not installed.*available: torch"):
            get_rasterizer("pytorch3d")
    assert get_rasterizer("auto").name == "torch"
    with pytest.raises(ValueError, match="triangle index out of range"):
        get_rasterizer("torch")(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 3]]), 4, 4)


# --------------------------------------------------------------------------- rendering


def test_reference_image_of_a_sphere(sphere):
    """Tessellated sphere vs an analytic per-pixel ray–sphere intersection shaded with the same SH.

    Tolerances follow from the tessellation (level-5 icosphere, edges 0.035–0.041 rad): a flat
    triangle sits at most 0.023 mm (r = 80 mm) inside the sphere and the interpolated
    normals are off by well under 0.01 rad, so colours agree to 1e-2 at worst (1e-3 on
    average) and depth to 0.025 mm / cos(incidence); pixels whose centres lie within a pixel
    of the silhouette are left out of the colour/depth comparison (coverage there is decided
    by the polygon, which is inscribed in the sphere).
    """
    verts, tris, K, centre, radius = _sphere_scene(sphere, dtype=torch.float64)
    sh = torch.zeros(1, 27, dtype=torch.float64)
    sh[0, [2, 11, 20]] = 0.35  # light from the camera side
    sh[0, [1, 10, 19]] = -0.2  # and from above
    sh[0, [4, 13, 22]] = 0.1
    albedo = torch.tensor([0.7, 0.5, 0.4], dtype=torch.float64).expand(1, verts.shape[1], 3)
    r = Renderer(RenderSettings(backend="torch", background=(0.1, 0.2, 0.3), clamp=False))
    out = r.render(verts, tris, K, albedo=albedo, sh=sh)

    size = 224
    f, c = K.fxy()[0], K.principal[0]
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    d = torch.stack([(u - c[0]) / f[0], (v - c[1]) / f[1], torch.ones_like(u)], -1)
    # |t·d − centre|² = r²  →  a t² − 2 b t + (|centre|² − r²) = 0
    a = (d * d).sum(-1)
    bq = (d * centre).sum(-1)
    disc = bq * bq - a * (centre.dot(centre) - radius ** 2)
    hit = disc > 0
    t = (bq - disc.clamp_min(0).sqrt()) / a
    p = t[..., None] * d
    n = (p - centre) / radius
    ref = albedo[0, 0] * irradiance(n[None], sh, DENG_AMBIENT, frame="camera")[0]
    ref = torch.where(hit[..., None], ref, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))

    # silhouette: coverage differs only within a pixel of the analytic circle
    # angular distance of the ray inside the tangent cone, in pixels (f px per radian near the axis)
    cos_ang = (d * centre).sum(-1) / (a.sqrt() * centre.norm())
    dist_px = (math.asin(radius / float(centre.norm())) - torch.acos(cos_ang.clamp(-1, 1))) * f[0]
    mask = out.mask[0, 0] > 0
    assert torch.all(mask[hit & (dist_px > 1.0)])
    assert not torch.any(mask[~hit])  # the polygon is inscribed in the sphere
    interior = hit & (dist_px > 1.0)
    err = (out.image[0].permute(1, 2, 0) - ref)[interior].abs()
    assert err.max() < 1e-2, float(err.max())
    assert err.mean() < 1e-3, float(err.mean())
    # the polygon lies inside the sphere by at most the sagitta s = r·(1 − |centroid|) ≤ 0.023 mm,
    # which along a ray meeting the surface at incidence θ is s / cos θ of depth
    depth_err = (out.depth[0, 0] - t * d[..., 2])[interior]
    cos_inc = (-(n * d).sum(-1) / a.sqrt())[interior]
    assert depth_err.min() > -1e-6
    assert torch.all(depth_err < 0.025 / cos_inc)
    torch.testing.assert_close(out.image[0, :, 0, 0], torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    nrm_err = (out.normals[0].permute(1, 2, 0) - n)[interior].norm(dim=-1)
    assert nrm_err.max() < 1e-2


def test_packed_irradiance_matches_lighting():
    """The renderer's quadratic-form SH shading equals face3d.lighting.irradiance (camera frame)."""
    from face3d.render.renderer import _packed_irradiance

    torch.manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=torch.float64), dim=-1)
    sh = torch.randn(2, 27, dtype=torch.float64)
    ref = irradiance(n, sh, DENG_AMBIENT, frame="camera")  # (2, 50, 3)

    class _Frags:  # only pix_batch is read
        pix_batch = torch.arange(2).repeat_interleave(50)

    got = _packed_irradiance(_Frags(), n.reshape(100, 3).t(), sh, DENG_AMBIENT)  # (3, 100)
    torch.testing.assert_close(got.t().reshape(2, 50, 3), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("projection", ["perspective", "weak"])
def test_render_gradcheck(projection):
    """Image and depth w.r.t. vertex positions, albedo and SH through rasterization, the
    (hand-differentiated) barycentrics, normal interpolation and SH shading (float64, no
    pixel centre near an edge)."""
    verts = torch.tensor([[[-10.0, -8.0, 100.0], [11.0, -9.0, 104.0], [9.5, 10.0, 98.0], [-9.0, 9.0, 103.0]]],
                         dtype=torch.float64)
    tris = torch.tensor([[0, 2, 1], [0, 3, 2]])
    K = Intrinsics(focal=torch.tensor([[40.0, 40.0]], dtype=torch.float64),
                   principal=torch.tensor([[4.3, 3.6]], dtype=torch.float64))
    r = Renderer(RenderSettings(image_size=(8, 9), backend="torch", clamp=False, projection=projection))
    frags = r.rasterize(verts, tris, K)
    assert 0 < int(frags.mask.sum()) < 72
    # every covered pixel centre is well inside its triangle, so ±1e-6 moves change no coverage
    assert float(frags.bary[frags.mask].min()) > 1e-3
    albedo = torch.rand(1, 4, 3, dtype=torch.float64)
    sh = 0.3 * torch.randn(1, 27, dtype=torch.float64)
    inputs = tuple(x.clone().requires_grad_(True) for x in (verts, albedo, sh))

    def fn(v, a, s):
        out = r.render(v, tris, K, albedo=a, sh=s)
        return out.image, out.depth

    # fast mode checks random projections of the Jacobian: full coverage of inputs, few backward passes
    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, fast_mode=True)


def test_batch_matches_single_renders(toy_model):
    m = MorphableModel(toy_model)
    b = 3
    R = euler_to_matrix(torch.tensor([-30.0, 0.0, 40.0]), torch.tensor([10.0, -5.0, 0.0]), torch.tensor([0.0, 8.0, -4.0]))
    t = torch.tensor([[0.0, 0.0, 900.0], [10.0, -4.0, 1100.0], [-8.0, 3.0, 1000.0]])
    shape = m.mean_shape[None] + 2.0 * torch.randn(b, *m.mean_shape.shape)
    vc = transform(shape, R, t)
    K = Intrinsics.default(160, 128, batch=b)
    albedo = m.mean_albedo[None].expand(b, -1, -1)
    sh = 0.2 * torch.randn(b, 27)
    r = Renderer(RenderSettings(image_size=(128, 160), backend="torch", background=(0.0, 1.0, 0.0)))
    full = r.render(vc, m.triangles, K, albedo=albedo, sh=sh)
    for i in range(b):
        Ki = Intrinsics(K.focal[i:i + 1], K.principal[i:i + 1])
        one = r.render(vc[i:i + 1], m.triangles, Ki, albedo=albedo[i:i + 1], sh=sh[i:i + 1])
        assert torch.equal(full.fragments.tri_id[i], one.fragments.tri_id[0])
        torch.testing.assert_close(full.image[i], one.image[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(full.depth[i], one.depth[0])
        torch.testing.assert_close(full.normals[i], one.normals[0])
    assert full.mask.sum() > 3 * 3000


def test_texture_sampling_v_up_convention():
    ht, wt = 16, 32
    u = (torch.arange(wt) + 0.5) / wt
    v = 1.0 - (torch.arange(ht) + 0.5) / ht  # row 0 of the image is the top: v = 1
    tex = torch.stack([u[None].expand(ht, wt), v[:, None].expand(ht, wt), torch.zeros(ht, wt)])[None]
    uv = torch.rand(1, 5, 7, 2) * torch.tensor([1 - 1 / wt, 1 - 1 / ht]) + torch.tensor([0.5 / wt, 0.5 / ht])
    got = sample_texture(tex, uv)
    torch.testing.assert_close(got[0, :2].permute(1, 2, 0), uv[0], atol=1e-6, rtol=0)


def test_textured_render_and_corner_attributes(toy_model):
    m, vc, K = _toy_scene(toy_model, yaw=10.0)
    ht = wt = 64
    u = (torch.arange(wt) + 0.5) / wt
    v = 1.0 - (torch.arange(ht) + 0.5) / ht
    tex = torch.stack([u[None].expand(ht, wt), v[:, None].expand(ht, wt), torch.full((ht, wt), 0.5)])[None]
    r = Renderer(RenderSettings(backend="torch"))
    out = r.render(vc, m.triangles, K, texture=tex, uvs=m.uvs, uv_triangles=m.uv_triangles)  # unlit
    frags = out.fragments
    uv = interpolate_corner_attributes(frags, m.uvs, m.uv_triangles)[0]
    ok = frags.mask[0] & (uv >= 0.5 / wt).all(-1) & (uv <= 1 - 0.5 / wt).all(-1)
    assert ok.sum() > 1000
    torch.testing.assert_close(out.image[0, :2].permute(1, 2, 0)[ok], uv[ok], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.image[0, 2][frags.mask[0]], torch.full((int(frags.mask.sum()),), 0.5))
    # batched corner values behave like shared ones
    uvb = interpolate_corner_attributes(frags, m.uvs[None], m.uv_triangles)[0]
    torch.testing.assert_close(uvb, uv)


def test_vertex_normals_match_a_direct_implementation(toy_model):
    """The coordinate-major vertex_normals against the textbook per-row version (batched)."""
    m, vc, _ = _toy_scene(toy_model)
    vb = torch.cat([vc, vc * 1.1 + 3.0]).double()
    f = m.triangles
    v0, v1, v2 = (vb[:, f[:, k]] for k in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    ref = torch.zeros_like(vb)
    for k in range(3):
        ref = ref.index_add(1, f[:, k], fn)
    ref = torch.nn.functional.normalize(ref, dim=-1)
    got = vertex_normals(vb, f)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)
    assert got.permute(2, 0, 1).is_contiguous()  # the renderer relies on the channel-first storage


def test_vertex_visibility_on_a_sphere(sphere):
    verts, tris, K, centre, radius = _sphere_scene(sphere)
    r = Renderer(RenderSettings(backend="torch"))
    sv = r.screen_vertices(verts, K)
    frags = r.rasterize(verts, tris, K)
    vis = vertex_visibility(sv, frags.depth, frags.mask, 0.5, frags.tri_id, tris)[0]
    # facing = cos(normal, direction to the eye). Right at the silhouette (facing < ~0.1 here)
    # triangles project to slivers thinner than a pixel and may own no pixel at all, so only
    # vertices clearly facing the camera must come out visible.
    facing = ((verts[0] - centre) * -verts[0]).sum(-1) / (radius * verts[0].norm(dim=-1))
    assert torch.all(vis[facing > 0.15])
    assert vis[facing > 0.0].float().mean() > 0.95
    assert not torch.any(vis[facing < -0.05])
    # an occluder in front of the left half hides those vertices
    wall = torch.tensor([[[-200.0, -200.0, 700.0], [12.0, -200.0, 700.0], [12.0, 200.0, 700.0], [-200.0, 200.0, 700.0]]])
    both = torch.cat([verts, wall], 1)
    tris2 = torch.cat([tris, torch.tensor([[0, 1, 2], [0, 2, 3]]) + verts.shape[1]])
    frags2 = r.rasterize(both, tris2, K)
    vis2 = vertex_visibility(r.screen_vertices(both, K), frags2.depth, frags2.mask, 0.5, frags2.tri_id,
                             tris2)[0, :verts.shape[1]]
    left = verts[0, :, 0] < 12.0 * verts[0, :, 2] / 700.0 - 1.0
    assert not torch.any(vis2[left])
    assert torch.all(vis2[(facing > 0.15) & ~left & (verts[0, :, 0] > 12.0 * verts[0, :, 2] / 700.0 + 1.0)])
    # the depth test alone (no triangles) still gets the clearly front-facing part right
    vis3 = vertex_visibility(sv, frags.depth, frags.mask, tolerance=2.0)[0]
    assert torch.all(vis3[facing > 0.3]) and not torch.any(vis3[facing < -0.05])


def test_bad_inputs_raise_clear_errors(toy_model):
    m, vc, K = _toy_scene(toy_model)
    r = Renderer(RenderSettings(backend="torch", image_size=32))
    with pytest.raises(ValueError, match="exactly one of albedo"):
        r.render(vc, m.triangles, K)
    with pytest.raises(ValueError, match="sh must be"):
        r.render(vc, m.triangles, K, albedo=m.mean_albedo[None], sh=torch.zeros(1, 9))
    with pytest.raises(ValueError, match="projection"):
        RenderSettings(projection="fisheye")
