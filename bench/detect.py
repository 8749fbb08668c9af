"""Detection + landmarks per 640×480 photo: the cascade stage by stage, against dlib HOG alone.

Photos are made from ../shared CFP people (frontal and profile, half each): each photo is
scaled so its face is about 200 px tall and pasted at a random place of a 640×480 canvas of
another photo's blurred pixels, so detectors see a scene, not a tight crop. Per photo it
times the cascade's stages (``hog``, ``cnn``, ``haar``, ``landmarks``), the regressor's two
passes and the LM fit (``reconstruct``'s landmark stages: :meth:`Reconstructor.align`), and
prints the detection rate and the mean / median ms, with HOG alone as the baseline run in
the same process.

    .venv/bin/python bench/detect.py [--count 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _photos(shared: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    root = shared / "data" / "faces" / "cfp" / "images"
    people = sorted(p.name for p in root.iterdir())
    out = []
    for k in range(count):
        person = people[int(rng.integers(len(people)))]
        kind = "frontal" if k % 2 == 0 else "profile"
        files = sorted((root / person / kind).glob("*.jpg"))
        face = Image.open(files[int(rng.integers(len(files)))]).convert("RGB")
        face = face.resize((max(1, round(face.width * 260 / face.height)), 260))
        bg = Image.open(sorted((root / people[int(rng.integers(len(people)))] / "frontal").glob("*.jpg"))[0])
        canvas = bg.convert("RGB").resize((640, 480)).filter(ImageFilter.GaussianBlur(8))
        x, y = int(rng.integers(0, 640 - face.width)), int(rng.integers(0, 480 - face.height))
        canvas.paste(face, (x, y))
        out.append(np.asarray(canvas))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="ict")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from face3d.imageio import LoadedImage
    from face3d.landmarks import get_detector
    from face3d.pipeline import ReconstructConfig, Reconstructor

    shared = Path(os.environ.get("FACE3D_SHARED", REPO.parent / "shared"))
    photos = _photos(shared, args.count)
    hog = get_detector("dlib")
    rec = Reconstructor(ReconstructConfig(model=args.model, landmarks="cascade"))
    rec.align(LoadedImage(photos[0], None, "RGB", (640, 480)))  # warm-up: model, regressor, CNN weights
    rows = {"hog_only": [], "cascade": [], "align": []}
    stages: dict[str, list[float]] = {}
    found_hog = found = 0
    for rgb in photos:
        t0 = time.perf_counter()
        f = hog.detect(rgb)
        rows["hog_only"].append((time.perf_counter() - t0) * 1000)
        found_hog += bool(f)
        img = LoadedImage(rgb, None, "RGB", (640, 480))
        t0 = time.perf_counter()
        faces = rec.detect_faces(img)
        rows["cascade"].append((time.perf_counter() - t0) * 1000)
        for k, v in rec.detector.last_timings_ms.items():
            stages.setdefault(k, []).append(v)
        if faces:
            found += 1
            t0 = time.perf_counter()
            aligned, _ = rec.align(img, faces=faces[:1])
            rows["align"].append((time.perf_counter() - t0) * 1000)
            for k, v in aligned[0].timings_ms.items():
                stages.setdefault(k, []).append(v)
    n = len(photos)
    print(f"{n} photos 640x480 (half CFP frontals, half profiles), {args.threads} thread(s)")
    print(f"detected: HOG alone {found_hog}/{n}, cascade {found}/{n}")
    for k, v in rows.items():
        print(f"{k:<10} mean {np.mean(v):7.1f} ms  median {np.median(v):7.1f} ms")
    for k, v in stages.items():
        print(f"  stage {k:<10} runs {len(v):3d}  mean {np.mean(v):7.1f} ms  median {np.median(v):7.1f} ms")
    total = np.mean(rows["cascade"]) + (np.mean(rows["align"]) if rows["align"] else 0.0)
    print(f"ratio cascade / HOG-alone detection time: {np.mean(rows['cascade']) / np.mean(rows['hog_only']):.2f}")
    print(f"detect_plus_landmarks_ms {total:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
