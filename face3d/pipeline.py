"""``reconstruct``: a photo to a detailed, textured 3D face.

Stages (each timed, see :attr:`FaceReconstruction.timings_ms`):

1. **detect** — 68 iBUG landmarks per face (:mod:`face3d.landmarks`);
2. **fit** — Levenberg–Marquardt landmark fitting of pose, identity and expression
   (paper 004 eq. 2, :mod:`face3d.fitting`); with ``init="regressor"`` it starts from the
   learned regressor's estimate, whose landmarks stand in for the detected points it finds
   unreliable (occluded, or hidden at large yaw; :mod:`face3d.regressor.inference`);
3. **photometric** — lighting and albedo by differentiable rendering against the photo,
   robust to occluders, which it reports as an occlusion map (:mod:`face3d.photometric`);
4. **texture** — the photo projected into the model's UV map with visibility, mirrored
   and albedo fill for what the photo does not show (R_p of CFR-GAN, :mod:`face3d.texture`);
5. **detail** — shape from shading on the skin the photo shows (paper 004 §5.4,
   :mod:`face3d.detail`), applied to a once-subdivided mesh;
6. the caller exports (:mod:`face3d.export`) and draws the overlay (:mod:`face3d.overlay`).

Meshes come out in the **model frame** (mm; x the viewer's right, y up, z toward the
viewer; the face's own pose removed), so every reconstruction of a person lines up;
:attr:`FaceReconstruction.R` and ``t`` put it back into the photo's camera frame.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch

from face3d.camera import Intrinsics, project, transform, vertex_normals
from face3d.color import linear_to_srgb
from face3d.detail import DetailSettings, apply_detail, estimate_detail
from face3d.export import MeshData
from face3d.fitting import LandmarkFitter, LMFitConfig
from face3d.imageio import LoadedImage, image_to_tensor
from face3d.landmarks import DetectedFace, get_detector, select_faces
from face3d.lighting import irradiance
from face3d.mesh import subdivide
from face3d.morphable_model import MorphableModel
from face3d.photometric import PhotometricSettings, clean_occlusion, refine_photometric
from face3d.regressor.inference import StandInSettings
from face3d.texture import TextureSettings, project_texture, uv_layout

__all__ = ["ReconstructConfig", "FaceAlignment", "FaceReconstruction", "Reconstructor", "landmark_visibility"]


@dataclass
class ReconstructConfig:
    """Settings of the ``reconstruct`` command (YAML-overridable, see :mod:`face3d.config`).

    * ``model``: morphable model name or .npz path (:func:`face3d.model_zoo.load_model`).
    * ``landmarks``: detector backend (``auto``, ``dlib``, ``dlib-cnn``, ``fan``, ``file``).
    * ``device``: torch device for the fitting and rendering.
    * ``fov_deg``: assumed horizontal field of view of the photo's camera. Photos rarely
      carry it; 30° (a short telephoto, typical of portraits) keeps perspective mild.
    * ``all_faces``: reconstruct every face instead of the largest.
    * ``detail``: strength of the shape-from-shading relief, 0 (none) … 1.
    * ``max_detect_side``: faces are found on a copy at most this large (px).
    * ``init``: ``landmarks`` (LM from the closed-form pose and the mean face),
      ``regressor`` (LM from the learned regressor, with its landmarks standing in where the
      detected ones are unreliable; ``stand_in`` says when) or ``auto`` (the default: the
      regressor when ``regressor`` is given or one ships for the model, else landmarks).
    * ``regressor``: regressor checkpoint for ``init="regressor"`` (None: the one shipped for
      the model, :func:`face3d.regressor.inference.default_regressor_path`).
    * ``regressor_passes``: the regressor first sees the face's box, then ``passes − 1`` times
      either the robust crop of the detected points (near-frontal estimates) or the crop its
      own estimate frames (:func:`face3d.regressor.inference.regress_detected`).
    """

    model: str = "auto"
    landmarks: str = "auto"
    device: str = "cpu"
    fov_deg: float = 30.0
    all_faces: bool = False
    detail: float = 1.0
    max_detect_side: int = 1024
    init: str = "auto"
    regressor: Optional[str] = None
    regressor_passes: int = 2
    stand_in: StandInSettings = field(default_factory=StandInSettings)
    fit: LMFitConfig = field(default_factory=LMFitConfig)
    photometric: PhotometricSettings = field(default_factory=PhotometricSettings)
    texture: TextureSettings = field(default_factory=TextureSettings)
    sfs: DetailSettings = field(default_factory=DetailSettings)

    def __post_init__(self) -> None:
        if not 0.0 <= self.detail <= 1.0:
            raise ValueError(f"detail must be within 0..1, got {self.detail}")
        if not 1.0 <= self.fov_deg <= 120.0:
            raise ValueError(f"fov_deg must be within 1..120, got {self.fov_deg}")
        if self.init not in ("auto", "landmarks", "regressor"):
            raise ValueError(f"init must be 'auto', 'landmarks' or 'regressor', got {self.init!r}")
        if self.regressor_passes < 1:
            raise ValueError(f"regressor_passes must be at least 1, got {self.regressor_passes}")


@dataclass
class FaceReconstruction:
    """One reconstructed face. Tensors are single items (no batch dimension) on the CPU.

    * ``face``: the detection (bbox, score, landmarks in input-image pixels).
    * ``alpha`` (K_id,), ``beta`` (K_exp,), ``sh`` (27,), ``albedo_gain`` (3,).
    * ``R`` (3, 3), ``t`` (3,) mm: model → camera frame; ``intrinsics``: the photo's camera.
    * ``landmarks_fitted`` (68, 2): the fitted model's landmarks projected into the image.
    * ``vertices`` (N', 3), ``triangles`` (F', 3), ``uvs``, ``uv_triangles``: the output mesh
      (detailed when detail > 0), model frame, mm.
    * ``coarse_vertices`` (N, 3): the 3DMM shape, model frame.
    * ``texture`` (S, S, 3) uint8 sRGB; ``albedo`` (N, 3) linear per-vertex albedo.
    * ``occlusion`` (H, W) float: image pixels of the face the model could not explain.
    * ``timings_ms``: per stage.
    * ``init``: how LM started (``landmarks`` / ``regressor``); ``stand_in`` (68,) bool: the
      detected landmarks the regressor's replaced (None without the regressor).
    * ``visibility`` (68,) int8 per fitted landmark: 0 visible, 1 self-occluded (its surface
      faces away at the fitted pose), 2 hidden by an object (the photometric occlusion map
      covers it); see :func:`landmark_visibility`.
    """

    face: DetectedFace
    alpha: torch.Tensor
    beta: torch.Tensor
    sh: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    intrinsics: Intrinsics
    landmarks_fitted: np.ndarray
    vertices: torch.Tensor
    triangles: torch.Tensor
    uvs: torch.Tensor
    uv_triangles: torch.Tensor
    coarse_vertices: torch.Tensor
    texture: np.ndarray
    albedo: torch.Tensor
    occlusion: torch.Tensor
    fit_error_px: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    init: str = "landmarks"
    stand_in: Optional[np.ndarray] = None
    visibility: Optional[np.ndarray] = None

    def pose_degrees(self) -> dict[str, float]:
        from face3d.camera import matrix_to_euler

        yaw, pitch, roll = matrix_to_euler(self.R[None])
        return {"yaw": float(yaw), "pitch": float(pitch), "roll": float(roll)}

    def mesh(self) -> MeshData:
        """The textured output mesh for :func:`face3d.export.export_mesh`."""
        return MeshData(vertices=self.vertices.numpy(), triangles=self.triangles.numpy(),
                        normals=vertex_normals(self.vertices[None], self.triangles)[0].numpy(),
                        uvs=self.uvs.numpy(), uv_triangles=self.uv_triangles.numpy(), texture=self.texture)

    def to_json(self) -> dict[str, Any]:
        """The documented per-face JSON record (see README, "JSON output")."""
        def r(a: Any, nd: int = 3) -> Any:
            return np.round(np.asarray(a, dtype=np.float64), nd).tolist()

        return {
            "bbox": r(self.face.bbox, 2),
            "score": round(float(self.face.score), 4),
            "detector": self.face.detector,
            "landmarks_detected": r(self.face.landmarks, 2),
            "landmarks_fitted": r(self.landmarks_fitted, 2),
            "fit_error_px": round(self.fit_error_px, 3),
            "pose": {k: round(v, 3) for k, v in self.pose_degrees().items()},
            "translation_mm": r(self.t, 3),
            "camera": {"focal_px": r(self.intrinsics.fxy()[0], 3),
                       "principal_px": r(self.intrinsics.principal[0], 3)},
            "coefficients": {"alpha": r(self.alpha, 5), "beta": r(self.beta, 5), "sh": r(self.sh, 5)},
            "occluded_fraction": round(float(self.occlusion.sum() / max(1.0, float(self.face.area))), 4),
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            "init": self.init,
            "stand_in_landmarks": [] if self.stand_in is None else np.flatnonzero(self.stand_in).tolist(),
            "landmark_visibility": [] if self.visibility is None else self.visibility.astype(int).tolist(),
        }


@dataclass
class FaceAlignment:
    """The landmark stages' result for one face (:meth:`Reconstructor.align`).

    * ``face``: the detection; ``landmarks`` (1, 68, 2): the points LM fitted (the detected
      ones, with the regressor's standing in where ``stand_in`` (68,) bool says so).
    * ``fit``: the :class:`~face3d.fitting.LMFitResult` (batch 1); ``intrinsics``: the photo camera.
    * ``landmarks_fitted`` (68, 2): the fitted model's 68 landmark vertices projected into the
      image (anatomical points, so a hidden jaw lies where it is in 3-D, as AFLW2000-3D marks it).
    """

    face: DetectedFace
    landmarks: torch.Tensor
    fit: Any
    intrinsics: Intrinsics
    landmarks_fitted: np.ndarray
    stand_in: Optional[np.ndarray] = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def landmark_visibility(cam_vertices: torch.Tensor, model: MorphableModel, landmarks_2d: torch.Tensor,
                        occlusion: torch.Tensor) -> np.ndarray:
    """(68,) int8 per landmark: 0 visible, 1 self-occluded, 2 hidden by an object.

    ``cam_vertices`` (1, N, 3) the fitted shape in the camera frame; ``landmarks_2d`` (68, 2)
    their projections, pixels; ``occlusion`` (H, W) the photometric refinement's occlusion map
    (face pixels the model could not explain). A landmark is self-occluded when its vertex
    normal faces away from the camera (the far jaw, the far eye corner at large yaw), hidden by
    an object when the occlusion map exceeds 0.5 in a 3×3 neighbourhood of its pixel.
    """
    normals = vertex_normals(cam_vertices, model.triangles)[0, model.landmark_ids]
    pts = cam_vertices[0, model.landmark_ids]
    facing = -(normals * torch.nn.functional.normalize(pts, dim=-1)).sum(-1)
    out = np.where(facing.cpu().numpy() > 0.0, 0, 1).astype(np.int8)
    occ = torch.nn.functional.max_pool2d(occlusion[None, None].float(), 3, 1, 1)[0, 0]
    h, w = occ.shape
    ij = landmarks_2d.round().long()
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
    hidden = torch.zeros(len(ij), dtype=torch.bool)
    hidden[inside] = (occ[ij[inside, 1], ij[inside, 0]] > 0.5).cpu()
    out[(out == 0) & hidden.numpy()] = 2
    return out


@contextmanager
def _timer(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


class Reconstructor:
    """Runs the pipeline; build once, call :meth:`reconstruct` per image.

    The model, detector, landmark fitter and UV layout are made on first use and reused.
    """

    def __init__(self, config: Optional[ReconstructConfig] = None,
                 model: Optional[MorphableModel] = None) -> None:
        self.config = config or ReconstructConfig()
        self.device = torch.device(self.config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            from face3d.errors import UsageError

            raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        self._model = model.to(self.device) if model is not None else None
        self._detector = None
        self._fitter: Optional[LandmarkFitter] = None
        self._subdivision = None
        self._layout = None
        self._regressor = None
        self._box_landmarker = None

    @property
    def model(self) -> MorphableModel:
        if self._model is None:
            from face3d.model_zoo import load_model

            self._model = load_model(self.config.model, device=self.device)
        return self._model

    @property
    def detector(self):
        if self._detector is None:
            self._detector = get_detector(self.config.landmarks, device=self.device,
                                          max_detect_side=self.config.max_detect_side)
        return self._detector

    @property
    def init_mode(self) -> str:
        """``landmarks`` or ``regressor``: the config's ``init`` with ``auto`` resolved."""
        if self.config.init != "auto":
            return self.config.init
        if self.config.regressor:
            return "regressor"
        from face3d.errors import BackendUnavailableError
        from face3d.regressor.inference import default_regressor_path

        try:
            default_regressor_path(self.model)
        except BackendUnavailableError:
            return "landmarks"
        return "regressor"

    @property
    def regressor(self):
        """The learned regressor of ``init="regressor"`` (loaded on first use)."""
        if self._regressor is None:
            from face3d.regressor.inference import default_regressor_path
            from face3d.regressor.train import load_regressor

            path = self.config.regressor or default_regressor_path(self.model)
            self._regressor = load_regressor(path, self.model, self.device)
        return self._regressor

    @property
    def box_landmarker(self):
        """The :class:`~face3d.landmarks.CascadeDetector` that places landmarks in given face boxes."""
        from face3d.landmarks import CascadeDetector

        if isinstance(self._detector, CascadeDetector):
            return self._detector
        if self._box_landmarker is None:
            self._box_landmarker = CascadeDetector(max_detect_side=self.config.max_detect_side)
        return self._box_landmarker

    def detect_faces(self, image: LoadedImage, boxes: Optional[Any] = None) -> list[DetectedFace]:
        """Every face found in ``image``, or placed at ``boxes`` ((K, 4) ``[x0, y0, x1, y1]`` edges,
        pixels, framed like the box of the face's 68 points), in the detector's order."""
        if boxes is not None:
            return self.box_landmarker.faces_in_boxes(image.rgb, boxes)
        return self.detector.detect_image(image)

    def detect(self, image: LoadedImage, boxes: Optional[Any] = None) -> tuple[list[DetectedFace], Optional[str]]:
        """Faces to reconstruct (largest first) and an optional note for the user."""
        faces = self.detect_faces(image, boxes)
        return select_faces(faces, all_faces=self.config.all_faces or boxes is not None, source=image.path)

    def reconstruct(self, image: LoadedImage, faces: Optional[list[DetectedFace]] = None,
                    boxes: Optional[Any] = None) -> tuple[list[FaceReconstruction], Optional[str]]:
        """Reconstruct the faces of ``image`` (detected unless given as ``faces`` or ``boxes``)."""
        faces, note, photo, timings = self._faces_and_photo(image, faces, boxes)
        return [self._one_face(photo, face, dict(timings)) for face in faces], note

    def align(self, image: LoadedImage, faces: Optional[list[DetectedFace]] = None, boxes: Optional[Any] = None
              ) -> tuple[list["FaceAlignment"], Optional[str]]:
        """The pipeline's landmark stages only: detect (unless ``faces`` are given), the
        regressor with ``init="regressor"``, and the LM fit; no rendering. This is what
        ``evaluate landmarks`` measures and what :meth:`reconstruct` starts from. ``boxes``:
        face boxes instead of detection (:meth:`detect_faces`)."""
        faces, note, photo, timings = self._faces_and_photo(image, faces, boxes)
        return [self._align_face(photo, face, dict(timings)) for face in faces], note

    def _faces_and_photo(self, image: LoadedImage, faces: Optional[list[DetectedFace]], boxes: Optional[Any]):
        """The faces to work on (detected, timed, unless given), the note and the photo tensor."""
        timings: dict[str, float] = {}
        note = None
        if faces is None:
            with _timer(timings, "detect"):
                faces, note = self.detect(image, boxes)
        return faces, note, image_to_tensor(image.rgb).to(self.device), timings

    # -- stages ------------------------------------------------------------------------
    def _align_face(self, photo: torch.Tensor, face: DetectedFace, timings: dict[str, float]) -> "FaceAlignment":
        cfg, model = self.config, self.model
        dev, dt = self.device, model.dtype
        _, _, h, w = photo.shape
        K = Intrinsics.default(w, h, batch=1, fov_deg=cfg.fov_deg, dtype=dt, device=dev)
        lm = torch.as_tensor(face.landmarks, dtype=dt, device=dev)[None]

        if self._fitter is None:
            self._fitter = LandmarkFitter(model, cfg.fit, device=dev)
        stand_in = None
        si = cfg.stand_in
        # a face dlib's HOG accepted is one its 68-point predictor was trained for (HOG finds few
        # faces past 45°): with near_frontal="detector" its points are fitted alone and the
        # regressor is not even run; it takes over where HOG gave up (the cascade's CNN or Haar
        # stage, a given box, another detector) and it sees a turned head
        hog_face = face.detector.endswith("hog") and si.near_frontal == "detector"
        if self.init_mode == "regressor" and not hog_face:
            from face3d.landmarks.cascade import face_box
            from face3d.regressor.inference import regress_detected, stand_in_landmarks

            with _timer(timings, "regressor"):
                box = torch.as_tensor(face_box(face), dtype=torch.float64)[None]
                est = regress_detected(self.regressor, model, photo, box, lm, K, passes=cfg.regressor_passes,
                                       fitter=self._fitter)
            limit = si.regressor_only_deg if si.regressor_only_deg is not None else si.large_yaw_deg
            if float(est.yaw_deg.abs().max()) < limit and si.near_frontal == "detector":
                stand_in = np.zeros(lm.shape[1], dtype=bool)
                with _timer(timings, "fit"):
                    fit = self._fitter.fit(lm, K)
            else:
                lm, weights, replaced = stand_in_landmarks(lm, est, si)
                stand_in = replaced[0].cpu().numpy()
                with _timer(timings, "fit"):
                    fit = self._fitter.fit(lm, K, weights=weights,
                                           init=(est.R, est.t, est.params.alpha, est.params.beta))
        else:
            with _timer(timings, "fit"):
                fit = self._fitter.fit(lm, K)
        fitted = project(model.landmarks(transform(model.shape(fit.alpha, fit.beta), fit.R, fit.t)), K)[0]
        return FaceAlignment(face=face, landmarks=lm, fit=fit, intrinsics=K, landmarks_fitted=fitted.cpu().numpy(),
                             stand_in=stand_in, timings_ms=timings)

    def _one_face(self, photo: torch.Tensor, face: DetectedFace, timings: dict[str, float]) -> FaceReconstruction:
        cfg, model = self.config, self.model
        dev = self.device
        aligned = self._align_face(photo, face, timings)
        fit, lm, K, stand_in = aligned.fit, aligned.landmarks, aligned.intrinsics, aligned.stand_in
        with _timer(timings, "photometric"):
            photo_res = refine_photometric(photo, model, fit.alpha, fit.beta, fit.R, fit.t, K, landmarks=lm,
                                           settings=cfg.photometric)
        alpha, beta, R, t = photo_res.alpha, photo_res.beta, photo_res.R, photo_res.t
        shape = model.shape(alpha, beta)
        cam_verts = transform(shape, R, t)
        face_size = torch.tensor([float(np.sqrt(max(face.area, 1.0)))], device=dev)
        occlusion = clean_occlusion(photo_res.occlusion(), lm, face_size)

        with _timer(timings, "texture"):
            normals = vertex_normals(cam_verts, model.triangles)
            lit = photo_res.albedo * irradiance(normals, photo_res.sh, frame="camera")
            if self._layout is None or self._layout.size != cfg.texture.size:
                from face3d.model_zoo import face3d_home

                self._layout = uv_layout(model, cfg.texture.size, cache_dir=face3d_home() / "cache")
            tex = project_texture(photo, cam_verts, model, K, cfg.texture, fill=linear_to_srgb(lit),
                                  occlusion=occlusion, layout=self._layout)
            texture = (tex.texture[0].permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()

        if self._subdivision is None:
            self._subdivision = subdivide(model.triangles, model.n_vertices, model.uv_triangles, len(model.uvs))
        sub = self._subdivision
        fine_cam = sub.vertices(cam_verts)
        if cfg.detail > 0:
            with _timer(timings, "detail"):
                sfs = dataclasses.replace(cfg.sfs, strength=cfg.detail)
                skin = (1.0 - occlusion) * photo_res.face_mask
                detail = estimate_detail(photo, cam_verts, model.triangles, K, photo_res.albedo, sh=photo_res.sh,
                                         pixel_weights=skin, settings=sfs, vertex_weights=model.skin_mask)
                fine_cam = apply_detail(fine_cam, sub.triangles, detail)
        # back to the model frame: X = Rᵀ (X_cam − t)
        fine_model = (fine_cam - t[:, None, :]) @ R
        fitted_2d = project(model.landmarks(cam_verts), K)[0]
        err = (fitted_2d - lm[0]).norm(dim=-1).mean()
        visibility = landmark_visibility(cam_verts, model, fitted_2d, occlusion[0, 0])
        return FaceReconstruction(
            face=face, alpha=alpha[0].cpu(), beta=beta[0].cpu(), sh=photo_res.sh[0].cpu(), R=R[0].cpu(),
            t=t[0].cpu(), intrinsics=K.to("cpu"), landmarks_fitted=fitted_2d.cpu().numpy(),
            vertices=fine_model[0].cpu(), triangles=sub.triangles.cpu(), uvs=sub.uvs(model.uvs).cpu(),
            uv_triangles=sub.uv_triangles.cpu(), coarse_vertices=shape[0].cpu(), texture=texture,
            albedo=photo_res.albedo[0].cpu(), occlusion=occlusion[0, 0].cpu(), fit_error_px=float(err),
            timings_ms=timings, init=self.init_mode, stand_in=stand_in, visibility=visibility,
        )
