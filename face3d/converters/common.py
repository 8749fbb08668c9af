"""Helpers shared by the model converters: a fast OBJ reader, triangulation, orientation
checks, jaw contour candidates, a cylindrical UV unwrap, a plain skin albedo and hashing.

Everything here works on numpy arrays in the face3d model frame (mm, x toward the viewer's
right, y up, z toward the viewer); see :mod:`face3d.morphable_model`.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from face3d.mesh_np import face_normals, vertex_normals_np

# --------------------------------------------------------------------------------------
# OBJ reading
# --------------------------------------------------------------------------------------


@dataclass
class ObjMesh:
    """Polygons of an OBJ file, 0-based.

    ``vertices`` (N, 3) float64; ``texcoords`` (T, 2) float64 (may be empty);
    ``faces`` list of polygons grouped by corner count: ``faces[k]`` is ``(P_k, k)`` vertex ids,
    ``face_uvs[k]`` the matching texcoord ids (or None) and ``face_order[k]`` the index of each
    polygon in file order, so the original polygon numbering can be recovered.
    ``group_names`` are the ``g`` names in order of first use by a polygon ("default" for
    polygons before any ``g`` line) and ``face_groups[k]`` (P_k,) indexes into it.
    """

    vertices: np.ndarray
    texcoords: np.ndarray
    faces: dict[int, np.ndarray]
    face_uvs: dict[int, Optional[np.ndarray]]
    face_order: dict[int, np.ndarray]
    group_names: list[str] = field(default_factory=lambda: ["default"])
    face_groups: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def n_polygons(self) -> int:
        return int(sum(len(v) for v in self.faces.values()))


def _parse_floats(lines: list[bytes], width: int, what: str) -> np.ndarray:
    if not lines:
        return np.zeros((0, width))
    # np.fromstring with a separator parses a whole block in C; about 30x faster than loadtxt.
    flat = np.fromstring(b" ".join(lines), sep=" ")
    if flat.size % len(lines):
        # Some writers append extra columns (vertex colours after v, w after vt): fall back.
        rows = [np.array(ln.split()[:width], dtype=np.float64) for ln in lines]
        return np.stack(rows)
    per = flat.size // len(lines)
    if per < width:
        raise ValueError(f"OBJ {what} lines have {per} numbers, expected at least {width}")
    return flat.reshape(len(lines), per)[:, :width]


_NOT_V_LINE = re.compile(rb"\n(?!v )")


def _vertex_block(data: bytes) -> Optional[tuple[bytes, int]]:
    """The contiguous run of ``v`` lines of an OBJ (how exporters write them) and its line
    count, or None when the vertices are interleaved with other lines."""
    start = 0 if data.startswith(b"v ") else data.find(b"\nv ") + 1
    if start <= 0 and not data.startswith(b"v "):
        return None
    m = _NOT_V_LINE.search(data, start)  # the first line after ``start`` that is not a "v " line
    end = m.start() + 1 if m else len(data)
    block = data[start:end]
    rows = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    if data.find(b"\nv ", end - 1) >= 0:  # more vertices later: not contiguous
        return None
    return block, rows


def read_obj_vertices(data: bytes, max_vertices: Optional[int] = None) -> np.ndarray:
    """Only the ``v`` lines of OBJ ``data`` as (N, 3) float64 (fast path for blendshapes).

    ``max_vertices``: parse only the first that many vertices.
    """
    found = _vertex_block(data)
    if found is not None:
        block, rows = found
        if max_vertices is not None and max_vertices < rows:
            newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            block, rows = block[: newlines[max_vertices - 1] + 1], max_vertices
        # Every line starts with "v "; the numbers hold no "v", so dropping it leaves the values.
        flat = np.fromstring(block.replace(b"v ", b" "), sep=" ")
        if flat.size == 3 * rows:
            return flat.reshape(rows, 3)
    lines = [ln[2:] for ln in data.split(b"\n") if ln.startswith(b"v ")]
    if not lines:
        raise ValueError("OBJ data holds no vertices")
    out = _parse_floats(lines, 3, "v")
    return out if max_vertices is None else out[:max_vertices]


def read_obj(data: bytes) -> ObjMesh:
    """Parse OBJ ``data`` (bytes): vertices, texcoords and polygons (any corner count).

    Corners may be ``v``, ``v/vt``, ``v/vt/vn`` or ``v//vn``; negative (relative) indices are
    resolved. Normals are ignored. ``g`` lines name the group of the polygons that follow.
    """
    v_lines: list[bytes] = []
    vt_lines: list[bytes] = []
    f_lines: list[bytes] = []
    f_group: list[int] = []
    group_ids: dict[bytes, int] = {}
    current = b"default"
    for ln in data.split(b"\n"):
        head = ln[:3]
        if head == b"v  " or head[:2] == b"v ":
            v_lines.append(ln[2:])
        elif head == b"vt ":
            vt_lines.append(ln[3:])
        elif head[:2] == b"f ":
            f_lines.append(ln[2:].strip())
            f_group.append(group_ids.setdefault(current, len(group_ids)))
        elif head[:2] == b"g ":
            current = ln[2:].strip()
    if not v_lines:
        raise ValueError("OBJ data holds no vertices")
    vertices = _parse_floats(v_lines, 3, "v")
    texcoords = _parse_floats(vt_lines, 2, "vt")
    n_v, n_t = len(vertices), len(texcoords)

    counts = np.fromiter((ln.count(b" ") + 1 for ln in f_lines), dtype=np.int64, count=len(f_lines))
    faces: dict[int, np.ndarray] = {}
    face_uvs: dict[int, Optional[np.ndarray]] = {}
    face_order: dict[int, np.ndarray] = {}
    face_groups: dict[int, np.ndarray] = {}
    group_of = np.asarray(f_group, dtype=np.int64)
    if f_lines:
        first = f_lines[0].split()[0]
        has_vt = b"/" in first and first.split(b"/")[1] != b""
        for k in np.unique(counts):
            idx = np.flatnonzero(counts == k)
            block = b" ".join(f_lines[i] for i in idx)
            # v//vn -> v/0/vn keeps three fields per corner; the 0 is never used.
            block = block.replace(b"//", b"/0/").replace(b"/", b" ")
            nums = np.fromstring(block, sep=" ", dtype=np.int64)
            fields = nums.size // (len(idx) * int(k))
            if fields * len(idx) * int(k) != nums.size:
                raise ValueError("OBJ faces mix corner formats (v, v/vt, v/vt/vn); cannot parse")
            nums = nums.reshape(len(idx), int(k), fields)
            vid = nums[..., 0]
            vid = np.where(vid < 0, vid + n_v, vid - 1)
            faces[int(k)] = vid
            if has_vt and fields >= 2:
                tid = nums[..., 1]
                face_uvs[int(k)] = np.where(tid < 0, tid + n_t, tid - 1)
            else:
                face_uvs[int(k)] = None
            face_order[int(k)] = idx
            face_groups[int(k)] = group_of[idx]
    names = [g.decode() for g in group_ids] or ["default"]
    return ObjMesh(vertices, texcoords, faces, face_uvs, face_order, names, face_groups)


def triangulate(mesh: ObjMesh, keep_polygons: Optional[int] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Fan-triangulate the polygons of ``mesh`` in file order.

    ``keep_polygons``: only polygons with file index < this number are kept.
    Returns ``(triangles (F, 3), uv_triangles (F, 3) or None)``; a polygon (a, b, c, d) becomes
    (a, b, c), (a, c, d), which keeps its winding.
    """
    tris, uvts, order = [], [], []
    have_uv = all(u is not None for u in mesh.face_uvs.values())
    for k, vid in mesh.faces.items():
        mask = np.ones(len(vid), bool) if keep_polygons is None else mesh.face_order[k] < keep_polygons
        vid = vid[mask]
        uv = mesh.face_uvs[k][mask] if have_uv else None
        for j in range(1, k - 1):
            tris.append(np.stack([vid[:, 0], vid[:, j], vid[:, j + 1]], 1))
            if uv is not None:
                uvts.append(np.stack([uv[:, 0], uv[:, j], uv[:, j + 1]], 1))
            # Sort key: polygon index, then fan position, so triangles follow the file order.
            order.append(mesh.face_order[k][mask] * 64 + j)
    if not tris:
        raise ValueError("OBJ data holds no faces")
    perm = np.argsort(np.concatenate(order), kind="stable")
    triangles = np.concatenate(tris)[perm]
    uv_triangles = np.concatenate(uvts)[perm] if have_uv else None
    return triangles, uv_triangles


