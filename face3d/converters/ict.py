"""Converter for the ICT-FaceKit "Face Model Light" (MIT licence).

Reads the upstream repository as a ``.tar.xz`` / ``.tar.gz`` / ``.zip`` archive or as an
extracted folder (with or without the top-level folder GitHub adds to its archives) and
produces a :class:`~face3d.morphable_model.ModelArrays`:

* face region only: vertices 0..9408 and polygons 0..9229 (the README's "Full face area"),
  quads fan-split into triangles, per-corner UVs kept;
* identity: ``identityNNN.obj − generic_neutral_mesh.obj`` for the 100 PCA modes, which ICT
  ships already scaled by their standard deviation, so ``id_std = 1``;
* expression: the 53 ARKit-style shapes named in ``vertex_indices.json["expressions"]``,
  each minus the neutral mesh (``exp_std = 1``, ``meta["expression_kind"] = "blendshapes"``);
* units: ICT meshes are in centimetres; everything is multiplied by 10 to get mm. Its frame
  already is x toward the viewer's right, y up, z toward the viewer;
* landmarks: the 68 Multi-PIE ids listed in the README (0-based), or :data:`ICT_LANDMARKS`
  when no README is found;
* albedo: none ships. The mean albedo is a constant linear-RGB skin tone with redder lips
  (see :data:`face3d.converters.common.SKIN_LINEAR_RGB`); there is no albedo basis (K_t = 0);
* ``skin_mask``: 0 inside the eye openings, the inner mouth contour and the nostrils.

Reference: Li et al., "Learning Formation of Physically-Based Face Attributes", CVPR 2020.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional

import numpy as np

from face3d.converters.common import (
    compact_uvs, ensure_outward, jaw_contour_lines, read_obj, read_obj_vertices, sha256_bytes,
    sha256_file, skin_albedo, skin_mask_from_landmarks, triangulate,
)
from face3d.morphable_model import ModelArrays

N_FACE_VERTICES = 9409
N_FACE_POLYGONS = 9230
N_IDENTITY = 100
CM_TO_MM = 10.0

#: The README's "Multi-PIE 68 point facial landmarks indices" (0-based); used only when the
#: README is missing from the source.
ICT_LANDMARKS = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088,
    3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140,
    2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732,
    5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216,
    6207, 6470, 5517, 5966,
)

_NEUTRAL = "FaceXModel/generic_neutral_mesh.obj"
_INDICES = "FaceXModel/vertex_indices.json"
_FIRST = (_NEUTRAL, _INDICES, "README.md", "LICENSE")
_ARCHIVE_SUFFIXES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2", ".tar", ".zip")


def _canonical(member: str) -> Optional[str]:
    """Map an archive/folder path to the repository-relative name we use, or None.

    ``ICT-FaceKit-<sha>/FaceXModel/x.obj`` and ``FaceXModel/x.obj`` both give
    ``FaceXModel/x.obj``; ``README.md`` / ``LICENSE`` count at the root or one folder down.
    """
    parts = PurePosixPath(member.replace("\\", "/")).parts
    if "FaceXModel" in parts:
        i = parts.index("FaceXModel")
        if len(parts) == i + 2:
            return "FaceXModel/" + parts[-1]
        return None
    if len(parts) <= 2 and parts and parts[-1] in ("README.md", "LICENSE"):
        return parts[-1]
    return None


def _wanted(name: str) -> bool:
    return name in ("README.md", "LICENSE", _INDICES) or (name.startswith("FaceXModel/") and name.endswith(".obj"))


def iter_ict_files(source: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for each ICT file the converter reads, in storage order.

    ``source``: an archive (.tar.xz, .tar.gz, .zip, …) or a folder. Archives are streamed, so
    a .tar.xz is decompressed once without being unpacked to disk.
    """
    src = Path(source)
    if src.is_dir():
        found: dict[str, Path] = {}
        for path in sorted(src.rglob("*")):
            if not path.is_file() or len(path.relative_to(src).parts) > 3:
                continue
            name = _canonical(path.relative_to(src).as_posix())
            if name is None and path.parent == src and (src / "generic_neutral_mesh.obj").is_file():
                name = "FaceXModel/" + path.name  # a bare FaceXModel folder given directly
            if name is not None and _wanted(name):
                found.setdefault(name, path)
        # Small defining files first, so a corrupt copy fails before the long parse.
        for name in sorted(found, key=lambda n: (n not in _FIRST, n)):
            yield name, found[name].read_bytes()
        return
    if not src.is_file():
        raise FileNotFoundError(f"ICT-FaceKit source not found: {src}")
    lower = src.name.lower()
    if lower.endswith(".zip"):
        with zipfile.ZipFile(src) as zf:
            infos = [(n, i) for i in zf.infolist() if not i.is_dir()
                     for n in [_canonical(i.filename)] if n is not None and _wanted(n)]
            for name, info in sorted(infos, key=lambda t: (t[0] not in _FIRST, t[0])):
                yield name, zf.read(info)
        return
    if any(lower.endswith(s) for s in _ARCHIVE_SUFFIXES) or tarfile.is_tarfile(src):
        with tarfile.open(src, mode="r|*") as tf:  # stream mode: one sequential pass
            for member in tf:
                if not member.isfile():
                    continue
                name = _canonical(member.name)
                if name is not None and _wanted(name):
                    fh = tf.extractfile(member)
                    if fh is not None:
                        yield name, fh.read()
        return
    raise ValueError(f"unsupported ICT-FaceKit source {src}: give a folder or a .tar.xz/.tar.gz/.zip archive")


