"""The coefficient regressor: torchvision-compatible backbones, the FaceRegressor head, Deng et al.'s
checkpoint layout, and the training losses (Deng et al. 2019; CFR-GAN §3.1)."""
from __future__ import annotations

import math

import pytest
import torch

from face3d.coefficients import FaceParams, coefficient_count
from face3d.morphable_model import MorphableModel
from face3d.regressor import (
    FaceRegressor, IdentityLoss, RegressorLoss, RegressorLossConfig, build_identity_net, landmark_weights,
    load_deng_rnet, load_identity_net, project_landmarks, render_face, teacher_student_loss,
)
from face3d.regressor.backbones import BACKBONES, build_backbone, resnet18, resnet50
from face3d.regressor.losses import lan_loss, landmark_loss, parameter_loss, teach_loss
from face3d.toy_model import make_toy_model


pytestmark = pytest.mark.usefixtures("one_thread")


# -- torchvision layout, written down from the architecture (He et al. 2016; Sandler et al. 2018) --------
def _bn(keys: dict, name: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{name}.{p}"] = (c,)
    keys[f"{name}.num_batches_tracked"] = ()


def _expected_resnet(bottleneck: bool, layers: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(keys, "bn1", 64)
    cin = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            if bottleneck:
                cout = planes * 4
                keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
                _bn(keys, f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(keys, f"{p}.bn2", planes)
                keys[f"{p}.conv3.weight"] = (cout, planes, 1, 1)
                _bn(keys, f"{p}.bn3", cout)
            else:
                cout = planes
                keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
                _bn(keys, f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(keys, f"{p}.bn2", planes)
            if i == 0 and (stage > 1 or cin != cout):
                keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                _bn(keys, f"{p}.downsample.1", cout)
            cin = cout
    keys["fc.weight"] = (1000, cin)
    keys["fc.bias"] = (1000,)
    return keys


def _expected_mobilenet_v2() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {"features.0.0.weight": (32, 3, 3, 3)}
    _bn(keys, "features.0.1", 32)
    cin, idx = 32, 1
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            p, hidden = f"features.{idx}.conv", cin * t
            if t == 1:
                keys[f"{p}.0.0.weight"] = (hidden, 1, 3, 3)
                _bn(keys, f"{p}.0.1", hidden)
                keys[f"{p}.1.weight"] = (c, hidden, 1, 1)
                _bn(keys, f"{p}.2", c)
            else:
                keys[f"{p}.0.0.weight"] = (hidden, cin, 1, 1)
                _bn(keys, f"{p}.0.1", hidden)
                keys[f"{p}.1.0.weight"] = (hidden, 1, 3, 3)
                _bn(keys, f"{p}.1.1", hidden)
                keys[f"{p}.2.weight"] = (c, hidden, 1, 1)
                _bn(keys, f"{p}.3", c)
            cin, idx = c, idx + 1
    keys["features.18.0.weight"] = (1280, 320, 1, 1)
    _bn(keys, "features.18.1", 1280)
    keys["classifier.1.weight"] = (1000, 1280)
    keys["classifier.1.bias"] = (1000,)
    return keys


#: parameter counts torchvision documents for its builders
_TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                       "mobilenet_v2": 3_504_872}
_EXPECTED = {
    "resnet18": lambda: _expected_resnet(False, (2, 2, 2, 2)),
    "resnet34": lambda: _expected_resnet(False, (3, 4, 6, 3)),
    "resnet50": lambda: _expected_resnet(True, (3, 4, 6, 3)),
    "mobilenet_v2": _expected_mobilenet_v2,
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_state_dict_matches_torchvision_layout(name):
    net = build_backbone(name)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = _EXPECTED[name]()
    assert sorted(set(got) ^ set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert sum(p.numel() for p in net.parameters()) == _TORCHVISION_PARAMS[name]


@pytest.fixture(scope="module")
def toy():
    return MorphableModel(make_toy_model(seed=0))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_regressor_output_and_feature_shapes(toy, name):
    reg = FaceRegressor(name, toy).eval()
    x = torch.rand(2, 3, 64, 64)
    out = reg.features(x)
    k = coefficient_count(toy)
    assert out.raw.shape == (2, k) and out.coefficients.shape == (2, k)
    assert [m.shape[1] for m in out.maps] == list(reg.backbone.feature_channels)
    assert [m.shape[-1] for m in out.maps] == [64 // s for s in (4, 8, 16, 32)]
    p = reg.params(x)
    assert p.alpha.shape == (2, toy.n_id) and p.sh.shape == (2, 27) and p.translation.shape == (2, 3)
    with pytest.raises(ValueError, match="expected images"):
        reg(torch.rand(2, 64, 64))


def test_zero_head_predicts_mean_frontal_face_centred(toy):
    reg = FaceRegressor("resnet18", toy).eval()
    size = 96
    with torch.no_grad():
        p = reg.params(torch.rand(3, 3, size, size))
        r = render_face(toy, p, size)
    assert float(p.join().abs().max()) == 0.0
    for b in range(3):
        ys, xs = torch.nonzero(r.mask[b, 0], as_tuple=True)
        assert len(xs) > 0.2 * size * size  # the face fills a good part of the crop
        assert abs(float(xs.float().mean()) - (size - 1) / 2) < 1.0
        assert abs(float(ys.float().mean()) - (size - 1) / 2) < 1.0
    # frontal: the left/right landmark pairs are mirror images about the centre column
    lm = r.landmarks[0]
    torch.testing.assert_close(lm[36, 0] + lm[45, 0], torch.tensor(float(size - 1)), atol=0.3, rtol=0)
    torch.testing.assert_close(lm[36, 1], lm[45, 1], atol=0.3, rtol=0)


def test_load_backbone_weights_from_torchvision_file(toy, tmp_path):
    src = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    reg = FaceRegressor("resnet18", toy)
    reg.load_backbone_weights(path)
    torch.testing.assert_close(reg.backbone.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    assert float(reg.backbone.fc.weight.detach().abs().max()) == 0.0  # the head stays zero
    with pytest.raises(FileNotFoundError):
        reg.load_backbone_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="lack"):
        reg.load_backbone_weights({k: v for k, v in src.state_dict().items() if not k.startswith("layer4")})


# -- training signal ------------------------------------------------------------------------------------
def _truth(model: MorphableModel, b: int) -> FaceParams:
    g = torch.Generator().manual_seed(1)
    a, e, d = model.sample_coefficients(b, 0.5, generator=g)
    angles = torch.tensor([[0.15, 0.05, 0.0], [-0.15, -0.05, 0.05], [0.08, -0.1, -0.05], [-0.05, 0.1, 0.0]])[:b]
    trans = torch.tensor([[6.0, -4, 30], [-6, 4, -30], [3, 5, 0], [-4, -3, 20]])[:b]
    sh = torch.zeros(b, 27)
    sh[:, [2, 11, 20]] = 0.1
    return FaceParams(a, e, d, angles, sh, trans)


def test_adam_steps_lower_losses_and_approach_truth(toy):
    size, b = 64, 4
    truth = _truth(toy, b)
    loss = RegressorLoss(toy)
    with torch.no_grad():
        r = render_face(toy, truth, size, loss.renderer(size))
    image, lms = r.srgb, r.landmarks
    reg = FaceRegressor("resnet18", toy).eval()  # BN statistics frozen: a batch of 4 is too small to estimate them
    opt = torch.optim.Adam(reg.parameters(), lr=5e-4, foreach=True)

    def evaluate():
        with torch.no_grad():
            p = reg.params(image)
            t = loss(p, image, lms).terms
            t_err = (p.translation - truth.translation)[:, :2].abs().mean()
            return float(t["photo"]), float(t["landmark"]), float(t_err)

    photo0, lm0, terr0 = evaluate()
    for _ in range(25):
        lt = loss(reg.params(image), image, lms)
        opt.zero_grad()
        lt.total.backward()
        opt.step()
    photo1, lm1, terr1 = evaluate()
    assert lm1 < 0.5 * lm0, (lm0, lm1)
    assert photo1 < 0.85 * photo0, (photo0, photo1)
    assert terr1 < 0.7 * terr0, (terr0, terr1)


def test_landmark_loss_gradcheck(toy):
    m = MorphableModel(make_toy_model(seed=0, n_id=4, n_exp=3, n_albedo=2), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 68, 2, generator=g, dtype=torch.float64) * 10 + 40
    w = landmark_weights("cfrgan", dtype=torch.float64)

    def f(alpha, beta, angles, trans):
        p = FaceParams(alpha, beta, torch.zeros(2, 2, dtype=torch.float64), angles,
                       torch.zeros(2, 27, dtype=torch.float64), trans)
        lm = project_landmarks(m, p, 96)
        return landmark_loss(lm, target, w), lan_loss(lm, target, w)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, generator=g)

    args = tuple(a.requires_grad_() for a in (rnd(2, 4) * 3, rnd(2, 3), rnd(2, 3) * 0.1, rnd(2, 3) * 5))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


def test_landmark_weights_and_loss_values():
    w = landmark_weights("cfrgan")
    assert float(w.sum()) == 68 - 20 + 20 * 20
    assert float(w[36]) == float(w[47]) == float(w[60]) == float(w[67]) == 20.0 and float(w[48]) == float(w[30]) == 1.0
    wd = landmark_weights("deng")
    assert float(wd[28]) == float(wd[30]) == float(wd[64]) == 20.0 and float(wd[36]) == 1.0
    pred = torch.zeros(1, 68, 2)
    tgt = torch.zeros(1, 68, 2)
    tgt[0, 40] = torch.tensor([3.0, 4.0])  # an eye point: |d|² = 25, |d|₁ = 7
    assert float(landmark_loss(pred, tgt, w)) == pytest.approx(20 * 25 / 68)
    assert float(lan_loss(pred, tgt, w)) == pytest.approx(20 * 7 / 68)


def test_teach_loss_layer_weights():
    shapes = [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    teacher = [torch.zeros(s) for s in shapes]
    for k, w in enumerate((0.125, 0.25, 0.5, 1.0)):
        student = [torch.zeros(s) for s in shapes]
        student[k] += 1.0  # RMS distance 1 in map k only
        assert float(teach_loss(teacher, student)) == pytest.approx(w / 4)
        l2 = w / 4 * math.sqrt(math.prod(shapes[k][1:]))
        assert float(teach_loss(teacher, student, distance="l2")) == pytest.approx(l2)
    with pytest.raises(ValueError, match="as many"):
        teach_loss(teacher[:3], teacher)


def test_teacher_student_loss_on_regressor_features(toy):
    teacher = FaceRegressor("resnet18", toy).eval()
    with torch.no_grad():  # a non-trivial head so the coefficients differ between inputs
        teacher.backbone.fc.weight.copy_(torch.randn_like(teacher.backbone.fc.weight) * 1e-3)
    teacher.requires_grad_(False)
    student = FaceRegressor("resnet18", toy).eval()
    student.load_state_dict(teacher.state_dict())  # both start from the stage-1 weights
    clean = torch.rand(2, 3, 64, 64)
    masked = clean.clone()
    masked[:, :, 32:, 16:48] = 0.5  # a "dental mask"
    t_out = teacher.features(clean)
    target = project_landmarks(toy, FaceParams.split(t_out.coefficients, toy), 64).detach()
    same = teacher_student_loss(toy, t_out, student.features(clean), target, 64)
    assert float(same.total.detach()) == pytest.approx(0.0, abs=1e-4)
    lt = teacher_student_loss(toy, t_out, student.features(masked), target, 64)
    assert float(lt.terms["teach"].detach()) > 0 and float(lt.terms["para"].detach()) > 0
    cfg = RegressorLossConfig()
    expect = cfg.w_para * lt.terms["para"] + cfg.w_teach * lt.terms["teach"] + cfg.w_lan * lt.terms["lan"]
    torch.testing.assert_close(lt.total, expect)
    lt.total.backward()
    assert student.backbone.layer1[0].conv1.weight.grad is not None
    assert teacher.backbone.layer1[0].conv1.weight.grad is None  # the teacher is a fixed target
    assert float(parameter_loss(torch.zeros(1, 4), torch.tensor([[3.0, 4.0, 0.0, 0.0]]))) == pytest.approx(5.0)


# -- identity network ---------------------------------------------------------------------------------
def test_identity_loss_zero_for_same_image_positive_otherwise(tmp_path):
    assert tuple(build_identity_net("iresnet18").fc.weight.shape) == (512, 512 * 7 * 7)
    net = build_identity_net("iresnet18", embedding_dim=32)  # a small embedding keeps the file small
    keys = net.state_dict()
    assert tuple(keys["fc.weight"].shape) == (32, 512 * 7 * 7) and "layer1.0.prelu.weight" in keys
    assert "layer2.0.downsample.1.running_var" in keys and "features.running_mean" in keys
    path = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), path)
    loss = IdentityLoss(load_identity_net(path, "iresnet18"))
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 96, 96, generator=g)
    b = torch.rand(2, 3, 96, 96, generator=g).requires_grad_()
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-5)
    d = loss(a, b)
    assert float(d.detach()) > 1e-3
    d.backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="do not fit"):
        load_identity_net(path, "iresnet34")


def test_regressor_loss_terms_and_weights(toy):
    truth = _truth(toy, 2)
    loss = RegressorLoss(toy, identity=IdentityLoss(build_identity_net("iresnet18", embedding_dim=32)))
    with torch.no_grad():
        r = render_face(toy, truth, 64, loss.renderer(64))
        exact = loss(truth, r.srgb, r.landmarks)
    assert float(exact.terms["photo"]) < 2e-3 and float(exact.terms["landmark"]) < 1e-8
    assert float(exact.terms["identity"]) < 1e-4  # the render pasted over itself
    moved = FaceParams(truth.alpha, truth.beta, truth.delta, truth.angles, truth.sh, truth.translation + 5.0)
    lt = loss(moved, r.srgb, r.landmarks, pseudo_labelled=torch.tensor([True, True]))
    full = loss(moved, r.srgb, r.landmarks)
    assert float(lt.terms["landmark"]) == pytest.approx(0.7 * float(full.terms["landmark"]), rel=1e-5)
    cfg = loss.config
    expect = sum(getattr(cfg, w) * full.terms[k] for k, w in (
        ("photo", "w_photo"), ("landmark", "w_landmark"), ("identity", "w_identity"), ("reg", "w_reg"),
        ("lighting", "w_lighting"), ("reflectance", "w_reflectance")))
    torch.testing.assert_close(full.total, expect)
    with pytest.raises(ValueError, match="w_photo"):
        RegressorLossConfig(w_photo=-1.0)


# -- Deng et al.'s R-Net checkpoint ------------------------------------------------------------------
@pytest.fixture(scope="module")
def bfm_like():
    arrays = make_toy_model(seed=2, n_id=80, n_exp=64, n_albedo=80)
    arrays.meta = dict(arrays.meta, name="bfm")
    arrays.id_std[:] = 1.0  # the BFM conversion keeps Deng's std-scaled modes
    arrays.exp_std[:] = 1.0
    arrays.albedo_std[:] = 1.0
    return MorphableModel(arrays)


def _deng_checkpoint() -> dict:
    trunk = resnet50().state_dict()
    g = torch.Generator().manual_seed(5)
    net = {f"backbone.{k}": v for k, v in trunk.items() if not k.startswith("fc.")}
    biases = {3: torch.tensor([0.2, -0.3, 0.1]), 5: torch.tensor([0.1, -0.05]), 6: torch.tensor([0.3])}
    for i, n in enumerate((80, 64, 80, 3, 27, 2, 1)):
        net[f"final_layers.{i}.weight"] = torch.randn(n, 2048, 1, 1, generator=g) * 1e-3
        net[f"final_layers.{i}.bias"] = biases.get(i, torch.randn(n, generator=g) * 0.1)
    return {"net_recon": {f"module.{k}": v for k, v in net.items()}, "epoch": 20}


def _deng_landmarks(model: MorphableModel, raw: torch.Tensor) -> torch.Tensor:
    """Deng et al.'s own pipeline, written from their description: decimetres, model re-centred,
    R = Rz Ry Rx, camera 10 dm away on +z, focal 1015, centre 112, image y up → row = 223 − v."""
    ida, exa = raw[:, :80], raw[:, 80:144]
    ax, ay, az = raw[:, 224], raw[:, 225], raw[:, 226]
    t = raw[:, 254:257]
    shape = model.shape(ida, exa) / 100.0
    shape = shape - (model.mean_shape / 100.0).mean(0)
    lm = shape[:, model.landmark_ids]
    out = []
    for b in range(raw.shape[0]):
        c, s = torch.cos, torch.sin
        rx = torch.tensor([[1, 0, 0], [0, c(ax[b]), -s(ax[b])], [0, s(ax[b]), c(ax[b])]])
        ry = torch.tensor([[c(ay[b]), 0, s(ay[b])], [0, 1, 0], [-s(ay[b]), 0, c(ay[b])]])
        rz = torch.tensor([[c(az[b]), -s(az[b]), 0], [s(az[b]), c(az[b]), 0], [0, 0, 1]])
        w = lm[b] @ (rz @ ry @ rx).T + t[b]
        zc = 10.0 - w[:, 2]
        u = 1015.0 * w[:, 0] / zc + 112.0
        v = 1015.0 * w[:, 1] / zc + 112.0
        out.append(torch.stack([u, 223.0 - v], -1))
    return torch.stack(out)


def test_deng_rnet_key_mapping_and_pose_conversion(bfm_like, tmp_path):
    ckpt = _deng_checkpoint()
    path = tmp_path / "epoch_20.pth"
    torch.save(ckpt, path)
    reg = load_deng_rnet(path, bfm_like).eval()
    net = ckpt["net_recon"]
    torch.testing.assert_close(reg.backbone.layer2[3].conv3.weight, net["module.backbone.layer2.3.conv3.weight"])
    torch.testing.assert_close(reg.backbone.bn1.running_var, net["module.backbone.bn1.running_var"])

    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = reg.features(x)
        pooled = out.maps[-1].mean((2, 3))
        w = torch.cat([net[f"module.final_layers.{i}.weight"].flatten(1) for i in range(7)])
        b = torch.cat([net[f"module.final_layers.{i}.bias"] for i in range(7)])
        deng_raw = pooled @ w.T + b
        torch.testing.assert_close(out.raw, deng_raw, atol=1e-5, rtol=1e-5)
        p = FaceParams.split(out.coefficients, bfm_like)
        torch.testing.assert_close(p.alpha, deng_raw[:, :80])
        torch.testing.assert_close(p.delta, deng_raw[:, 144:224])
        torch.testing.assert_close(p.sh, deng_raw[:, 227:254])
        # the pose conversion reproduces their projection of the landmarks in our pixel convention
        ours = project_landmarks(bfm_like, p, 224)
        theirs = _deng_landmarks(bfm_like, deng_raw)
        assert float((ours - theirs).abs().max()) < 0.05
        assert float(p.angles[:, 0].abs().min()) > 0.1  # a real yaw, not a trivial case

    # the conventions travel with the state dict (extra state + buffers)
    again = FaceRegressor("resnet50", bfm_like).eval()
    again.load_state_dict(reg.state_dict())
    assert again.pose_convention == "deng" and again.input_normalization == "none"
    with torch.no_grad():
        torch.testing.assert_close(again(x), out.coefficients)


def test_deng_rnet_fc_layout_and_refusals(bfm_like, toy):
    ckpt = _deng_checkpoint()["net_recon"]
    flat = {k: v for k, v in ckpt.items() if "final_layers" not in k}
    flat["fc.weight"] = torch.cat([ckpt[f"module.final_layers.{i}.weight"].flatten(1) for i in range(7)])
    flat["fc.bias"] = torch.cat([ckpt[f"module.final_layers.{i}.bias"] for i in range(7)])
    reg = load_deng_rnet(flat, bfm_like)
    torch.testing.assert_close(reg.backbone.fc.weight, flat["fc.weight"])
    with pytest.raises(ValueError, match="no faithful mapping"):
        load_deng_rnet(ckpt, toy)
    bad = dict(ckpt)
    bad["module.final_layers.4.weight"] = torch.zeros(9, 2048, 1, 1)
    with pytest.raises(ValueError, match="final_layers.4"):
        load_deng_rnet(bad, bfm_like)
