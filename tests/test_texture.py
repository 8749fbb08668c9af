"""Texture projection: a face rendered with a known texture projects back to that texture."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.camera import Intrinsics, euler_to_matrix, transform
from face3d.morphable_model import MorphableModel
from face3d.render import Renderer, RenderSettings
from face3d.texture import TextureSettings, project_texture, texels_to_image, uv_layout


def _pattern(size: int) -> torch.Tensor:
    """A smooth, mirror-symmetric (in u) colour pattern, sRGB in [0, 1], (1, 3, S, S)."""
    v, u = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    du = (u - 0.5).abs()
    r = 0.5 + 0.3 * torch.cos(2 * math.pi * 3 * du)
    g = 0.5 + 0.3 * torch.sin(2 * math.pi * 2 * v)
    b = 0.4 + 0.2 * torch.cos(2 * math.pi * (2 * du + v))
    return torch.stack([r, g, b])[None]


def _render(model, texture, yaw):
    R = euler_to_matrix(torch.tensor([yaw]), torch.zeros(1), torch.zeros(1))
    t = torch.tensor([[0.0, 0.0, 1200.0]])
    verts = transform(model.shape(), R, t)
    K = Intrinsics.default(256, 256, fov_deg=14.0)
    out = Renderer(RenderSettings(image_size=256)).render(verts, model.triangles, K, texture=texture,
                                                          uvs=model.uvs, uv_triangles=model.uv_triangles)
    return out.image, verts, K


@pytest.fixture(scope="module")
def model(toy_model):
    return MorphableModel(toy_model)


def test_frontal_projection_recovers_the_texture(model):
    tex = _pattern(128)
    image, verts, K = _render(model, tex, 0.0)
    res = project_texture(image, verts, model, K, TextureSettings(size=128, padding=2))
    sure = (res.photo_weight > 0.9) & (res.coverage > 0)
    assert sure.float().sum() > 0.5 * res.coverage.sum()  # most of a frontal face is seen
    err = (res.texture - tex).abs().amax(1, keepdim=True)[sure]
    assert err.mean() < 0.02 and torch.quantile(err, 0.95) < 0.06


def test_turned_face_is_filled_from_the_mirror_side(model):
    tex = _pattern(128)
    image, verts, K = _render(model, tex, 55.0)
    res = project_texture(image, verts, model, K, TextureSettings(size=128, padding=2))
    mirrored = (res.mirror_weight > 0.8) & (res.coverage > 0)
    assert mirrored.sum() > 100  # the far side is hidden and comes from the near side
    err = (res.texture - tex).abs().amax(1, keepdim=True)[mirrored]
    assert err.mean() < 0.04
    # without mirror fill those texels take the fill colour (the mean albedo) instead
    plain = project_texture(image, verts, model, K, TextureSettings(size=128, padding=2, mirror_fill=False))
    assert plain.mirror_weight.abs().max() == 0
    assert (plain.texture - tex).abs().amax(1, keepdim=True)[mirrored].mean() > 2 * err.mean()


def test_occlusion_mask_excludes_pixels(model):
    tex = _pattern(64)
    image, verts, K = _render(model, tex, 0.0)
    occ = torch.zeros(1, 1, 256, 256)
    occ[..., :, :128] = 1.0  # the left half of the photo is "covered"
    res = project_texture(image, verts, model, K, TextureSettings(size=64, padding=1), occlusion=occ)
    full = project_texture(image, verts, model, K, TextureSettings(size=64, padding=1))
    # texels on the viewer's left (u < 0.5) lose their photo weight and take the mirror instead
    left = res.photo_weight[..., :, :28].sum()
    assert left < 0.05 * full.photo_weight[..., :, :28].sum()
    assert res.mirror_weight[..., :, :28].sum() > 0.5 * full.photo_weight[..., :, :28].sum()


def test_layout_and_errors(model):
    lay = uv_layout(model, 64)
    assert lay.texel.shape == lay.tri.shape and lay.bary.shape == (len(lay.texel), 3)
    torch.testing.assert_close(lay.bary.sum(1), torch.ones(len(lay.texel)))
    mirrored = lay.mirror[lay.mirror >= 0]
    # the toy model is symmetric: the mirror of the mirror is (nearly) the texel itself
    back = lay.mirror[mirrored]
    assert (back[back >= 0] >= 0).all()
    img = texels_to_image(lay, torch.ones(1, len(lay.texel), 1))
    assert img.shape == (1, 1, 64, 64) and int(img.sum()) == len(lay.texel)
    with pytest.raises(ValueError, match="texture size"):
        TextureSettings(size=4)
    with pytest.raises(ValueError, match="same B"):
        project_texture(torch.zeros(2, 3, 8, 8), model.shape(), model, Intrinsics.default(8, 8))


def test_layout_disk_cache_round_trip(toy_model, tmp_path):
    import dataclasses

    arrays = dataclasses.replace(toy_model, meta={**toy_model.meta, "source_sha256": "abc123"})
    m = MorphableModel(arrays)
    first = uv_layout(m, 48, cache_dir=tmp_path)
    files = list(tmp_path.glob("uv_layout_*.npz"))
    assert len(files) == 1
    again = uv_layout(m, 48, cache_dir=tmp_path)
    for name in ("texel", "tri", "bary", "mirror", "pad_source"):
        torch.testing.assert_close(getattr(again, name), getattr(first, name))
    assert again.mm_per_texel == first.mm_per_texel
    files[0].write_bytes(b"garbage")  # a broken cache file is recomputed, not fatal
    torch.testing.assert_close(uv_layout(m, 48, cache_dir=tmp_path).texel, first.texel)
