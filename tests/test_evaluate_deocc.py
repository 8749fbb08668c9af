"""`evaluate deocc` (deocc/evaluate.py) and the dlib identity descriptor (deocc/identity.py)."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deocc.data import OccludedFaceDataset, OcclusionDataConfig
from deocc.evaluate import GRID_HEADER, PSNR_CAP, push_pull_fill
from face3d.cli import main
from face3d.generator import Generator, GeneratorOutput, register_generator, save_generator
from face3d.metrics import mask_iou, psnr, ssim

pytestmark = pytest.mark.usefixtures("one_thread")
S = 64


@dataclasses.dataclass
class HalfConfig:
    image_size: int = 32
    gain: float = 0.5


class HalfGenerator(Generator):
    """Scales its input by a stored gain (at 32², so the evaluation has to resize)."""

    def __init__(self, config: HalfConfig) -> None:
        super().__init__(config)
        self.gain = torch.nn.Parameter(torch.tensor(float(config.gain)))

    def forward(self, inputs):
        self.check_input(inputs)
        return GeneratorOutput(inputs.image * self.gain, torch.ones_like(inputs.image[:, :1]))


@dataclasses.dataclass
class PasteConfig:
    image_size: int = 64


class PasteGenerator(Generator):
    uses_3d = True

    def __init__(self, config: PasteConfig) -> None:
        super().__init__(config)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        self.check_input(inputs)
        f = inputs.face_mask
        return GeneratorOutput(inputs.image * (1 - f) + inputs.render_e * f + self.dummy, (f > 0.5).float())


@pytest.fixture(scope="module")
def test_generators():
    """Register the two test generators for this module only (other test files may list the registry)."""
    from face3d import generator as registry

    register_generator("test-half", HalfConfig, summary="test: output = gain · input, mask = all ones")(HalfGenerator)
    register_generator("test-paste-re", PasteConfig, summary="test: 3D-guided, pastes R_e in the face")(PasteGenerator)
    yield
    for name in ("test-half", "test-paste-re"):
        registry._REGISTRY.pop(name, None)


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    from face3d.morphable_model import save_model_arrays
    from face3d.toy_model import make_toy_model

    p = tmp_path_factory.mktemp("model") / "toy.npz"
    save_model_arrays(make_toy_model(seed=0), p)
    return p


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_push_pull_fill():
    x = torch.full((1, 3, 16, 16), 0.3)
    known = torch.ones(1, 1, 16, 16)
    known[..., 4:12, 5:13] = 0
    assert torch.allclose(push_pull_fill(x, known), x, atol=1e-6)  # a constant fills with itself
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    f = push_pull_fill(ramp, known)
    assert torch.equal(f[known.bool()], ramp[known.bool()])  # known pixels kept
    hole = f[0, 0, 8, 5:13]
    assert hole.min() >= ramp[0, 0, 0, 4] - 0.05 and hole.max() <= ramp[0, 0, 0, 13] + 0.05


def test_evaluate_identity_baseline_psnr_matches_direct(toy_path, tmp_path):
    out = tmp_path / "ev"
    rc = main(["evaluate", "deocc", "--synthetic", "4", "--image-size", str(S), "--model", str(toy_path),
               "--seed", "7", "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    rows = _read(out / "metrics.csv")
    ident = {(r["group"], r["value"]): r for r in rows if r["method"] == "identity"}
    # the same held-out items, scored directly
    ds = OccludedFaceDataset(None, OcclusionDataConfig(image_size=S, seed=7, model=str(toy_path)), synthetic=4)
    items = [ds[i] for i in range(4)]
    clean = torch.stack([it["image"] for it in items])
    occ = torch.stack([it["occluded"] for it in items])
    p = psnr(occ, clean).clamp(max=PSNR_CAP)
    assert float(ident[("all", "all")]["psnr"]) == pytest.approx(p.mean().item(), rel=1e-5)
    assert float(ident[("all", "all")]["ssim"]) == pytest.approx(ssim(occ, clean).mean().item(), rel=1e-5)
    assert float(ident[("all", "all")]["mask_iou"]) == 0.0 and int(ident[("all", "all")]["n"]) == 4
    assert 0.5 < float(ident[("all", "all")]["identity"]) < 1.0  # occluders move the descriptor
    assert sum(int(r["n"]) for (g, _), r in ident.items() if g == "kind") == 4
    assert sum(int(r["n"]) for (g, _), r in ident.items() if g == "bucket") == 4
    oracle = next(r for r in rows if r["method"] == "oracle-fill" and r["group"] == "all")
    assert float(oracle["mask_iou"]) == 1.0 and float(oracle["psnr"]) > float(ident[("all", "all")]["psnr"])
    per_item = [r for r in _read(out / "items.csv") if r["method"] == "identity"]
    assert [float(r["psnr"]) for r in per_item] == pytest.approx(p.tolist(), rel=1e-5)
    grid = Image.open(out / "grid.png")
    # clean | occluded | mask | 2 methods, 4 rows, under a header of column names
    assert grid.size == (5 * (S + 2) + 2, 4 * (S + 2) + 2 + GRID_HEADER)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["items"]) == 8 and doc["rows"][0]["method"] == "identity"


def test_evaluate_generators_from_weights(test_generators, toy_path, tmp_path):
    half = save_generator(HalfGenerator(HalfConfig(gain=0.5)), tmp_path / "half.pt")
    paste = save_generator(PasteGenerator(PasteConfig()), tmp_path / "paste.pt")
    out = tmp_path / "ev"
    rc = main(["evaluate", "deocc", "--synthetic", "3", "--image-size", str(S), "--model", str(toy_path),
               "--weights", f"test-half={half}", "--weights", f"test-paste-re={paste}", "--no-identity",
               "--out", str(out), "--kinds", "rectangle,hand"])
    assert rc == 0
    rows = {(r["method"], r["group"], r["value"]): r for r in _read(out / "metrics.csv")}
    assert {m for m, _, _ in rows} == {"identity", "oracle-fill", "test-half", "test-paste-re"}
    ds = OccludedFaceDataset(None, OcclusionDataConfig(image_size=S, seed=1000, model=str(toy_path),
                                                       kinds=("rectangle", "hand")), synthetic=3)
    items = [ds[i] for i in range(3)]
    clean = torch.stack([it["image"] for it in items])
    occ = torch.stack([it["occluded"] for it in items])
    gt = torch.stack([it["mask"] for it in items])
    # test-half runs at 32²: down, × 0.5, up — the same resizing as the evaluation's
    import torch.nn.functional as F

    small = F.interpolate(occ, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    back = F.interpolate(small * 0.5, size=(S, S), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    r = rows[("test-half", "all", "all")]
    assert float(r["psnr"]) == pytest.approx(psnr(back, clean).mean().item(), rel=1e-4)
    assert float(r["mask_iou"]) == pytest.approx(mask_iou(torch.ones_like(gt), gt).mean().item(), rel=1e-4)
    assert float(r["psnr"]) < float(rows[("identity", "all", "all")]["psnr"])  # halving the image hurts
    paste_row = rows[("test-paste-re", "all", "all")]
    assert np.isfinite(float(paste_row["psnr"])) and 0 < float(paste_row["mask_iou"]) < 1
    assert paste_row["identity"] == "nan"


def test_bad_arguments(toy_path, tmp_path, capsys):
    assert main(["evaluate", "deocc", "--synthetic", "2", "--weights", "nonsense", "--out", str(tmp_path)]) != 0
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["evaluate", "deocc", "--synthetic", "2", "--generator", "test-half", "--out", str(tmp_path)]) != 0
    assert "needs weights" in capsys.readouterr().err


def test_dlib_identity_same_vs_different_person(shared_data):
    from deocc.identity import DlibFaceDescriptor, cosine_similarity, dlib_available

    if dlib_available():
        pytest.skip(dlib_available())
    faces = shared_data / "faces"
    labels = {r["path"]: r["identity"] for r in csv.DictReader(open(faces / "identity_labels.csv"))}
    paths = ["deepface/img1.jpg", "deepface/img2.jpg", "face_recognition/tests/test_images/obama.jpg",
             "face_recognition/tests/test_images/obama2.jpg"]
    assert [labels[p] for p in paths] == ["angelina_jolie", "angelina_jolie", "obama", "obama"]
    d = DlibFaceDescriptor()
    e = [d.embed_photo(faces / p) for p in paths]
    assert all(x is not None and x.shape == (128,) for x in e)
    E = torch.stack(e)
    dist = torch.cdist(E, E)
    # dlib's own decision rule: same person below 0.6 Euclidean distance
    assert dist[0, 1] < 0.6 and dist[2, 3] < 0.6
    assert dist[:2, 2:].min() > 0.6
    cos = cosine_similarity(E[[0, 2]], E[[1, 3]])  # same-person pairs
    cross = cosine_similarity(E[[0, 1]], E[[2, 3]])
    assert cos.min() > cross.max() + 0.05
    # an aligned-crop embedding (landmarks predicted in the crop) agrees with the photo's
    img = np.asarray(Image.open(faces / paths[0]).convert("RGB"))
    rect = max(d._detector(img, 1), key=lambda q: q.width() * q.height())
    pad = rect.width() // 3
    crop = img[max(rect.top() - pad, 0): rect.bottom() + pad, max(rect.left() - pad, 0): rect.right() + pad]
    crop = np.array(Image.fromarray(crop).resize((160, 160), Image.BILINEAR))
    t = torch.from_numpy(crop).permute(2, 0, 1).float() / 255
    c = d.embed(t[None])
    assert cosine_similarity(c, E[:1]).item() > 0.97
