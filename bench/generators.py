"""Forward-pass cost of every registered de-occlusion generator (face3d.generator).

For each generator: parameters (millions) and milliseconds per image of a forward pass at its
paper size and at a CPU size (``--size``, widths shrunk as ``--width``), batch 1, no gradients,
best and median of ``--repeat`` runs after one warm-up. The ratio column is each model's CPU
time against the fastest model's, in this process.

    .venv/bin/python bench/generators.py [--threads 1] [--size 96] [--width 16] [--repeat 5]

Ends with one line ``generators_fastest_cpu_ms VALUE ms``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from face3d.generator import BUILTIN_GENERATORS, GeneratorInput, build_generator

#: the width-like fields of each generator's config shrunk for the CPU size
_WIDTH_FIELDS = {"cfrgan": ("ngf",), "conditioned": ("width",), "stackgan": ("width",), "rla": ("hidden_size",),
                 "c2f": ("width",)}


def _time(gen, size: int, repeat: int) -> tuple[float, float]:
    x = torch.rand(1, 3, size, size)
    inp = GeneratorInput(image=x, render_e=torch.rand_like(x), render_p=x.clone(),
                         face_mask=torch.ones(1, 1, size, size), mask=torch.zeros(1, 1, size, size))
    times = []
    with torch.no_grad():
        gen(inp)
        for _ in range(repeat):
            t = time.perf_counter()
            gen(inp)
            times.append((time.perf_counter() - t) * 1000)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--paper-size", action="store_true", help="also time the paper-size models (slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in BUILTIN_GENERATORS:
        over = {"image_size": args.size, **{f: (128 if f == "hidden_size" else args.width) for f in _WIDTH_FIELDS[name]}}
        if name in ("conditioned", "stackgan"):
            over["max_width"] = 8 * args.width
        cpu = build_generator(name, overrides=over).eval()
        row = {"name": name, "cpu_params": sum(p.numel() for p in cpu.parameters()) / 1e6,
               "cpu_ms": _time(cpu, args.size, args.repeat)}
        if args.paper_size:
            full = build_generator(name).eval()
            row["paper_params"] = sum(p.numel() for p in full.parameters()) / 1e6
            row["paper_ms"] = _time(full, full.image_size, max(1, args.repeat // 2))
            row["paper_size"] = full.image_size
        rows.append(row)
    fastest = min(r["cpu_ms"][0] for r in rows)
    print(f"{'generator':<12} {'size':>5} {'params M':>9} {'best ms':>9} {'median ms':>10} {'× fastest':>9}")
    for r in rows:
        print(f"{r['name']:<12} {args.size:>5} {r['cpu_params']:>9.2f} {r['cpu_ms'][0]:>9.1f} {r['cpu_ms'][1]:>10.1f} "
              f"{r['cpu_ms'][0] / fastest:>9.2f}")
        if "paper_ms" in r:
            print(f"{'  (paper)':<12} {r['paper_size']:>5} {r['paper_params']:>9.2f} {r['paper_ms'][0]:>9.1f} "
                  f"{r['paper_ms'][1]:>10.1f}")
    print(f"generators_fastest_cpu_ms {fastest:.1f} ms")


if __name__ == "__main__":
    main()
