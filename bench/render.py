"""Render speed: milliseconds per 224² frame of the ICT-FaceKit face, per rasterizer backend.

Measures, for each backend available here, (a) rasterization alone (visibility + the torch
barycentrics/depth), (b) a full shaded render (vertex normals, interpolation, SH shading,
compositing), and (c) forward + backward of a photometric loss through the full render.
The face (ICT face region, 9409 vertices, 18 460 triangles) looks at the camera with a
20° yaw and fills most of the frame, as in a 224² crop for fitting.

Mesh source, first that works: ``--model`` (a face3d .npz), the ICT converter on
``--ict`` (default ../shared/data/models/ict-facekit.tar.xz), or, if the converter is not
importable, the neutral mesh read straight from that archive.

Usage: ``python bench/render.py [--threads N] [--repeats R] [--batch 1,8,32] [--backends torch]``.
The last line is ``render_ms_per_frame VALUE ms``: the default ("auto") backend's full render
at the first batch size, best of the repeats (the least disturbed run on a shared machine;
medians and CPU times are printed too, with the load average). On a busy 2-core machine
``--threads 1`` is usually faster: torch's second thread mostly waits for a core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from face3d.camera import Intrinsics, euler_to_matrix, transform
from face3d.lighting import NUM_SH
from face3d.render import RenderSettings, Renderer, available_rasterizers, get_rasterizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ICT = Path(os.environ.get("FACE3D_SHARED", REPO.parent / "shared")) / "data/models/ict-facekit.tar.xz"


def _neutral_from_archive(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """ICT neutral face region straight from the archive: vertices (9409, 3) mm, triangles.

    TODO: drop once face3d.converters.ict (convert_ict) is merged; it is the supported path.
    """
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            if member.name.endswith("FaceXModel/generic_neutral_mesh.obj"):
                text = tf.extractfile(member).read().decode()
                break
        else:
            raise FileNotFoundError(f"{path} holds no FaceXModel/generic_neutral_mesh.obj")
    verts, faces = [], []
    for line in text.splitlines():
        if line.startswith("v "):
            verts.append([float(t) for t in line.split()[1:4]])
        elif line.startswith("f "):
            faces.append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
    v = np.asarray(verts[:9409]) * 10.0  # cm → mm
    tris = []
    for poly in faces[:9230]:  # face region polygons; fan-split the quads
        for k in range(1, len(poly) - 1):
            tris.append([poly[0], poly[k], poly[k + 1]])
    return v.astype(np.float32), np.asarray(tris, np.int64)


def load_face(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(vertices mm, triangles, albedo, description)."""
    if args.model:
        from face3d.morphable_model import load_model_arrays

        m = load_model_arrays(args.model)
        return m.mean_shape, m.triangles, m.mean_albedo, f"{args.model}"
    try:
        from face3d.converters.ict import convert_ict
    except ImportError:
        convert_ict = None
    if convert_ict is not None:
        m = convert_ict(args.ict)
        return m.mean_shape, m.triangles, m.mean_albedo, "ICT via face3d.converters.ict"
    v, t = _neutral_from_archive(Path(args.ict))
    albedo = np.tile(np.array([[0.62, 0.42, 0.33]], np.float32), (len(v), 1))
    return v, t, albedo, "ICT neutral mesh read from the archive"


def timeit(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, median process-CPU) milliseconds of ``fn()`` over ``repeats``
    runs after two warm-ups. On a shared machine the wall time includes waiting for a core;
    the minimum and the CPU time are the better estimates of the cost itself."""
    fn()
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def scene(verts: np.ndarray, albedo: np.ndarray, b: int, size: int):
    """Camera-frame vertices (B, N, 3), albedo, intrinsics and SH for a batch of B identical frames."""
    v = torch.as_tensor(verts, dtype=torch.float32)[None].expand(b, -1, -1)
    alb = torch.as_tensor(albedo, dtype=torch.float32)[None].expand(b, -1, -1).contiguous()
    K = Intrinsics.default(size, size, batch=b)
    # distance so that the face (about 150 mm wide) spans ~80% of the frame
    width_mm = float(v[0, :, 0].max() - v[0, :, 0].min())
    dist = float(K.focal[0, 0]) * width_mm / (0.8 * size)
    center = v[0].mean(0)
    R = euler_to_matrix(torch.full((b,), 20.0), torch.full((b,), -5.0), torch.zeros(b))
    t = torch.tensor([0.0, 0.0, dist]).expand(b, 3) - (center @ R.transpose(-1, -2))
    vc = transform(v, R, t).contiguous()
    sh = torch.zeros(b, 3 * NUM_SH)
    sh[:, 2::NUM_SH] = 0.3  # some light from the camera side
    return vc, alb, K, sh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="face3d model .npz to render instead of ICT")
    ap.add_argument("--ict", default=str(DEFAULT_ICT), help="ICT-FaceKit archive or folder")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,8,32 (ms are per frame)")
    ap.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1 (fewer for larger batches)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    ap.add_argument("--backends", default="", help="comma-separated backends (default: all available at "
                    "batch 1, the default backend only for larger batches)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    verts, tris, albedo, source = load_face(args)
    print(f"mesh: {source}; {len(verts)} vertices, {len(tris)} triangles (loaded in {time.perf_counter() - t0:.1f} s)")
    tri = torch.as_tensor(tris, dtype=torch.long)
    size = args.size
    batches = [int(x) for x in args.batch.split(",") if x.strip()]
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"image {size}x{size}, batches {batches}, torch threads {torch.get_num_threads()}, "
          f"backends available: {', '.join(available_rasterizers())}; 1-min load average {load0:.1f} "
          f"on {os.cpu_count()} cores")

    results: dict[tuple[str, int], float] = {}
    auto_name = get_rasterizer("auto").name
    for b in batches:
        vc, alb, K, sh = scene(verts, albedo, b, size)
        names = [n for n in args.backends.split(",") if n] or (available_rasterizers() if b == 1 else [auto_name])
        repeats = max(5, args.repeats // b)
        for name in names:
            r = Renderer(RenderSettings(image_size=size, backend=name))
            out = r.render(vc, tri, K, albedo=alb, sh=sh)
            cover = float(out.mask.mean())
            rast = timeit(lambda: r.rasterize(vc, tri, K), repeats)
            full = timeit(lambda: r.render(vc, tri, K, albedo=alb, sh=sh), repeats)
            vg = vc.clone().requires_grad_(True)
            sg = sh.clone().requires_grad_(True)

            def fwd_bwd() -> None:
                img = r.render(vg, tri, K, albedo=alb, sh=sg).image
                img.square().mean().backward()

            grad = timeit(fwd_bwd, max(5, repeats // 2))
            results[(name, b)] = full[1] / b
            print(f"[{name}, batch {b}] coverage {cover:.1%}; ms per frame as median wall / min wall / median CPU:")
            for what, (med, best, cpu) in (("rasterize", rast), ("full render", full), ("render + backward", grad)):
                print(f"    {what:18s} {med / b:7.2f} / {best / b:7.2f} / {cpu / b:7.2f}")
    target = 10.0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    key = (auto_name, batches[0])
    value = results.get(key, float("nan"))
    print(f"default backend: {auto_name}; full render at batch {batches[0]}, best of {max(5, args.repeats // batches[0])}: "
          f"{value:.2f} ms per frame (target <= {target:.0f} ms: {'met' if value <= target else 'NOT met'}; "
          f"1-min load average {load0:.1f} before, {load:.1f} after, on {os.cpu_count()} cores)")
    print(f"render_ms_per_frame {value:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