def compact_uvs(texcoords: np.ndarray, uv_triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop texcoords no triangle uses; returns ``(uvs (T', 2), uv_triangles (F, 3))`` re-indexed."""
    used = np.unique(uv_triangles)
    remap = np.full(len(texcoords), -1, np.int64)
    remap[used] = np.arange(len(used))
    return texcoords[used], remap[uv_triangles]


# --------------------------------------------------------------------------------------
# Geometry checks
# --------------------------------------------------------------------------------------


def outward_sign(vertices: np.ndarray, triangles: np.ndarray, probe: int, radius: float = 15.0) -> float:
    """+1 if the triangles around vertex ``probe`` (a point facing +z, e.g. the nose tip)
    have normals pointing +z, -1 otherwise. ``radius`` in the vertices' unit."""
    near = np.linalg.norm(vertices - vertices[probe], axis=1) < radius
    sel = near[triangles].any(1)
    if not sel.any():
        raise ValueError(f"no triangle near probe vertex {probe}")
    nz = face_normals(vertices, triangles[sel])[:, 2].sum()
    return 1.0 if nz > 0 else -1.0


def ensure_outward(vertices: np.ndarray, triangles: np.ndarray, uv_triangles: Optional[np.ndarray],
                   probe: int) -> tuple[np.ndarray, Optional[np.ndarray], bool]:
    """Flip the winding of all triangles if they are clockwise seen from outside.

    ``probe``: a vertex whose outward normal points toward +z (the nose tip). Returns
    ``(triangles, uv_triangles, flipped)``.
    """
    if outward_sign(vertices, triangles, probe) > 0:
        return triangles, uv_triangles, False
    tri = triangles[:, [0, 2, 1]]
    uvt = uv_triangles[:, [0, 2, 1]] if uv_triangles is not None else None
    return tri, uvt, True


# --------------------------------------------------------------------------------------
# Jaw contour candidates
# --------------------------------------------------------------------------------------


def jaw_contour_lines(vertices: np.ndarray, triangles: np.ndarray, landmark_ids: np.ndarray,
                      band: Optional[float] = None, step_deg: float = 3.0, inward_deg: float = 60.0,
                      max_len: int = 64) -> np.ndarray:
    """Candidate vertices (17, L) for the 17 iBUG jaw landmarks, -1 padded.

    Row j starts with ``landmark_ids[j]`` (its place on a frontal face). The rest of the row
    is the horizontal line of surface vertices through that landmark on the same side of the
    face (within ``band`` of the plane y = y_j), sorted by their angle around a vertical axis
    behind the face, from the front of the face to the back (one vertex per ``step_deg``, the
    one nearest the plane). The line reaches ``inward_deg`` in front of the landmark and
    everything behind it up to the end of the mesh, because a turned head moves the silhouette
    both ways: forward onto the cheek on the side turning away, backward toward the ear on the
    side turning to the camera. A fitter takes the silhouette point as the row vertex with the
    outermost projected x on the landmark's side (a "landmark marching" scheme, Zhu et al.,
    CVPR 2015).

    The vertical axis passes through x = midline (mean x of landmarks 27..30, the nose ridge)
    and z = the mean depth of the two outermost jaw landmarks (0 and 16), so those sit near
    ±90°. The chin row (j = 8) holds vertices near the mid-sagittal plane below the chin,
    ordered backward (it slides under the chin as the head pitches up).

    ``band`` defaults to the median edge length (mesh units). Only vertices used by
    ``triangles`` count.
    """
    v = np.asarray(vertices, np.float64)
    lm = np.asarray(landmark_ids, np.int64)
    used = np.zeros(len(v), bool)
    used[np.unique(triangles)] = True
    if band is None:
        e = v[triangles[:, [1, 2, 0]]] - v[triangles]
        band = float(np.median(np.linalg.norm(e, axis=-1)))
    cx = float(v[lm[27:31], 0].mean())
    cz = float(v[lm[[0, 16]], 2].mean())
    ang = np.degrees(np.arctan2(np.abs(v[:, 0] - cx), v[:, 2] - cz))  # 0 = straight ahead
    rows: list[list[int]] = []
    for j in range(17):
        a = int(lm[j])
        if j == 8:
            # Under the chin: near x = midline, below the chin point, going backward (-z).
            sel = used & (np.abs(v[:, 0] - cx) < band) & (v[:, 1] <= v[a, 1] + band) & (v[:, 2] < v[a, 2])
            key = v[a, 2] - v[:, 2]
            dist = np.abs(v[:, 0] - cx)
            step = band
        else:
            side = np.sign(v[a, 0] - cx)
            lo = max(ang[a] - inward_deg, 5.0)
            sel = used & (np.abs(v[:, 1] - v[a, 1]) < band) & (np.sign(v[:, 0] - cx) == side) & (ang >= lo)
            key = ang - lo
            dist = np.abs(v[:, 1] - v[a, 1])
            step = step_deg
        idx = np.flatnonzero(sel)
        row = [a]
        if idx.size:
            bins = np.floor(key[idx] / step).astype(np.int64)
            # Within each bin keep the vertex nearest the plane.
            order = np.lexsort((dist[idx], bins))
            idx, bins = idx[order], bins[order]
            first = np.ones(len(idx), bool)
            first[1:] = bins[1:] != bins[:-1]
            row += [int(i) for i in idx[first] if i != a]
        rows.append(row[:max_len])
    width = max(len(r) for r in rows)
    out = np.full((17, width), -1, np.int64)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return out


# --------------------------------------------------------------------------------------
# UVs, albedo, masks
# --------------------------------------------------------------------------------------


def cylindrical_uvs(vertices: np.ndarray, landmark_ids: Optional[np.ndarray] = None,
                    margin: float = 0.02) -> np.ndarray:
    """Per-vertex UVs (N, 2) from a cylindrical unwrap around the vertical axis, v up.

    The axis sits at the x of the face midline and behind the face by half its width, so the
    face spreads over the middle of the map; u ∝ angle, v ∝ height, both scaled to fill
    [margin, 1 - margin] with equal texel density in u and v (the shorter span is centred).
    """
    v = np.asarray(vertices, np.float64)
    if landmark_ids is not None:
        cx = float(v[np.asarray(landmark_ids)[27:31], 0].mean())
    else:
        cx = float(v[:, 0].mean())
    width = float(np.ptp(v[:, 0]))
    cz = float(v[:, 2].max()) - 0.5 * width
    radius = 0.5 * width
    theta = np.arctan2(v[:, 0] - cx, v[:, 2] - cz)  # arc length ≈ radius · θ
    s = radius * theta
    t = v[:, 1]
    span = max(float(np.ptp(s)), float(np.ptp(t)), 1e-9)
    scale = (1.0 - 2 * margin) / span
    u = 0.5 + (s - 0.5 * (s.max() + s.min())) * scale
    w = 0.5 + (t - 0.5 * (t.max() + t.min())) * scale
    return np.stack([u, w], 1)


#: Mean skin albedo used where a model ships none, linear RGB. A medium, slightly warm skin
#: tone: sRGB (0.80, 0.62, 0.52) ≈ (204, 158, 133)/255 decoded with the sRGB curve. Chosen
#: as a neutral middle of measured facial albedos (linear red ≈ 0.4–0.7), not a fit to data.
SKIN_LINEAR_RGB = (0.604, 0.342, 0.233)
#: Lip tone, sRGB (0.72, 0.45, 0.43) decoded: redder and darker than skin.
LIP_LINEAR_RGB = (0.479, 0.171, 0.153)


def _in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd test of 2-D ``points`` (M, 2) against a closed polygon (P, 2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 == y0, 1e-12, y1 - y0) + x0)
    return (crosses.sum(1) % 2) == 1


def _polygon_distance(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of 2-D points (M, 2) to the boundary of a closed polygon (P, 2)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    t = ((points[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab ** 2).sum(-1), 1e-12)[None]
    t = np.clip(t, 0, 1)
    proj = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - proj, axis=-1).min(1)


def face_region_masks(vertices: np.ndarray, landmark_ids: np.ndarray,
                      front_only: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Boolean vertex masks (N,) from the frontal (x, y) projection of the 68 landmarks.

    ``eyes``: inside either eye contour (36–41, 42–47); ``mouth``: inside the inner lip contour
    (60–67); ``lips``: inside the outer lip contour (48–59) but not ``mouth``.
    ``front_only`` (N,) restricts all
    masks to vertices in front (e.g. z above the ears), so the back of a head never matches.
    """
    v = np.asarray(vertices, np.float64)
    lm = v[np.asarray(landmark_ids)]
    xy = v[:, :2]
    front = np.ones(len(v), bool) if front_only is None else np.asarray(front_only, bool)
    eyes = (_in_polygon(xy, lm[36:42, :2]) | _in_polygon(xy, lm[42:48, :2])) & front
    mouth = _in_polygon(xy, lm[60:68, :2]) & front
    lips = _in_polygon(xy, lm[48:60, :2]) & front & ~mouth
    return {"eyes": eyes, "mouth": mouth, "lips": lips}


def nostril_mask(vertices: np.ndarray, triangles: np.ndarray, landmark_ids: np.ndarray) -> np.ndarray:
    """Vertices inside the nostrils: under the nose tip, between the alae (landmarks 31–35),
    whose normal points away from the viewer (n_z < -0.2) — the holes' inner walls."""
    v = np.asarray(vertices, np.float64)
    lm = v[np.asarray(landmark_ids)]
    n = vertex_normals_np(v, triangles)
    x0, x1 = lm[31, 0], lm[35, 0]
    pad = 0.15 * abs(x1 - x0)
    box = ((v[:, 0] > min(x0, x1) - pad) & (v[:, 0] < max(x0, x1) + pad)
           & (v[:, 1] < lm[30, 1]) & (v[:, 1] > lm[33, 1] - pad)
           & (v[:, 2] > lm[33, 2] - 4 * pad))
    return box & (n[:, 2] < -0.2)


def skin_albedo(vertices: np.ndarray, landmark_ids: np.ndarray, front_only: Optional[np.ndarray] = None,
                blend_mm: float = 2.0) -> np.ndarray:
    """A plausible mean albedo (N, 3), linear RGB: :data:`SKIN_LINEAR_RGB` everywhere, blended
    to :data:`LIP_LINEAR_RGB` inside the outer lip contour (48–59) over ``blend_mm``."""
    v = np.asarray(vertices, np.float64)
    lm = v[np.asarray(landmark_ids)]
    xy = v[:, :2]
    outer = lm[48:60, :2]
    inside = _in_polygon(xy, outer)
    if front_only is not None:
        inside &= np.asarray(front_only, bool)
    d = _polygon_distance(xy, outer)
    w = np.where(inside, np.clip(0.5 + d / (2 * blend_mm), 0, 1), np.clip(0.5 - d / (2 * blend_mm), 0, 1))
    if front_only is not None:
        w = w * np.asarray(front_only, bool)
    skin, lip = np.asarray(SKIN_LINEAR_RGB), np.asarray(LIP_LINEAR_RGB)
    return (skin[None] * (1 - w[:, None]) + lip[None] * w[:, None]).astype(np.float64)


def skin_mask_from_landmarks(vertices: np.ndarray, triangles: np.ndarray, landmark_ids: np.ndarray,
                             front_only: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-vertex skin weight (N,): 0 inside the eyes, the inner mouth and the nostrils, else 1."""
    m = face_region_masks(vertices, landmark_ids, front_only)
    nos = nostril_mask(vertices, triangles, landmark_ids)
    if front_only is not None:
        nos &= np.asarray(front_only, bool)
    return (~(m["eyes"] | m["mouth"] | nos)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)`` if it is a file, else a one-line FileNotFoundError naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p

