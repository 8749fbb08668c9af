"""Swap-R&R (selfsup.swap_rr, CFR-GAN §3.2 eqs. 5-6) and the face-parser interface."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.color import srgb_to_lab
from face3d.morphable_model import MorphableModel
from selfsup.parsing import FaceParser, FaceParserConfig, load_face_parser
from selfsup.swap_rr import (SwapRRConfig, eq5_score, landmark_region_mask, occlusion_mask, sample_yaw, swap,
                             swap_rr, zscore)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eq5_by_hand():
    region = torch.ones(1, 1, 1, 4)
    z = zscore(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4), region)
    s = math.sqrt(1.25)  # population std of 1..4
    assert torch.allclose(z.flatten(), torch.tensor([-1.5, -0.5, 0.5, 1.5]) / s, atol=1e-5)
    zt = torch.tensor([1.0, -1.0, 2.0, 0.0])
    zs = torch.tensor([0.5, 1.0, -1.0, 2.0])
    # M = z_t z_s + z_t + 0.4 z_s
    assert torch.allclose(eq5_score(zt, zs, 0.4), torch.tensor([1.7, -1.6, -0.4, 0.8]))
    # off the region z is 0 and the statistics ignore it
    z2 = zscore(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]).view(1, 1, 1, 5), torch.tensor([1.0, 1, 1, 1, 0]).view(1, 1, 1, 5))
    assert torch.allclose(z2.flatten()[:4], z.flatten(), atol=1e-5) and float(z2.flatten()[4]) == 0.0


def test_lab_reference_values():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).T.reshape(1, 3, 3, 1)
    lab = srgb_to_lab(rgb)[0, :, :, 0].T
    ref = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [53.39, 0.0, 0.0]])  # CIE L*a*b*, D65
    assert torch.allclose(lab, ref, atol=0.02)


def _face_pair(size=48):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    shade = (0.55 + 0.25 * torch.cos(2.5 * xx) * torch.cos(2.0 * yy))
    r_e = torch.stack([shade * 0.95, shade * 0.75, shade * 0.62])[None]
    face = ((xx ** 2 / 0.8 + yy ** 2 / 0.95) < 1).float()[None, None]
    r_e = r_e * face
    r_p = r_e.clone()
    occ = torch.zeros(1, 1, size, size)
    occ[..., 28:40, 14:30] = 1  # a blue patch over the lower face
    r_p = r_p * (1 - occ) + occ * torch.tensor([0.1, 0.2, 0.8]).view(1, 3, 1, 1)
    return r_p, r_e, face, occ


def test_occlusion_mask_finds_an_occluder_and_excludes_the_eyes():
    r_p, r_e, face, occ = _face_pair()
    cfg = SwapRRConfig(image_size=48, dilate_px=0, blur_sigma=0)
    res = occlusion_mask(r_p, r_e, face, config=cfg)
    b = res.binary
    assert float((b * occ).sum() / occ.sum()) > 0.97  # the patch is found
    # nothing far from it (SSIM's 11-px window spreads the structure term by ≤ 5 px)
    from face3d.filters import dilate

    assert float((b * (1 - dilate(occ, 6))).sum()) == 0.0
    assert float(res.score[face == 0].abs().max()) == 0.0
    # the eye polygons of the landmarks are never occluded
    lm = torch.zeros(1, 68, 2)
    lm[0, 36:42] = torch.tensor([[16.0, 30], [19, 28], [23, 28], [26, 30], [23, 33], [19, 33]])
    lm[0, 42:48] = lm[0, 36:42] + torch.tensor([40.0, 0])  # off the crop: no effect
    res2 = occlusion_mask(r_p, r_e, face, landmarks=lm, config=cfg)
    eye = landmark_region_mask(lm, 48, [tuple(range(36, 42))])
    assert float(eye.sum()) > 10 and float((res2.binary * eye).sum()) == 0.0
    assert float((res2.binary * occ * (1 - eye)).sum()) == float((b * occ * (1 - eye)).sum())
    # dilation and blur only grow the mask, within the face
    res3 = occlusion_mask(r_p, r_e, face, config=SwapRRConfig(image_size=48))
    assert float(res3.mask[b > 0].min()) > 0.5 and float(res3.mask.sum()) > float(b.sum())
    assert float(res3.mask[face == 0].max()) == 0.0


def test_swap_keeps_pixels_outside_the_mask():
    r_p, r_e = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 4:9, 3:12] = 1.0
    m[:, :, 9, 3:12] = 0.5
    r_ps, r_es = swap(r_p, r_e, m)
    out = (m == 0).expand_as(r_p)
    inside = (m == 1).expand_as(r_p)
    assert torch.equal(r_ps[out], r_p[out]) and torch.equal(r_es[out], r_e[out])
    assert torch.equal(r_ps[inside], r_e[inside]) and torch.equal(r_es[inside], r_p[inside])
    half = (m == 0.5).expand_as(r_p)
    assert torch.allclose(r_ps[half], 0.5 * (r_p[half] + r_e[half]))


def test_sample_yaw_range_and_limits():
    cfg = SwapRRConfig(yaw_range=(15.0, 60.0), max_yaw=90.0)
    g = torch.Generator().manual_seed(0)
    d = sample_yaw(torch.zeros(500), cfg, g)
    assert float(d.abs().min()) >= 15.0 and float(d.abs().max()) <= 60.0
    assert 0.35 < float((d > 0).float().mean()) < 0.65
    d2 = sample_yaw(torch.full((500,), 80.0), cfg, torch.Generator().manual_seed(1))
    assert float((80.0 + d2).abs().max()) <= 90.0 + 1e-6


def test_swap_rr_on_a_toy_fit(toy_model):
    from tests.test_rotate_render import _params, _texture

    model = MorphableModel(toy_model)
    params = _params(model, 10.0, batch=2)
    image = _texture(2)
    image[:, :, 20:34, 18:40] = torch.tensor([0.1, 0.2, 0.8]).view(1, 3, 1, 1)  # an "occluder"
    cfg = SwapRRConfig(image_size=64)
    s = swap_rr(image, params, model, config=cfg, yaw_deg=torch.tensor([40.0, -40.0]))
    for t in (s.render_psr, s.render_es, s.render_ps):
        assert t.shape == (2, 3, 64, 64)
    assert s.mask.shape == (2, 1, 64, 64) and float(s.mask.min()) >= 0 and float(s.mask.max()) <= 1
    # the swap took R_e inside M and kept R_p outside (before the passes)
    out = (s.mask == 0) & (s.face_mask > 0)
    assert torch.equal(s.render_ps[out.expand(-1, 3, -1, -1)], s.render_p[out.expand(-1, 3, -1, -1)])
    # R_psr is damaged (holes) but where it is defined it is R_ps resampled twice
    hole_frac = s.holes.sum((1, 2, 3)) / s.face_mask.sum((1, 2, 3))
    assert bool((hole_frac > 0.02).all())
    assert float(s.render_psr[(s.holes > 0).expand(-1, 3, -1, -1)].abs().max()) == 0.0
    ok = ((s.face_mask > 0) & (s.holes == 0)).expand(-1, 3, -1, -1)
    assert float((s.render_psr - s.render_ps)[ok].abs().mean()) < 0.05
    # reproducible with a seeded generator
    a = swap_rr(image, params, model, config=cfg, generator=torch.Generator().manual_seed(3))
    b = swap_rr(image, params, model, config=cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.yaw, b.yaw) and torch.equal(a.render_psr, b.render_psr)


def test_face_parser_shapes_and_round_trip(tmp_path):
    cfg = FaceParserConfig(input_size=64, mid_channels=32)
    torch.manual_seed(0)
    parser = FaceParser(cfg).eval()
    x = torch.rand(2, 3, 48, 48)
    logits = parser(x)
    labels = parser.parse(x)
    assert logits.shape == (2, 19, 48, 48) and labels.shape == (2, 1, 48, 48)
    assert int(labels.min()) >= 0 and int(labels.max()) < 19
    path = tmp_path / "bisenet.pt"
    torch.save(parser.net.state_dict(), path)
    again = load_face_parser(path, cfg)
    assert torch.equal(again(x), logits)
    with pytest.raises(FileNotFoundError):
        load_face_parser(tmp_path / "missing.pt")
    with pytest.raises(ValueError):
        load_face_parser(path, FaceParserConfig(input_size=64, mid_channels=16))


def test_parsing_adds_glasses_and_removes_eyes():
    r_p, r_e, face, occ = _face_pair()
    cfg = SwapRRConfig(image_size=48, dilate_px=0, blur_sigma=0)
    labels = torch.ones(1, 1, 48, 48, dtype=torch.long)
    labels[..., 10:14, 10:38] = 6  # glasses
    labels[..., 30:34, 16:22] = 4  # an eye, inside the occluder
    res = occlusion_mask(r_p, r_e, face, config=cfg, parsing=labels)
    glasses = ((labels == 6) & (face > 0)).float()
    assert float((res.binary * glasses).sum()) == float(glasses.sum())
    assert float(res.binary[labels == 4].max()) == 0.0


def test_swap_rr_dataset_on_a_photo(shared_data, ict_model, tmp_path):
    from face3d.model_zoo import load_model
    from face3d.training.data import PhotoDatasetConfig
    from selfsup.swap_rr import SwapRRDataset

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(shared_data / "faces" / "cfrgan_occluded" / "f04258.jpg")
    cfg = SwapRRConfig(image_size=64, photometric_iterations=3, cache_dir=str(tmp_path / "cache"),
                       photos=PhotoDatasetConfig(model=str(ict_model), landmarks="dlib"))
    ds = SwapRRDataset(folder, cfg, model=load_model(str(ict_model)))
    assert len(ds) == 1
    item = ds[0]
    assert set(item) >= {"image", "render_psr", "render_es", "mask", "face_mask"}
    for k in ("image", "render_psr", "render_es"):
        assert item[k].shape == (3, 64, 64) and item[k].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and 0 <= float(item["mask"].min()) <= float(item["mask"].max()) <= 1
    assert float(item["mask"].sum()) > 0 and float(item["face_mask"].mean()) > 0.2
    assert float(item["render_es"][:, item["face_mask"][0] == 0].abs().max()) == 0.0
    again = ds[0]  # light and albedo come from the cache now: the same sample
    assert torch.equal(again["render_psr"], item["render_psr"]) and torch.equal(again["mask"], item["mask"])
