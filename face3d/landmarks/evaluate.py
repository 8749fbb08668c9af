"""``evaluate landmarks``: the pipeline's 68 fitted points against ground truth, per yaw bin.

Protocol (AFLW2000-3D, Zhu et al. 2016; the figure 3DDFA, CFR-GAN and Deng et al. report):
NME = mean over the 68 points of ‖predicted − true‖ / √(w·h), with w × h the box of the
*ground-truth* 68 points; images are grouped by |yaw| into [0°, 30°), [30°, 60°), [60°, 90°]
and the "balanced" figure is the mean of the three bin means. The prediction is what the
toolkit gives a user: :meth:`face3d.pipeline.Reconstructor.align` (its own detection, or the
ground-truth box with ``--gt-box``; then the regressor when ``init="regressor"`` and the LM
fit), read as the fitted model's 68 landmark vertices projected into the photo.

An image where no face is found counts against the detection rate and is left out of the NME
means (reported as the detection rate beside them, as the issue's baseline does); the face
kept is the one whose box centre is nearest the ground truth's, and it counts as found only
when that centre lies within half the ground-truth box size of it (a false detection
elsewhere in the photo is a miss, not a huge NME). Where per-point visibility labels exist
(MERL-RAV, ``labels.npz``), the NME is also split into points hidden by an object
(``externally_occluded``) and the others: the mean of the per-point normalised errors pooled
over every labelled image.

Outputs (``--out DIR``): ``images.csv`` (one row per image), ``summary.json``, ``ced.png``
(the cumulative error distribution per bin) and ``sheet.png`` (a contact sheet: per bin, images
spread over it with the true and the fitted points), plus a printed table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from face3d.landmarks.groundtruth import YAW_BINS, LandmarkSample

__all__ = ["point_errors", "ImageResult", "summarize", "evaluate_samples", "format_summary", "ced_plot",
           "contact_sheet",
           "add_arguments", "run"]


def point_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(68,) per-point error ‖pred − gt‖ / √(w·h) of the ground truth's box (module doc)."""
    gt = np.asarray(gt, np.float64)
    wh = gt.max(0) - gt.min(0)
    norm = math.sqrt(max(float(wh[0] * wh[1]), 1e-12))
    return np.linalg.norm(np.asarray(pred, np.float64) - gt, axis=1) / norm


@dataclass
class ImageResult:
    """One evaluated image. ``nme`` is NaN when no face was found; ``errors`` (68,) per point."""

    name: str
    yaw_deg: Optional[float]
    yaw_bin: Optional[int]
    found: bool
    nme: float = float("nan")
    detector: str = ""
    errors: Optional[np.ndarray] = field(default=None, repr=False)
    predicted: Optional[np.ndarray] = field(default=None, repr=False)
    externally_occluded: Optional[np.ndarray] = field(default=None, repr=False)
    time_ms: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def row(self) -> dict[str, Any]:
        occ = self.externally_occluded
        e = self.errors
        def mean_or_nan(sel):
            return float(e[sel].mean()) if e is not None and sel is not None and sel.any() else float("nan")
        return {"name": self.name, "yaw_deg": "" if self.yaw_deg is None else round(self.yaw_deg, 2),
                "bin": "" if self.yaw_bin is None else _bin_name(self.yaw_bin), "found": int(self.found),
                "nme": round(self.nme, 6) if self.found else "", "detector": self.detector,
                "nme_occluded": "" if occ is None or not self.found else round(mean_or_nan(occ), 6),
                "nme_visible": "" if occ is None or not self.found else round(mean_or_nan(~occ), 6),
                "n_occluded": "" if occ is None else int(occ.sum()),
                **{f"ms_{k}": round(v, 1) for k, v in self.time_ms.items()}, "error": self.error}


def _bin_name(b: int) -> str:
    return f"[{YAW_BINS[b]:g},{YAW_BINS[b + 1]:g}{']' if b == len(YAW_BINS) - 2 else ')'}"


