"""``evaluate deocc``: de-occlusion generators side by side on one held-out synthetic-occlusion set.

Every method sees the same items of :class:`deocc.data.OccludedFaceDataset` (photos and/or
synthetic faces, one occluder each, exact mask, drawn with a held-out seed) and is scored
against the clean face:

* PSNR, SSIM (Wang et al. 2004, 11×11 Gaussian, σ = 1.5) and MSE of the whole output crop, in
  [0, 1] sRGB (the measures of seeds/c2f_blind_face_completion.txt §IV-B and
  seeds/fd_stackgan.txt §4.5);
* mask IoU of the predicted occlusion mask against the true one (C2F §IV-B evaluates its mask
  estimate; a method that predicts no mask scores 0 on occluded items);
* identity: cosine similarity of dlib's 128-D descriptors of output and clean crop, both chips
  aligned from the item's landmarks (RLA §IV judges by face recognition; :mod:`deocc.identity`).

Rows: every method × (all items, each occluder kind, each position bucket eyes/nose/mouth/outside).
Aggregates are means of per-item values; an item's PSNR is capped at :data:`PSNR_CAP` dB so an
untouched image (PSNR = ∞) does not make the mean infinite.

Reference rows that need no weights are always there: ``identity`` (output = occluded input,
empty mask) and ``oracle-fill`` (the true mask filled by push-pull interpolation of the
surrounding pixels — what a method that finds the mask perfectly and inpaints smoothly scores).
Generators come from ``--weights NAME=PATH`` (:func:`face3d.generator.load_generator`); the
3D-guided ones get R_e (the item's ``params`` rendered with their albedo and light,
:func:`face3d.regressor.losses.render_face`), R_p (the occluded crop inside the rendered face
mask) and that face mask at the generator's resolution.

Outputs (``--out DIR``): ``metrics.csv`` (the rows), ``items.csv`` (one line per method and
item), ``grid.png`` (clean | occluded | true mask | each method's output, one row per item, under
a header naming the columns) and
the table printed; ``--json FILE`` writes rows and items as JSON.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from face3d.filters import push_pull_fill

__all__ = ["add_arguments", "run", "evaluate_methods", "identity_baseline", "oracle_fill_baseline",
           "push_pull_fill", "generator_method", "format_table", "PSNR_CAP", "METRICS", "EvalResult"]

#: Per-item PSNR cap (dB) used in the means (an unchanged image has PSNR = ∞).
PSNR_CAP = 100.0
#: Metric columns of the tables, in order.
METRICS = ("psnr", "ssim", "mse", "mask_iou", "identity")

# A method maps a batch (dict of the dataset's stacked items) to (image (B,3,S,S), mask (B,1,S,S)).
Method = Callable[[dict], tuple]


# --------------------------------------------------------------------------- baselines
def identity_baseline(batch: dict) -> tuple:
    """The occluded input unchanged, no occlusion found (the table's floor)."""
    import torch

    occ = batch["occluded"]
    return occ, torch.zeros_like(occ[:, :1])


def oracle_fill_baseline(batch: dict) -> tuple:
    """The true mask, its pixels filled by :func:`push_pull_fill` (a reference, not a method)."""
    m = batch["mask"]
    occ = batch["occluded"]
    filled = push_pull_fill(occ, 1.0 - m)
    return occ * (1 - m) + filled * m, m


def _resize(x, size: int, mode: str = "bilinear"):
    import torch.nn.functional as F

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def generator_method(generator, model=None, device: Any = "cpu") -> Method:
    """A method running a :class:`face3d.generator.Generator` at its own resolution (inputs and
    outputs resized). 3D-guided generators need the morphable ``model`` the items' params refer to."""
    import torch

    from face3d.generator import GeneratorInput

    if generator.uses_3d and model is None:
        raise ValueError(f"{generator.name} is 3D-guided: evaluating it needs the morphable model of the data")
    renderer = None

    @torch.no_grad()
    def run_batch(batch: dict) -> tuple:
        nonlocal renderer
        s_data = batch["occluded"].shape[-1]
        s = generator.image_size
        image = _resize(batch["occluded"], s).to(device)
        inputs = GeneratorInput(image=image)
        if generator.uses_3d:
            from face3d.coefficients import FaceParams
            from face3d.regressor.losses import render_face
            from face3d.render import Renderer, RenderSettings

            if renderer is None:
                renderer = Renderer(RenderSettings(image_size=s))
            params = FaceParams.split(batch["params"].to(model.device, model.dtype), model)
            r = render_face(model, params, s, renderer)
            face = r.mask.to(device, image.dtype)
            inputs = GeneratorInput(image=image, render_e=(r.srgb.clamp(0, 1) * r.mask).to(device, image.dtype),
                                    render_p=image * face, face_mask=face)
        out = generator(inputs)
        return (_resize(out.image.float().cpu(), s_data),
                (_resize(out.mask.float().cpu(), s_data) > 0.5).float())

    return run_batch


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """``rows``: one dict per (method, group) with ``method``, ``group`` (all / kind / bucket),
    ``value``, ``n`` and the :data:`METRICS` means; ``items``: one dict per (method, item);
    ``grid``: (3, H, W) tensor of the PNG grid, or None."""

    rows: list
    items: list
    grid: Any = None


def evaluate_methods(methods: dict, dataset, indices: Sequence[int], descriptor=None, batch_size: int = 8,
                     grid_rows: int = 6, progress: bool = False) -> EvalResult:
    """Score every method on ``dataset[indices]`` (module doc).

    Args:
        methods: name → method (batch dict → (image (B,3,S,S), mask (B,1,S,S))), in table order.
        dataset: a :class:`deocc.data.OccludedFaceDataset` (items with image, occluded, mask,
            landmarks, kind, bucket, params, index).
        descriptor: a :class:`deocc.identity.DlibFaceDescriptor`, or None to leave identity out (NaN).
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from deocc.data import BUCKETS, NO_OCCLUDER, OCCLUDER_KINDS
    from face3d.metrics import mask_iou, mse, psnr, ssim

    if not methods:
        raise ValueError("no methods to evaluate")
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="evaluate", unit="batch")
    items: list = []
    grid_tiles: list = []
    n_grid = 0
    for batch in loader:
        clean, lm = batch["image"], batch["landmarks"]
        ref = descriptor.embed(clean, lm) if descriptor is not None else None
        outs = {}
        for name, method in methods.items():
            img, m = method(batch)
            img, m = img.float().clamp(0, 1), m.float()
            outs[name] = img
            p = psnr(img, clean).clamp(max=PSNR_CAP)
            values = {"psnr": p, "ssim": ssim(img, clean), "mse": mse(img, clean),
                      "mask_iou": mask_iou(m, batch["mask"])}
            if ref is not None:
                from deocc.identity import cosine_similarity

                values["identity"] = cosine_similarity(descriptor.embed(img, lm), ref)
            for j in range(img.shape[0]):
                k = int(batch["kind"][j])
                items.append({"method": name, "index": int(batch["index"][j]),
                              "kind": "none" if k == NO_OCCLUDER else OCCLUDER_KINDS[k],
                              "bucket": BUCKETS[int(batch["bucket"][j])],
                              "coverage": float(batch["mask"][j].mean()),
                              **{key: float(values[key][j]) if key in values else float("nan") for key in METRICS}})
        take = min(img.shape[0], grid_rows - n_grid)
        for j in range(take):
            grid_tiles += [clean[j], batch["occluded"][j], batch["mask"][j].expand(3, -1, -1)]
            grid_tiles += [outs[name][j] for name in methods]
        n_grid += take
    rows = _aggregate(items, list(methods))
    grid = None
    if grid_tiles:
        from face3d.training.grid import make_grid

        grid = make_grid(torch.stack(grid_tiles), nrow=3 + len(methods))
        grid = _label_columns(grid, ["clean", "occluded", "true mask", *methods], grid_tiles[0].shape[-1])
    return EvalResult(rows, items, grid)


#: height in pixels of the grid's header row of column names
GRID_HEADER = 14


def _label_columns(grid, names: Sequence[str], tile: int, padding: int = 2):
    """``grid`` (3, H, W) with a white header row naming each column (cut to the tile width)."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    head = Image.new("RGB", (grid.shape[-1], GRID_HEADER), (255, 255, 255))
    d = ImageDraw.Draw(head)
    font = ImageFont.load_default()
    for i, name in enumerate(names):
        x = padding + i * (tile + padding)
        label = name
        while label and d.textlength(label, font=font) > tile:
            label = label[:-1]
        d.text((x + 1, 1), label, fill=(0, 0, 0), font=font)
    h = torch.from_numpy(np.asarray(head, np.float32) / 255.0).permute(2, 0, 1).to(grid)
    return torch.cat([h, grid], 1)


def _aggregate(items: list, methods: list) -> list:
    rows = []
    for name in methods:
        mine = [it for it in items if it["method"] == name]
        groups = [("all", "all", mine)]
        for field in ("kind", "bucket"):
            for value in sorted({it[field] for it in mine}):
                groups.append((field, value, [it for it in mine if it[field] == value]))
        for group, value, sel in groups:
            row = {"method": name, "group": group, "value": value, "n": len(sel)}
            for key in METRICS:
                vals = [it[key] for it in sel if not math.isnan(it[key])]
                row[key] = sum(vals) / len(vals) if vals else float("nan")
            rows.append(row)
    return rows


def format_table(rows: list, group: Optional[str] = None) -> str:
    """A fixed-width table of ``rows`` (only ``group`` rows if given)."""
    sel = [r for r in rows if group is None or r["group"] == group]
    head = f"{'method':<16} {'group':<7} {'value':<13} {'n':>4} " + " ".join(f"{k:>8}" for k in METRICS)
    lines = [head, "-" * len(head)]
    for r in sel:
        vals = " ".join(f"{r[k]:8.4f}" if not math.isnan(r[k]) else f"{'-':>8}" for k in METRICS)
        lines.append(f"{r['method']:<16} {r['group']:<7} {r['value']:<13} {r['n']:>4} {vals}")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list, columns: Sequence[str]) -> None:
    from face3d.io_utils import write_bytes_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_bytes_atomic(path, buf.getvalue().encode())


