"""The shipped large-pose regressor on a small fixed slice of AFLW2000-3D (evaluation only).

The slice is the first 8 images of each |yaw| bin (sorted by name) of
../shared/data/faces/aflw2000_dev, found by the detector cascade: the regressor's two passes,
its points fused with dlib's and the LM fit (``init="regressor"``), against dlib's points on the
same detections (``init="landmarks"``). The margins are stated per bin below, from the figures
measured on this slice (in the comments) with room for run-to-run noise. On so few faces one
bad fit moves a bin's mean by a point or more; the whole set's figures are in the README.
"""
from __future__ import annotations

import pytest

from face3d.landmarks.evaluate import evaluate_samples, summarize
from face3d.landmarks.groundtruth import read_aflw2000

pytestmark = pytest.mark.usefixtures("one_thread")

PER_BIN = 8


@pytest.fixture(scope="module")
def aflw_slice(shared_data):
    folder = shared_data / "faces" / "aflw2000_dev"
    if not folder.is_dir():
        pytest.skip("aflw2000_dev not in ../shared")
    samples = read_aflw2000(folder)
    out, seen = [], {0: 0, 1: 0, 2: 0}
    for s in samples:
        if seen[s.yaw_bin] < PER_BIN:
            out.append(s)
            seen[s.yaw_bin] += 1
    return out


@pytest.fixture(scope="module")
def slice_summaries(aflw_slice, ict_model):
    from face3d.pipeline import ReconstructConfig

    res = {}
    for init in ("landmarks", "regressor"):
        cfg = ReconstructConfig(model=str(ict_model), init=init)
        res[init] = summarize(evaluate_samples(aflw_slice, cfg, gt_box=False, progress=False))
    return res


# measured on this slice: default (regressor where HOG gave up) 4.84 / 14.98 / 25.85 %,
# dlib's points everywhere 4.84 / 13.43 / 27.32 %
LIMITS = {"[0,30)": 0.055, "[30,60)": 0.170, "[60,90]": 0.270}


def test_shipped_regressor_margin_per_bin(slice_summaries):
    reg, dlib = slice_summaries["regressor"], slice_summaries["landmarks"]
    for name, limit in LIMITS.items():
        assert reg["bins"][name]["detection_rate"] == 1.0
        assert reg["bins"][name]["nme"] < limit, (name, reg["bins"][name], dlib["bins"][name])
    # at 60-90° dlib's 2-D points fail: there the regressor must beat them (measured 0.946×; on
    # all 1000 images 22.3 % against 27.8 %)
    assert reg["bins"]["[60,90]"]["nme"] < 0.97 * dlib["bins"]["[60,90]"]["nme"], (reg["bins"], dlib["bins"])