def summarize(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Per-bin and overall figures: count, detection rate, mean NME (found faces), the balanced
    mean of the bin means, visible / externally occluded NME and mean ms per stage."""
    out: dict[str, Any] = {"bins": {}}
    bin_means = []
    for b in range(len(YAW_BINS) - 1):
        rs = [r for r in results if r.yaw_bin == b]
        found = [r for r in rs if r.found]
        m = float(np.mean([r.nme for r in found])) if found else float("nan")
        out["bins"][_bin_name(b)] = {"n": len(rs), "detected": len(found),
                                     "detection_rate": len(found) / len(rs) if rs else float("nan"), "nme": m}
        if rs:
            bin_means.append(m)
    found = [r for r in results if r.found]
    out["n"] = len(results)
    out["detected"] = len(found)
    out["detection_rate"] = len(found) / len(results) if results else float("nan")
    out["nme_all"] = float(np.mean([r.nme for r in found])) if found else float("nan")
    out["nme_balanced"] = float(np.mean(bin_means)) if bin_means and not any(map(math.isnan, bin_means)) \
        else float("nan")
    occ_e, vis_e = [], []
    for r in found:
        if r.externally_occluded is not None and r.errors is not None:
            occ_e.append(r.errors[r.externally_occluded])
            vis_e.append(r.errors[~r.externally_occluded])
    out["nme_externally_occluded_points"] = float(np.concatenate(occ_e).mean()) if occ_e and \
        sum(map(len, occ_e)) else float("nan")
    out["nme_other_points"] = float(np.concatenate(vis_e).mean()) if vis_e else float("nan")
    out["labelled_images"] = len(occ_e)
    stages = sorted({k for r in results for k in r.time_ms})
    # mean over every image (a stage that did not run costs 0 there), and how often it ran
    out["ms_per_image"] = {k: float(np.mean([r.time_ms.get(k, 0.0) for r in results])) for k in stages}
    out["runs_per_stage"] = {k: sum(k in r.time_ms for r in results) for k in stages}
    out["found_by"] = {d: sum(r.detector == d for r in found) for d in sorted({r.detector for r in found})}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table: one row per bin, then balanced / all and the occluded-point split."""
    head = f"{'|yaw|':<10} {'images':>6} {'found':>6} {'detect %':>8} {'NME %':>7}"
    lines = [head, "-" * len(head)]
    for name, b in summary["bins"].items():
        lines.append(f"{name:<10} {b['n']:>6} {b['detected']:>6} {100 * b['detection_rate']:>8.1f} "
                     f"{100 * b['nme']:>7.2f}")
    lines.append(f"{'balanced':<10} {'':>6} {'':>6} {'':>8} {100 * summary['nme_balanced']:>7.2f}")
    lines.append(f"{'all':<10} {summary['n']:>6} {summary['detected']:>6} {100 * summary['detection_rate']:>8.1f} "
                 f"{100 * summary['nme_all']:>7.2f}")
    if summary.get("labelled_images"):
        lines.append(f"points hidden by an object: NME {100 * summary['nme_externally_occluded_points']:.2f} %, "
                     f"other points {100 * summary['nme_other_points']:.2f} % "
                     f"({summary['labelled_images']} labelled images)")
    if summary.get("found_by"):
        lines.append("faces found by: " + ", ".join(f"{k} {v}" for k, v in summary["found_by"].items()))
    if summary.get("ms_per_image"):
        runs = summary.get("runs_per_stage", {})
        lines.append("ms per image (stage: mean over all images, runs): " + ", ".join(
            f"{k} {v:.0f} ({runs.get(k, '?')})" for k, v in summary["ms_per_image"].items()))
    return "\n".join(lines)


def ced_plot(results: Sequence[ImageResult], max_nme: float = 0.10, size: tuple[int, int] = (640, 440)):
    """(H, W, 3) uint8 image: the fraction of images with NME ≤ x for x in [0, ``max_nme``],
    one curve per yaw bin and one for all (missed faces never reach the curve's top)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H = size
    left, right, top, bottom = 60, 20, 20, 50
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x_of = lambda v: left + (W - left - right) * v / max_nme                       # noqa: E731
    y_of = lambda f: H - bottom - (H - top - bottom) * f                           # noqa: E731
    for k in range(0, 11):
        v, f = max_nme * k / 10, k / 10
        d.line([(x_of(v), y_of(0)), (x_of(v), y_of(1))], fill=(230, 230, 230))
        d.line([(x_of(0), y_of(f)), (x_of(max_nme), y_of(f))], fill=(230, 230, 230))
        d.text((x_of(v) - 8, H - bottom + 6), f"{100 * v:g}", fill=(0, 0, 0), font=font)
        d.text((8, y_of(f) - 6), f"{f:.1f}", fill=(0, 0, 0), font=font)
    d.rectangle([x_of(0), y_of(1), x_of(max_nme), y_of(0)], outline=(0, 0, 0))
    d.text((W // 2 - 40, H - 20), "NME (%)", fill=(0, 0, 0), font=font)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (0, 0, 0)]
    groups = [(_bin_name(b), [r for r in results if r.yaw_bin == b]) for b in range(len(YAW_BINS) - 1)]
    groups.append(("all", list(results)))
    for k, (name, rs) in enumerate(groups):
        if not rs:
            continue
        e = np.sort([r.nme for r in rs if r.found])
        xs = np.linspace(0, max_nme, 200)
        frac = np.searchsorted(e, xs, side="right") / len(rs)
        d.line([(x_of(x), y_of(f)) for x, f in zip(xs, frac)], fill=colours[k % len(colours)], width=2)
        d.text((x_of(max_nme) - 150, y_of(0.05 + 0.07 * k)), f"{name} (n={len(rs)})",
               fill=colours[k % len(colours)], font=font)
    return np.asarray(img)


def contact_sheet(samples: Sequence[LandmarkSample], results: Sequence[ImageResult], per_bin: int = 6,
                  tile: int = 200) -> np.ndarray:
    """(H, W, 3) uint8: per yaw bin (one row each) ``per_bin`` images spread evenly over the bin,
    cropped around the true face, true points green, fitted points red, NME written on (a missed
    face shows only the truth and "missed")."""
    from PIL import Image, ImageDraw

    from face3d.imageio import load_image

    rows = []
    for b in range(len(YAW_BINS) - 1):
        idx = [i for i, s in enumerate(samples) if s.yaw_bin == b]
        pick = [idx[round(k * (len(idx) - 1) / max(per_bin - 1, 1))] for k in range(per_bin)] if idx else []
        row = Image.new("RGB", (tile * per_bin, tile), (40, 40, 40))
        for k, i in enumerate(dict.fromkeys(pick)):
            s, r = samples[i], results[i]
            c, half = 0.5 * (s.box[:2] + s.box[2:]), 0.75 * float(max(s.box[2:] - s.box[:2]))
            x0, y0 = c - half
            box = (int(x0), int(y0), int(x0 + 2 * half), int(y0 + 2 * half))
            im = Image.fromarray(load_image(s.image).rgb).crop(box)
            scale = tile / im.width
            im = im.resize((tile, tile))
            d = ImageDraw.Draw(im)
            for pts, colour in ((s.landmarks, (0, 255, 0)), (r.predicted, (255, 40, 40))):
                if pts is None:
                    continue
                for x, y in (pts - [x0, y0]) * scale:
                    d.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=colour)
            label = f"{s.name} yaw {s.yaw_deg:.0f}: " + (f"{100 * r.nme:.1f}%" if r.found else "missed")
            d.text((3, 3), label, fill=(255, 255, 0))
            row.paste(im, (k * tile, 0))
        rows.append(np.asarray(row))
    return np.concatenate(rows, 0) if rows else np.zeros((tile, tile, 3), np.uint8)


# --------------------------------------------------------------------------- running
_WORKER: dict[str, Any] = {}


def _init_worker(config: Any, gt_box: bool, threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from face3d.pipeline import Reconstructor

    _WORKER["recon"] = Reconstructor(config)
    _WORKER["gt_box"] = gt_box


def _matching(faces: list, gt: np.ndarray):
    """The face whose box centre is nearest the ground truth's box centre, if that is within
    half the ground-truth box size (else the detector found some other face: None)."""
    c = 0.5 * (gt.min(0) + gt.max(0))
    size = math.sqrt(max(float(np.prod(gt.max(0) - gt.min(0))), 1e-12))
    face = min(faces, key=lambda f: float(np.linalg.norm(f.center - c)))
    return face if float(np.linalg.norm(face.center - c)) <= 0.5 * size else None


def _evaluate_one(sample: LandmarkSample) -> ImageResult:
    import time

    from face3d.errors import Face3DError
    from face3d.imageio import load_image

    recon = _WORKER["recon"]
    res = ImageResult(sample.name, sample.yaw_deg, sample.yaw_bin, False,
                      externally_occluded=sample.externally_occluded)
    t0 = time.perf_counter()
    try:
        image = load_image(sample.image)
        boxes = [sample.box] if _WORKER["gt_box"] else None
        faces = recon.detect_faces(image, boxes=boxes)
        res.time_ms["detect"] = (time.perf_counter() - t0) * 1000.0
        stage_detector = recon.box_landmarker if boxes is not None else recon.detector
        for k, v in getattr(stage_detector, "last_timings_ms", {}).items():
            res.time_ms[f"detect.{k}"] = v
        face = _matching(faces, sample.landmarks) if faces else None
        if face is None:
            res.error = "no face found" if not faces else f"{len(faces)} face(s) found, none at the ground truth"
            res.time_ms["total"] = (time.perf_counter() - t0) * 1000.0
            return res
        aligned, _ = recon.align(image, faces=[face])
        a = aligned[0]
        for k, v in a.timings_ms.items():
            res.time_ms[k] = v
        res.predicted = np.asarray(a.landmarks_fitted, np.float64)
        res.errors = point_errors(res.predicted, sample.landmarks)
        res.nme = float(res.errors.mean())
        res.found = True
        res.detector = face.detector
    except Face3DError as e:
        res.error = str(e).splitlines()[0]
    res.time_ms["total"] = (time.perf_counter() - t0) * 1000.0
    return res


def evaluate_samples(samples: Sequence[LandmarkSample], config: Any, *, gt_box: bool = False, workers: int = 1,
                     progress: bool = True) -> list[ImageResult]:
    """Run the pipeline configured by ``config`` (a :class:`~face3d.pipeline.ReconstructConfig`)
    on every sample; results in input order. ``workers`` > 1 uses that many processes with one
    torch thread each."""
    from tqdm import tqdm

    bar = dict(total=len(samples), desc="evaluate landmarks", unit="img", disable=not progress, file=sys.stderr)
    if workers <= 1:
        _init_worker(config, gt_box, None)
        try:
            return [_evaluate_one(s) for s in tqdm(samples, **bar)]
        finally:
            _WORKER.clear()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # fork would share torch's thread pools and dlib's state
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(config, gt_box, 1)) as pool:
        return list(tqdm(pool.map(_evaluate_one, samples, chunksize=4), **bar))


# --------------------------------------------------------------------------- command
def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Arguments of ``evaluate landmarks``."""
    parser.add_argument("--data", required=True,
                        help="folder with ground truth: AFLW2000-3D (*.jpg + *.mat), .pts files or dlib XML")
    parser.add_argument("--gt-box", action="store_true",
                        help="hand the pipeline the ground-truth face box instead of detecting")
    parser.add_argument("--landmarks", help="landmark source (reconstruct's --landmarks; default auto)")
    parser.add_argument("--init", choices=["auto", "landmarks", "regressor"], help="LM start (reconstruct's --init)")
    parser.add_argument("--regressor", help="regressor checkpoint for --init regressor")
    parser.add_argument("--model", help="morphable model (default auto)")
    parser.add_argument("--config", help="YAML of ReconstructConfig settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images of each yaw bin")
    parser.add_argument("--names", help="file with one image name per line to evaluate")
    parser.add_argument("--workers", type=int, default=1, help="processes, one torch thread each (default 1)")
    parser.add_argument("--out", default="runs/evaluate-landmarks",
                        help="folder for images.csv, summary.json and ced.png")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")


def _select(samples: list[LandmarkSample], limit: Optional[int], names_file: Optional[str]) -> list[LandmarkSample]:
    from face3d.errors import MissingInputError, UsageError

    if names_file:
        try:
            wanted = [ln.strip() for ln in Path(names_file).read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise MissingInputError(f"{names_file}: cannot read ({e.strerror or e})") from None
        index = {s.name: s for s in samples}
        missing = [n for n in wanted if n not in index]
        if missing:
            raise UsageError(f"{names_file}: {len(missing)} name(s) not in the data, e.g. {missing[0]!r}")
        samples = [index[n] for n in wanted]
    if limit is not None:
        if limit <= 0:
            raise UsageError(f"--limit must be positive, got {limit}")
        per_bin: dict[Optional[int], int] = {}
        kept = []
        for s in samples:
            if per_bin.get(s.yaw_bin, 0) < limit:
                kept.append(s)
                per_bin[s.yaw_bin] = per_bin.get(s.yaw_bin, 0) + 1
        samples = kept
    return samples


def run(name: str, args: argparse.Namespace) -> int:
    """Run ``evaluate landmarks`` (module doc); returns the exit code."""
    from face3d.config import apply_overrides, load_config, parse_override
    from face3d.errors import OutputError, UsageError
    from face3d.imageio import save_image_atomic
    from face3d.io_utils import atomic_write
    from face3d.landmarks.groundtruth import estimate_yaw, load_landmark_set
    from face3d.pipeline import ReconstructConfig

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    cfg = ReconstructConfig()
    if args.config:
        cfg = load_config(cfg, args.config)
    flat = {k: v for k, v in (("landmarks", args.landmarks), ("init", args.init), ("regressor", args.regressor),
                              ("model", args.model), ("device", args.device)) if v is not None}
    cfg = apply_overrides(cfg, flat)
    for text in args.set:
        cfg = apply_overrides(cfg, parse_override(text))
    samples = load_landmark_set(args.data)
    if any(s.yaw_deg is None for s in samples):
        from face3d.model_zoo import load_model

        samples = estimate_yaw(samples, load_model(cfg.model))
    samples = _select(samples, args.limit, args.names)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create output folder ({e.strerror or e})") from None
    results = evaluate_samples(samples, cfg, gt_box=args.gt_box, workers=args.workers)
    summary = summarize(results)
    summary["data"] = str(args.data)
    summary["gt_box"] = bool(args.gt_box)
    summary["config"] = {"landmarks": cfg.landmarks, "init": cfg.init, "model": cfg.model}
    rows = [r.row() for r in results]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    try:
        with atomic_write(out / "images.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)
        with atomic_write(out / "summary.json") as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=1))
        save_image_atomic(out / "ced.png", ced_plot(results))
        save_image_atomic(out / "sheet.png", contact_sheet(samples, results))
    except OSError as e:
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    print(format_summary(summary))
    print(f"wrote {out / 'images.csv'}, {out / 'summary.json'}, {out / 'ced.png'}, {out / 'sheet.png'}")
    return 0