# --------------------------------------------------------------------------- CLI
def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Arguments of ``evaluate deocc``."""
    parser.add_argument("--generator", action="append", default=None, metavar="NAME",
                        help="generator to evaluate (repeatable); 'all' (default) = every generator given --weights")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                        help="weights of a generator: a save_generator file or a training run/checkpoint")
    parser.add_argument("--data", help="folder of face photos (held-out faces)")
    parser.add_argument("--synthetic", type=int, default=None,
                        help="synthetic 3DMM faces added after the photos (default 64 without --data, else 0)")
    parser.add_argument("--count", type=int, default=None, help="evaluate the first N items (default all)")
    parser.add_argument("--seed", type=int, default=1000, help="occlusion/face seed of the held-out set (default 1000)")
    parser.add_argument("--image-size", type=int, default=224, help="crop side of the data (default 224)")
    parser.add_argument("--kinds", help="comma-separated occluder kinds (default all)")
    parser.add_argument("--model", default="auto", help="morphable model for synthetic faces, fits and R_e")
    parser.add_argument("--occluders", help="folder of occluder images (default ../shared/data/occluders if present)")
    parser.add_argument("--no-identity", action="store_true", help="skip the dlib identity similarity")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grid-rows", type=int, default=6, help="items shown in grid.png (default 6)")
    parser.add_argument("--out", default="runs/evaluate-deocc", help="folder for metrics.csv, items.csv, grid.png")
    parser.add_argument("--json", help="also write rows and items as JSON to this file")
    parser.add_argument("--device", default="cpu", help="torch device of the generators (default cpu)")


def _parse_weights(entries: Sequence[str]) -> dict:
    out = {}
    for e in entries:
        if "=" not in e:
            raise ValueError(f"--weights expects NAME=PATH, got {e!r}")
        name, path = e.split("=", 1)
        if not name or not path:
            raise ValueError(f"--weights expects NAME=PATH, got {e!r}")
        out[name.strip()] = path
    return out


def run(name: str, args: argparse.Namespace) -> int:
    """Run ``evaluate deocc`` (module doc); returns the exit code."""
    import torch

    from deocc.data import OccludedFaceDataset, OcclusionDataConfig
    from face3d.generator import available_generators, load_generator
    from face3d.imageio import save_image_atomic

    weights = _parse_weights(args.weights)
    wanted = args.generator or ["all"]
    names: list = []
    for g in wanted:
        if g == "all":
            names += [n for n in available_generators() if n in weights and n not in names]
            names += [n for n in weights if n not in names]  # registered by a weights file's module
        elif g not in names:
            if g not in weights:
                raise ValueError(f"generator {g!r} needs weights: --weights {g}=PATH")
            names.append(g)
    synthetic = args.synthetic if args.synthetic is not None else (0 if args.data else 64)
    if synthetic < 0 or (synthetic == 0 and not args.data):
        raise ValueError("nothing to evaluate on: give --data DIR and/or --synthetic N > 0")
    if args.count is not None and args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    kw = {}
    if args.kinds:
        kw["kinds"] = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    cfg = OcclusionDataConfig(image_size=args.image_size, seed=args.seed, model=args.model,
                              occluders=args.occluders, **kw)
    model = None
    gens = {}
    for n in names:
        gens[n] = load_generator(weights[n], device=args.device, name=n)
        if gens[n].uses_3d and model is None:
            from face3d.model_zoo import load_model

            model = load_model(args.model)
    dataset = OccludedFaceDataset(args.data, cfg, synthetic=synthetic, model=model).prepare()
    count = len(dataset) if args.count is None else min(args.count, len(dataset))
    if count == 0:
        raise ValueError(f"{args.data}: no usable face in the data")
    methods: dict = {"identity": identity_baseline, "oracle-fill": oracle_fill_baseline}
    for n, g in gens.items():
        methods[n] = generator_method(g, model, args.device)
    descriptor = None
    if not args.no_identity:
        from deocc.identity import DlibFaceDescriptor, dlib_available

        reason = dlib_available()
        if reason:
            print(f"note: identity similarity skipped: {reason}")
        else:
            descriptor = DlibFaceDescriptor()
    with torch.no_grad():
        result = evaluate_methods(methods, dataset, range(count), descriptor, args.batch_size, args.grid_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "metrics.csv", result.rows, ["method", "group", "value", "n", *METRICS])
    _write_csv(out / "items.csv", result.items, ["method", "index", "kind", "bucket", "coverage", *METRICS])
    if result.grid is not None:
        save_image_atomic(out / "grid.png", result.grid.clamp(0, 1))
    if args.json:
        from face3d.io_utils import write_bytes_atomic

        nan_free = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        doc = {"rows": [{k: nan_free(v) for k, v in r.items()} for r in result.rows],
               "items": [{k: nan_free(v) for k, v in r.items()} for r in result.items]}
        write_bytes_atomic(Path(args.json), json.dumps(doc, indent=1).encode())
    print(f"{count} held-out items (seed {args.seed}, {args.image_size}² crops); methods: {', '.join(methods)}")
    print(format_table(result.rows, "all"))
    print()
    print(format_table([r for r in result.rows if r["group"] != "all"]))
    print(f"wrote {out / 'metrics.csv'}, {out / 'items.csv'}" + (f", {out / 'grid.png'}" if result.grid is not None
                                                                  else ""))
    return 0
