"""deocc.data (synthetic-occlusion dataset) and the C2F-spec occluders / position buckets."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deocc.data import BUCKETS, NO_OCCLUDER, OCCLUDER_KINDS, OccludedFaceDataset, OcclusionDataConfig
from face3d.synth.occluders import (RECT_AREA_RATIO, TEXT_HEIGHT_RATIO, face_regions, occlude, position_bucket)

pytestmark = pytest.mark.usefixtures("one_thread")
S = 64


@pytest.fixture(scope="module")
def toy():
    from face3d.morphable_model import MorphableModel
    from face3d.toy_model import make_toy_model

    return MorphableModel(make_toy_model(seed=0))


def _ds(toy, n=6, **kw):
    return OccludedFaceDataset(None, OcclusionDataConfig(image_size=S, **kw), synthetic=n, model=toy)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_items_are_deterministic_per_index(toy):
    ds = _ds(toy, seed=5)
    first = [ds[i] for i in range(4)]
    again = _ds(toy, seed=5)
    for i in (3, 1):  # another instance, another order
        _same(first[i], again[i])
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, S, S) and batch["mask"].shape == (4, 1, S, S)
    assert batch["landmarks"].shape == (4, 68, 2) and batch["params"].shape[0] == 4
    assert torch.equal(batch["occluded"][2], first[2]["occluded"])
    assert batch["kind"].tolist() == [f["kind"] for f in first]
    other = _ds(toy, seed=6)[1]
    assert not torch.equal(other["mask"], first[1]["mask"])


def test_mask_is_exact_and_binary(toy):
    ds = _ds(toy, n=8, seed=1)
    for i in range(len(ds)):
        it = ds[i]
        m = it["mask"]
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert m.sum() > 0 and it["kind"] in range(len(OCCLUDER_KINDS)) and it["bucket"] in range(4)
        keep = (m == 0).expand(3, -1, -1)
        assert torch.equal(it["occluded"][keep], it["image"][keep])  # bit-identical outside
        assert it["exact"].item() == 1.0 and it["params"].dtype == torch.float32


def test_rectangles_follow_c2f(toy):
    """C2F §IV-A: one colour, area ratio 0.01-0.15, aspect 0.5-2, composited as eq. 1."""
    ds = _ds(toy, n=6, seed=2, kinds=("rectangle",), min_area=0.0)
    whole = 0
    for i in range(len(ds)):
        it = ds[i]
        m = it["mask"][0] > 0
        inside = it["occluded"][:, m]
        assert torch.allclose(inside, inside[:, :1].expand_as(inside), atol=1e-5)  # one colour
        ys, xs = torch.nonzero(m, as_tuple=True)
        h, w = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        if ys.min() > 0 and xs.min() > 0 and ys.max() < S - 1 and xs.max() < S - 1:  # not clipped
            assert m.sum().item() == h * w  # a filled axis-aligned rectangle
            assert RECT_AREA_RATIO[0] * 0.7 <= h * w / S**2 <= RECT_AREA_RATIO[1] * 1.2
            assert 0.5 * 0.7 <= w / h <= 2.0 / 0.7  # rounding to whole pixels at 64 px
            whole += 1
    assert whole >= 3


def test_text_height_ratio_and_new_kinds(toy):
    face = _ds(toy, n=1, seed=0)[0]
    heights = []
    for seed in range(12):
        r = occlude(face["image"], face["landmarks"], "text", seed)
        rows = np.flatnonzero((r.mask > 0.5).any(1))
        if len(rows) and rows[0] > 0 and rows[-1] < S - 1:
            heights.append((rows[-1] - rows[0] + 1) / S)
    assert len(heights) >= 6 and max(heights) <= TEXT_HEIGHT_RATIO[1] + 2 / S
    for kind in ("book", "phone"):
        r = occlude(face["image"], face["landmarks"], kind, 3)
        assert r.mask.max() > 0.99 and r.layer is not None
        recon = face["image"].permute(1, 2, 0).numpy() * (1 - r.mask[..., None]) + r.layer
        assert np.allclose(recon, r.image.permute(1, 2, 0).numpy(), atol=1e-6)


def test_position_buckets(toy):
    lm = _ds(toy, n=1, seed=0)[0]["landmarks"].numpy()
    regions = face_regions(lm, S, S)
    assert regions.shape == (3, S, S) and all(r.sum() > 10 for r in regions)

    def box(points, pad=1):
        m = np.zeros((S, S), np.float32)
        x0, y0 = np.floor(points.min(0)).astype(int) - pad
        x1, y1 = np.ceil(points.max(0)).astype(int) + pad
        m[max(y0, 0): y1 + 1, max(x0, 0): x1 + 1] = 1
        return m

    assert BUCKETS[position_bucket(box(lm[48:60]), lm)] == "mouth"
    assert BUCKETS[position_bucket(box(lm[36:48]), lm)] == "eyes"
    assert BUCKETS[position_bucket(box(lm[30:36], pad=0), lm)] == "nose"
    corner = np.zeros((S, S), np.float32)
    corner[:6, :6] = 1
    assert BUCKETS[position_bucket(torch.from_numpy(corner)[None], lm)] == "outside"
    # dataset items: a medical mask sits on the mouth
    it = _ds(toy, n=1, seed=0, kinds=("medical_mask",))[0]
    assert OCCLUDER_KINDS[it["kind"]] == "medical_mask" and BUCKETS[it["bucket"]] == "mouth"


def test_occlusion_prob_and_soft_edges(toy):
    clean = _ds(toy, n=2, occlusion_prob=0.0)[1]
    assert clean["kind"] == NO_OCCLUDER and clean["mask"].sum() == 0
    assert torch.equal(clean["occluded"], clean["image"])
    soft = _ds(toy, n=2, seed=4, edges="soft")[0]
    hard = _ds(toy, n=2, seed=4, edges="hard")[0]
    assert soft["kind"] == hard["kind"]
    assert soft["mask"].sum() >= hard["mask"].sum()  # every touched pixel vs coverage >= 0.5
    keep = (soft["mask"] == 0).expand(3, -1, -1)
    assert torch.equal(soft["occluded"][keep], soft["image"][keep])


def test_bad_config():
    with pytest.raises(ValueError, match="kinds"):
        OcclusionDataConfig(kinds=("hat",))
    with pytest.raises(ValueError, match="weights"):
        OcclusionDataConfig(kinds=("hand", "cup"), weights=(1.0,))
    with pytest.raises(ValueError, match="no faces"):
        OccludedFaceDataset(None, OcclusionDataConfig())
    with pytest.raises(FileNotFoundError):
        OccludedFaceDataset("/nonexistent/photos", OcclusionDataConfig())


def test_photo_folder_items(shared_data, toy, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    os.symlink(shared_data / "faces" / "deepface" / "img10.jpg", photos / "img10.jpg")
    cfg = OcclusionDataConfig(image_size=S, seed=0, landmarks="dlib", cache_dir=str(tmp_path / "cache"))
    ds = OccludedFaceDataset(photos, cfg, synthetic=1, model=toy)
    assert len(ds) == 2 and ds.n_photos == 1
    it = ds[0]
    assert it["exact"].item() == 0.0 and it["image"].shape == (3, S, S)
    assert it["params"].shape == ds[1]["params"].shape  # same coefficient layout as synthetic faces
    keep = (it["mask"] == 0).expand(3, -1, -1)
    assert torch.equal(it["occluded"][keep], it["image"][keep]) and it["mask"].sum() > 0
    # a face's landmarks are inside the crop, around its centre
    assert (it["landmarks"].mean(0) - S / 2).abs().max() < S / 4
