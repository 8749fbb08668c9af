"""VGG-19 feature extractor and perceptual loss (face3d.nn.vgg)."""
from __future__ import annotations

import pytest
import torch

from face3d.nn.vgg import VGG19, VGG19_LAYERS, PerceptualLoss, load_vgg19

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_layout_matches_torchvision_indices():
    net = VGG19()
    # torchvision vgg19().features: convs at these indices, pools at 4, 9, 18, 27, 36
    convs = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)] == convs
    assert [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)] == [4, 9, 18, 27, 36]
    assert len(net.features) == 37
    keys = list(net.state_dict())
    assert keys == [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]
    assert tuple(net.state_dict()["features.34.weight"].shape) == (512, 512, 3, 3)
    assert VGG19_LAYERS["relu1_1"] == 1 and VGG19_LAYERS["relu3_1"] == 11
    assert VGG19_LAYERS["relu4_1"] == 20 and VGG19_LAYERS["relu5_4"] == 35 and VGG19_LAYERS["pool5"] == 36
    # parameter count of torchvision's vgg19 features: 20,024,384
    assert sum(p.numel() for p in net.parameters()) == 20_024_384


def test_feature_shapes():
    net = load_vgg19(None)
    x = torch.rand(2, 3, 32, 32)
    f = net(x, ("relu1_1", "relu2_2", "relu3_1", "relu4_1", "relu5_1"))
    assert tuple(f["relu1_1"].shape) == (2, 64, 32, 32)
    assert tuple(f["relu2_2"].shape) == (2, 128, 16, 16)
    assert tuple(f["relu3_1"].shape) == (2, 256, 8, 8)
    assert tuple(f["relu4_1"].shape) == (2, 512, 4, 4)
    assert tuple(f["relu5_1"].shape) == (2, 512, 2, 2)
    assert all((v >= 0).all() for v in f.values())  # after ReLU
    with pytest.raises(ValueError, match="unknown VGG-19 layer"):
        net(x, ("relu9_9",))


def test_normalisation_is_imagenet():
    net = load_vgg19(None)
    x = torch.rand(1, 3, 16, 16)
    raw = VGG19(normalize_input=False)
    raw.load_state_dict(net.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    a = net(x, ("conv1_1",))["conv1_1"]
    b = raw(((x - mean) / std), ("conv1_1",))["conv1_1"]
    assert torch.allclose(a, b, atol=1e-6)


def test_state_dict_roundtrip_and_torchvision_keys(tmp_path):
    torch.manual_seed(3)
    src = VGG19()
    x = torch.rand(1, 3, 24, 24)
    # a torchvision-style full model state dict: features + a classifier head to be dropped
    full = dict(src.state_dict())
    full["classifier.0.weight"] = torch.zeros(2, 3)  # the head: must be ignored
    full["classifier.0.bias"] = torch.zeros(2)
    p = tmp_path / "vgg19.pth"
    torch.save(full, p)
    net = load_vgg19(p)
    assert not any(q.requires_grad for q in net.parameters()) and not net.training
    ref = src.eval()(x, ("relu3_1", "relu4_2"))
    got = net(x, ("relu3_1", "relu4_2"))
    assert torch.equal(ref["relu3_1"], got["relu3_1"]) and torch.equal(ref["relu4_2"], got["relu4_2"])
    # a bare features state dict (keys "N.weight") with DataParallel prefixes loads too
    bare = {"module." + k[len("features."):]: v for k, v in src.state_dict().items()}
    assert torch.equal(load_vgg19(bare)(x, ("relu2_1",))["relu2_1"], ref_relu := src(x, ("relu2_1",))["relu2_1"])
    assert ref_relu.abs().sum() > 0


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vgg19(tmp_path / "missing.pth")
    bad = {k: v for k, v in VGG19().state_dict().items() if k != "features.0.weight"}
    with pytest.raises(ValueError, match="do not fit"):
        load_vgg19(bad)
    wrong = dict(VGG19().state_dict())
    wrong["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    with pytest.raises(ValueError, match="do not fit"):
        load_vgg19(wrong)


def test_perceptual_loss_values_and_gradients():
    loss = PerceptualLoss(layers=("relu1_1", "relu2_1"), weights=(0.5, 2.0))
    x = torch.rand(2, 3, 16, 16)
    assert loss(x, x.clone()).item() == 0.0
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    val = loss(x, y)
    assert val.item() > 0
    # hand-check against the feature definition
    f = loss.vgg(x, ("relu1_1", "relu2_1"))
    g = loss.vgg(y, ("relu1_1", "relu2_1"))
    ref = 0.5 * (f["relu1_1"] - g["relu1_1"]).abs().mean() + 2.0 * (f["relu2_1"] - g["relu2_1"]).abs().mean()
    assert torch.allclose(val, ref, rtol=1e-5)
    # gradients reach the image, not the frozen net; train() leaves the net in eval mode
    xr = y.clone().requires_grad_(True)
    loss.train()
    assert not loss.vgg.training
    loss(xr, x).backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.vgg.parameters())
    with pytest.raises(ValueError, match="one weight per layer"):
        PerceptualLoss(layers=("relu1_1",), weights=(1.0, 2.0))


def test_perceptual_gradcheck_float64():
    net = VGG19().double().requires_grad_(False).eval()
    loss = PerceptualLoss(layers=("relu1_1",), weights=(1.0,), vgg=net)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: loss(a, y), (x,), eps=1e-6, atol=1e-5)
