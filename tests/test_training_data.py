"""PhotoFolderDataset (face3d/training/data.py) on a few real photos from ../shared."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from face3d.align import five_point_template, five_points, transform_points
from face3d.coefficients import FaceParams, aligned_camera, coefficient_count
from face3d.camera import project, transform
from face3d.errors import MissingInputError
from face3d.morphable_model import MorphableModel
from face3d.training.data import PhotoDatasetConfig, PhotoFolderDataset

PHOTOS = ("img10.jpg", "img12.jpg", "img14.jpg")


class NoDetector:
    """Stands in for the detector on a fully cached pass: any use is a test failure."""

    name = "dlib"

    def detect_image(self, image):
        raise AssertionError(f"the detector ran on {image.path} although it was cached")


@pytest.fixture(scope="module")
def folder(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for n in PHOTOS:  # links: the shared photos are read in place
        os.symlink(shared_data / "faces" / "deepface" / n, d / n)
    Image.fromarray(np.full((200, 240, 3), 128, np.uint8)).save(d / "blank.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def model():
    from face3d.toy_model import make_toy_model

    return MorphableModel(make_toy_model(seed=0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_photo_folder_dataset_aligns_fits_and_caches(folder, model, cache, caplog):
    cfg = PhotoDatasetConfig(landmarks="dlib")
    caplog.set_level(logging.WARNING, logger="face3d.training")
    ds = PhotoFolderDataset(folder, cache, cfg, model=model)
    assert len(ds) == 3  # blank.png: no face; broken.jpg: unreadable; notes.txt: not listed
    assert sorted(p.name for p, _ in ds.skipped) == ["blank.png", "broken.jpg"]
    assert "blank.png: no face found; skipped" in caplog.text
    assert [p.name for p, _, _ in ds.items] == list(PHOTOS)
    tpl = five_point_template(224)
    K = aligned_camera(1, dtype=torch.float64)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert item["params"].shape == (coefficient_count(model),)
        # the five points sit near the template (least squares over 5 real points: a few px)
        err = (five_points(item["landmarks"].double()) - tpl).norm(dim=-1)
        assert err.mean() < 6.0, err
        # the crop landmarks are the photo landmarks through the stored transform
        with np.load(ds.items[i][1]) as z:
            src = torch.from_numpy(z["source_landmarks"][0]).double()
        assert torch.allclose(transform_points(item["transform"].double()[None], src[None])[0],
                              item["landmarks"].double(), atol=1e-3)
        # the fit, re-projected with the aligned camera, lands on the crop landmarks
        p = FaceParams.split(item["params"][None].double(), model)
        verts = transform(model.shape(p.alpha, p.beta).double(), p.rotation(), p.camera_translation())
        uv = project(model.landmarks(verts), K)[0]
        inner = (uv[17:] - item["landmarks"][17:].double()).norm(dim=-1).mean()
        assert inner < 8.0 and abs(float(item["fit_error"]) - float((uv - item["landmarks"]).norm(dim=-1).mean())) < 3.0
        assert float(p.translation[0, 2]).__abs__() < 300  # a face of normal size sits near 1 m
    # the crop shows a face where the template says: darker eyes than the skin between them
    img = ds[0]["image"].mean(0)
    eye = img[int(tpl[0, 1]) - 2:int(tpl[0, 1]) + 3, int(tpl[0, 0]) - 2:int(tpl[0, 0]) + 3].mean()
    cheek = img[int(tpl[2, 1]) + 8:int(tpl[2, 1]) + 14, int(tpl[0, 0]) - 3:int(tpl[0, 0]) + 3].mean()
    assert eye < cheek

    # second pass: everything from the cache, the detector never runs, same items
    t0 = time.perf_counter()
    again = PhotoFolderDataset(folder, cache, cfg, model=model, detector=NoDetector()).prepare()
    elapsed = time.perf_counter() - t0
    assert len(again) == 3 and elapsed < 2.0
    assert torch.equal(again[1]["image"], ds[1]["image"]) and torch.equal(again[1]["params"], ds[1]["params"])
    # a different fit setting re-uses the cached detections but makes new fits
    cfg2 = PhotoDatasetConfig(landmarks="dlib", fit=type(cfg.fit)(rho_id=1e-2))
    refit = PhotoFolderDataset(folder, cache, cfg2, model=model, detector=NoDetector()).prepare()
    assert len(refit) == 3 and not torch.equal(refit[0]["params"], ds[0]["params"])
    assert len(list((cache / "faces").glob("*.npz"))) == 8  # 4 readable images × 2 settings


def test_dataset_errors(tmp_path):
    with pytest.raises(MissingInputError, match="no such folder"):
        PhotoFolderDataset(tmp_path / "nope", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="no images"):
        PhotoFolderDataset(tmp_path / "empty", tmp_path / "c")
    with pytest.raises(ValueError, match="template"):
        PhotoDatasetConfig(template="bfm")


def test_trainer_runs_on_the_photo_dataset(folder, model, cache, tmp_path):
    """The dataset plugs into the trainer (prepare() on rank 0, default collation): a tiny
    conv net regressing the fitted pose trains two steps and writes a sheet of the crops."""
    from face3d.training import OptimizerSpec, Trainer, TrainerConfig, TrainingTask

    class PoseTask(TrainingTask):
        def build(self, device):
            return {"net": torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(),
                                               torch.nn.Linear(3 * 28 * 28, 3)).to(device)}

        def optimizers(self, modules):
            return {"net": OptimizerSpec(modules["net"].parameters())}

        def training_step(self, modules, batch, ctx):
            angles = FaceParams.split(batch["params"], model).angles
            return {"loss": ((modules["net"](batch["image"]) - angles) ** 2).mean()}

        def sample(self, modules, batch):
            return batch["image"]

    ds = PhotoFolderDataset(folder, cache, PhotoDatasetConfig(landmarks="dlib"), model=model,
                            detector=NoDetector())
    cfg = TrainerConfig(out_dir=str(tmp_path), max_steps=2, batch_size=2, log_every=1, sample_every=2,
                        progress=False, tensorboard=False)
    Trainer(PoseTask(), ds, cfg).fit()
    sheet = Image.open(tmp_path / "samples" / "step_00000002.png")
    assert sheet.size == (3 * 226 + 2, 226 + 2)