def parse_readme_landmarks(readme: str) -> Optional[np.ndarray]:
    """The 68 ids after "Multi-PIE 68 point facial landmarks indices" in the README, or None."""
    m = re.search(r"Multi-PIE 68 point facial landmarks indices:?\s*\n\s*\n?((?:\s*\d+\s*,?)+)", readme)
    if not m:
        return None
    ids = np.array([int(t) for t in re.findall(r"\d+", m.group(1))], np.int64)
    return ids if ids.size == 68 else None


def convert_ict(source: str | os.PathLike, n_identity: int = N_IDENTITY,
                expected_file_sha256: Optional[dict[str, str]] = None,
                progress: Optional[Callable[[str], None]] = None) -> ModelArrays:
    """Convert ICT-FaceKit at ``source`` (archive or folder) to face3d model arrays.

    ``expected_file_sha256``: ``{name: hex}`` for files named as in the repository
    (e.g. ``"FaceXModel/generic_neutral_mesh.obj"``); a mismatch or a missing file raises
    ``ValueError``. ``progress`` is called with each file name as it is read.
    Returns arrays in mm; see the module docstring for what each field holds.
    """
    src = Path(source)
    file_sha: dict[str, str] = {}
    shapes: dict[str, np.ndarray] = {}  # stem -> face-region vertices (9409, 3) in cm
    neutral = None
    indices_json = None
    readme = None
    licence_text = None
    for name, data in iter_ict_files(src):
        digest = sha256_bytes(data)
        file_sha[name] = digest
        if expected_file_sha256 and name in expected_file_sha256 and expected_file_sha256[name] != digest:
            raise ValueError(f"ICT-FaceKit file {name} has sha256 {digest}, expected "
                             f"{expected_file_sha256[name]}: the download is corrupt or not the pinned version")
        if progress is not None:
            progress(name)
        if name == _NEUTRAL:
            neutral = read_obj(data)
        elif name == _INDICES:
            indices_json = json.loads(data.decode("utf-8"))
        elif name == "README.md":
            readme = data.decode("utf-8", errors="replace")
        elif name == "LICENSE":
            licence_text = data.decode("utf-8", errors="replace")
        else:
            v = read_obj_vertices(data, max_vertices=N_FACE_VERTICES)
            if len(v) == N_FACE_VERTICES:
                shapes[PurePosixPath(name).stem] = v[:N_FACE_VERTICES].astype(np.float32)
    if neutral is None:
        raise FileNotFoundError(f"{src} does not hold FaceXModel/generic_neutral_mesh.obj (not an ICT-FaceKit copy?)")
    if indices_json is None:
        raise FileNotFoundError(f"{src} does not hold FaceXModel/vertex_indices.json")
    if expected_file_sha256:
        missing = sorted(set(expected_file_sha256) - set(file_sha))
        if missing:
            raise ValueError(f"ICT-FaceKit source {src} lacks pinned file(s): {', '.join(missing)}")

    # -- geometry --------------------------------------------------------------------------
    base = neutral.vertices[:N_FACE_VERTICES]
    tri, uvt = triangulate(neutral, keep_polygons=N_FACE_POLYGONS)
    if tri.max() >= N_FACE_VERTICES:
        raise ValueError("ICT face polygons reference vertices outside the face region; unexpected file layout")
    if uvt is None:
        raise ValueError("ICT neutral mesh has no texture coordinates")
    uvs, uvt = compact_uvs(neutral.texcoords, uvt)

    missing_id = [f"identity{i:03d}" for i in range(n_identity) if f"identity{i:03d}" not in shapes]
    if missing_id:
        raise FileNotFoundError(f"{src} lacks {len(missing_id)} identity meshes (first: {missing_id[0]}.obj)")
    exp_names = list(indices_json.get("expressions", []))
    missing_exp = [e for e in exp_names if e not in shapes]
    if not exp_names or missing_exp:
        raise FileNotFoundError(f"{src} lacks expression meshes: {', '.join(missing_exp) or 'no expression list'}")

    mean = base.astype(np.float64) * CM_TO_MM
    id_basis = np.stack([shapes[f"identity{i:03d}"] for i in range(n_identity)]).astype(np.float64)
    id_basis = ((id_basis - base[None]) * CM_TO_MM).astype(np.float32)
    exp_basis = np.stack([shapes[e] for e in exp_names]).astype(np.float64)
    exp_basis = ((exp_basis - base[None]) * CM_TO_MM).astype(np.float32)

    landmarks = parse_readme_landmarks(readme) if readme is not None else None
    landmark_source = "README.md"
    if landmarks is None:
        landmarks = np.asarray(ICT_LANDMARKS, np.int64)
        landmark_source = "built-in copy of the README list"

    tri, uvt, flipped = ensure_outward(mean, tri, uvt, probe=int(landmarks[30]))
    contour = jaw_contour_lines(mean, tri, landmarks)
    # "In front" = ahead of the outermost jaw landmarks, so nothing behind the face matches
    # the frontal landmark polygons.
    front = mean[:, 2] > mean[landmarks[[0, 16]], 2].mean()
    albedo = skin_albedo(mean, landmarks, front_only=front)
    skin = skin_mask_from_landmarks(mean, tri, landmarks, front_only=front)

    source_sha = sha256_file(src) if src.is_file() else sha256_bytes(
        json.dumps(sorted(file_sha.items())).encode())
    meta = {
        "name": "ict",
        "licence": "MIT (ICT-FaceKit, USC Institute for Creative Technologies)",
        "source": str(src),
        "source_sha256": source_sha,
        "source_sha256_kind": "archive file" if src.is_file() else "sha256 of the sorted per-file sha256 list",
        "file_sha256": {k: file_sha[k] for k in sorted(file_sha) if k in (_NEUTRAL, _INDICES, "README.md", "LICENSE")},
        "units": "mm",
        "unit_conversion": "ICT OBJ centimetres x 10",
        "expression_kind": "blendshapes",
        "expression_names": exp_names,
        "identity_kind": "pca, modes pre-scaled by their std-dev (id_std = 1)",
        "landmark_source": landmark_source,
        "albedo": "constant linear-RGB skin tone with redder lips (no albedo ships with ICT)",
        "triangles_flipped": bool(flipped),
        "face_region": {"vertices": [0, N_FACE_VERTICES - 1], "polygons": [0, N_FACE_POLYGONS - 1]},
        "citation": "Li et al., Learning Formation of Physically-Based Face Attributes, CVPR 2020",
    }
    if licence_text is not None:
        meta["licence_text_sha256"] = sha256_bytes(licence_text.encode())
    arrays = ModelArrays(
        mean_shape=mean.astype(np.float32), id_basis=id_basis, id_std=np.ones(n_identity, np.float32),
        exp_basis=exp_basis, exp_std=np.ones(len(exp_names), np.float32),
        mean_albedo=albedo.astype(np.float32), albedo_basis=np.zeros((0, N_FACE_VERTICES, 3), np.float32),
        albedo_std=np.zeros((0,), np.float32), triangles=tri.astype(np.int64), uvs=uvs.astype(np.float32),
        uv_triangles=uvt.astype(np.int64), landmark_ids=landmarks, contour_lines=contour, meta=meta,
        skin_mask=skin,
    )
    arrays.validate()
    return arrays
