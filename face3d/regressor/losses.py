"""Training losses of the coefficient regressor (Deng et al. 2019; CFR-GAN §3.1).

Everything is differentiable in the predicted :class:`~face3d.coefficients.FaceParams`: the
face is built by the morphable model, posed, rendered with :class:`face3d.render.Renderer`
through the aligned camera (:func:`face3d.coefficients.aligned_camera` at the crop's size)
and compared with the target crop.

Base losses (Deng et al., "Accurate 3D Face Reconstruction with Weakly-Supervised Learning",
CVPR-W 2019), used in CFR-GAN's first fine-tuning stage with the occluded crop as the input
and the clean crop as every loss's target:

* :func:`photometric_loss` — L2,1: the per-pixel Euclidean norm of the colour difference,
  averaged over the pixels of the rendered face × the model's skin mask × an optional
  valid-pixel (e.g. un-occluded) mask. Compared in sRGB, where the target crops and Deng's
  weight live: the render (linear light) is sRGB-encoded first.
* :func:`landmark_loss` — weighted squared distance of the 68 projected model landmarks to
  the targets, Σ_n w_n ‖q_n − q'_n‖² / (B·68), measured in pixels of a 224² crop. Weights:
  see :func:`landmark_weights`.
* :class:`IdentityLoss` — 1 − cos of face-recognition embeddings of the target and of the
  render pasted over the target.
* :func:`coefficient_regularization` — w_id ‖α/ξ_id‖² + w_exp ‖β/ξ_exp‖² + w_tex ‖δ/ξ_t‖² per
  face (ξ = 1 for Deng's std-scaled BFM bases, so this is their term), and
  :func:`lighting_regularization`, the variance of γ across colour channels (near-white light).
* :func:`reflectance_loss` — variance of the albedo over the skin vertices (Deng's L_tex).

Second stage (CFR-GAN, teacher T on clean I, student S on masked I', term weights 0.1 / 1.0 / 0.01):

* :func:`parameter_loss` — eq. 2, L_para = ‖T(I) − S(I')‖₂ on the raw head outputs.
* :func:`teach_loss` — eq. 3, L_teach = 1/K Σ_i w_i ‖T⁽ⁱ⁾(I) − S⁽ⁱ⁾(I')‖₂ over the top K = 4
  feature maps, w = (0.125, 0.25, 0.5, 1).
* :func:`lan_loss` — eq. 4, L_lan = 1/N Σ_n w_n ‖q_n − q'_n(x)‖₁, inner mouth and eyes weighted 20.

:class:`RegressorLoss` combines the first group with :class:`RegressorLossConfig`'s weights;
:func:`teacher_student_loss` the second.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from face3d.camera import project, transform
from face3d.coefficients import ALIGNED_SIZE, FaceParams, aligned_camera
from face3d.color import linear_to_srgb
from face3d.morphable_model import MorphableModel
from face3d.render import Renderer, RenderSettings, interpolate_vertex_attributes
from face3d.regressor.model import RegressorOutput

__all__ = [
    "RegressorLossConfig", "LossTerms", "FaceRender", "landmark_weights", "project_landmarks", "render_face",
    "photometric_loss", "landmark_loss", "lan_loss", "coefficient_regularization", "lighting_regularization",
    "reflectance_loss", "IdentityLoss", "parameter_loss", "teach_loss", "RegressorLoss", "teacher_student_loss",
    "TEACH_LAYER_WEIGHTS",
]

#: CFR-GAN §3.1: weights of the top 4 feature maps in L_teach, finest first.
TEACH_LAYER_WEIGHTS = (0.125, 0.25, 0.5, 1.0)


@dataclass
class RegressorLossConfig:
    """Loss weights. Defaults are the papers' values; sources:

    * CFR-GAN (seed paper 003, §3.1): stage-2 term weights ``w_para`` 0.1, ``w_teach`` 1.0,
      ``w_lan`` 0.01; ``teach_layer_weights`` (.125, .25, .5, 1); landmark weight 20 on the
      inner mouth and eye points (``landmark_weights = "cfrgan"``); landmark loss × 0.7 on
      pseudo-labelled data (CelebA, Multi-PIE labelled by 3DDFA-V2): ``pseudo_landmark_factor``.
    * Not in the seed papers — Deng et al. 2019 (CVPR-W), cited from memory and checked against
      the options of their public PyTorch release: ``w_photo`` 1.92 (paper: 1.9), ``w_landmark``
      1.6e-3 (pixels of a 224² crop), ``w_identity`` 0.2, ``w_reg`` 3e-4 with ``w_reg_id`` 1.0,
      ``w_reg_exp`` 0.8, ``w_reg_tex`` 1.7e-3 (the paper's ω_γ; their PyTorch release uses
      1.7e-2), ``w_reflectance`` 5.0. ``w_lighting`` 10.0 (γ channel variance) exists only in
      their PyTorch release. Their own landmark weighting (20 on the nose 28–30 and inner mouth
      60–67) is ``landmark_weights = "deng"``; CFR-GAN says stage 1 follows Deng's losses but
      names eyes and inner mouth for its landmark weights, which we use for both stages.
    * ``teach_distance``: how ‖·‖₂ of eq. 3 is taken per map: "rms" (the L2 norm / √(C·H·W),
      so maps of different sizes are comparable and the weights w_i act as the paper intends),
      "l2" (the plain norm) or "mse" (squared, /(C·H·W), Johnson et al.'s feature loss [22]).
    """

    w_photo: float = 1.92
    w_landmark: float = 1.6e-3
    w_identity: float = 0.2
    w_reg: float = 3e-4
    w_reg_id: float = 1.0
    w_reg_exp: float = 0.8
    w_reg_tex: float = 1.7e-3
    w_lighting: float = 10.0
    w_reflectance: float = 5.0
    landmark_weights: str = "cfrgan"
    landmark_emphasis: float = 20.0
    pseudo_landmark_factor: float = 0.7
    w_para: float = 0.1
    w_teach: float = 1.0
    w_lan: float = 0.01
    teach_layer_weights: tuple[float, float, float, float] = TEACH_LAYER_WEIGHTS
    teach_distance: str = "rms"

    def __post_init__(self) -> None:
        for name in ("w_photo", "w_landmark", "w_identity", "w_reg", "w_reg_id", "w_reg_exp", "w_reg_tex",
                     "w_lighting", "w_reflectance", "landmark_emphasis", "pseudo_landmark_factor", "w_para",
                     "w_teach", "w_lan"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.landmark_weights not in ("cfrgan", "deng", "uniform"):
            raise ValueError(f"landmark_weights must be 'cfrgan', 'deng' or 'uniform', got {self.landmark_weights!r}")
        if len(self.teach_layer_weights) != 4:
            raise ValueError(f"teach_layer_weights needs 4 values, got {self.teach_layer_weights}")
        if self.teach_distance not in ("rms", "l2", "mse"):
            raise ValueError(f"teach_distance must be 'rms', 'l2' or 'mse', got {self.teach_distance!r}")


@dataclass
class LossTerms:
    """``total`` (scalar, weighted sum) and the unweighted terms by name (scalars, for logging)."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


# -- landmarks ---------------------------------------------------------------------------------
def landmark_weights(kind: str = "cfrgan", emphasis: float = 20.0, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """Per-landmark weights (68,) in iBUG order (0-based).

    * "cfrgan": ``emphasis`` on the eyes (36–47) and the inner mouth (60–67), 1 elsewhere
      (CFR-GAN eq. 4: "inner mouth and eye points to 20").
    * "deng": ``emphasis`` on the nose 28–30 and the inner mouth 60–67 (Deng et al. 2019).
    * "uniform": all 1.
    """
    w = torch.ones(68, dtype=dtype, device=device)
    if kind == "cfrgan":
        w[36:48] = emphasis
        w[60:68] = emphasis
    elif kind == "deng":
        w[28:31] = emphasis
        w[60:68] = emphasis
    elif kind != "uniform":
        raise ValueError(f"landmark weights must be 'cfrgan', 'deng' or 'uniform', got {kind!r}")
    return w


def project_landmarks(model: MorphableModel, params: FaceParams, image_size: int = ALIGNED_SIZE) -> Tensor:
    """The model's 68 landmarks of ``params`` projected into the aligned crop: (B, 68, 2) pixels
    (x right, y down, top-left pixel centre at (0, 0))."""
    verts = model.landmarks(model.shape(params.alpha, params.beta))
    cam = transform(verts, params.rotation().to(verts), params.camera_translation().to(verts))
    return project(cam, aligned_camera(params.batch, image_size, verts.dtype, verts.device))


def landmark_loss(pred: Tensor, target: Tensor, weights: Optional[Tensor] = None,
                  sample_weights: Optional[Tensor] = None) -> Tensor:
    """Deng et al.'s landmark loss Σ_b s_b Σ_n w_n ‖pred − target‖² / (B·68).

    ``pred``, ``target`` (B, 68, 2) pixels; ``weights`` (68,) or (B, 68) (e.g. × visibility),
    default :func:`landmark_weights` ("cfrgan"); ``sample_weights`` (B,) per-face factors
    (e.g. ``pseudo_landmark_factor`` for detector-labelled faces).
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"landmarks must both be (B, N, 2), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if weights is None:
        weights = landmark_weights(dtype=pred.dtype, device=pred.device)
    per = ((pred - target) ** 2).sum(-1) * weights.to(pred)
    if sample_weights is not None:
        per = per * sample_weights.to(pred).view(-1, 1)
    return per.sum() / per.numel()


def lan_loss(pred: Tensor, target: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """CFR-GAN eq. 4: mean over faces of 1/N Σ_n w_n ‖q_n − q'_n‖₁ (L1 over x, y), pixels."""
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"landmarks must both be (B, N, 2), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if weights is None:
        weights = landmark_weights(dtype=pred.dtype, device=pred.device)
    per = (pred - target).abs().sum(-1) * weights.to(pred)
    return per.mean()


# -- rendering and image losses ------------------------------------------------------------------
@dataclass
class FaceRender:
    """:func:`render_face`'s result: ``image`` (B, 3, H, W) linear RGB, ``srgb`` (same, encoded),
    ``mask`` (B, 1, H, W) face coverage, ``skin`` (B, 1, H, W) the model's skin mask interpolated
    (0 off the face), ``albedo`` (B, N, 3) per-vertex linear albedo, ``landmarks`` (B, 68, 2) px."""

    image: Tensor
    srgb: Tensor
    mask: Tensor
    skin: Tensor
    albedo: Tensor
    landmarks: Tensor


def render_face(model: MorphableModel, params: FaceParams, image_size: int = ALIGNED_SIZE,
                renderer: Optional[Renderer] = None) -> FaceRender:
    """Render ``params`` into the aligned crop of ``image_size`` pixels (differentiable)."""
    if renderer is None:
        renderer = Renderer(RenderSettings(image_size=image_size))
    elif renderer.settings.size != (image_size, image_size):
        raise ValueError(f"renderer makes {renderer.settings.size} images, the crop is {image_size}²")
    shape = model.shape(params.alpha, params.beta)
    cam = transform(shape, params.rotation().to(shape), params.camera_translation().to(shape))
    K = aligned_camera(params.batch, image_size, shape.dtype, shape.device)
    albedo = model.albedo(params.delta, batch=params.batch)
    out = renderer.render(cam, model.triangles, K, albedo=albedo, sh=params.sh.to(shape))
    skin = interpolate_vertex_attributes(out.fragments, model.skin_mask.to(shape)[:, None]).permute(0, 3, 1, 2)
    lm = project(model.landmarks(cam), K)
    return FaceRender(image=out.image, srgb=linear_to_srgb(out.image), mask=out.mask, skin=skin * out.mask,
                      albedo=albedo, landmarks=lm)


def photometric_loss(rendered: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Σ_pixels mask · √(eps + ‖rendered − target‖²) / max(Σ mask, 1) (Deng et al.'s L2,1).

    ``rendered``, ``target`` (B, 3, H, W) in the same colour encoding; ``mask`` (B, 1, H, W) ≥ 0.
    ``eps`` keeps the gradient finite where the colours agree.
    """
    if rendered.shape != target.shape:
        raise ValueError(f"rendered {tuple(rendered.shape)} and target {tuple(target.shape)} differ in shape")
    dist = torch.sqrt(eps + ((rendered - target) ** 2).sum(1, keepdim=True))
    return (dist * mask).sum() / mask.sum().clamp_min(1.0)


def coefficient_regularization(params: FaceParams, model: MorphableModel, w_id: float = 1.0, w_exp: float = 0.8,
                               w_tex: float = 1.7e-3) -> Tensor:
    """(w_id ‖α/ξ_id‖² + w_exp ‖β/ξ_exp‖² + w_tex ‖δ/ξ_t‖²) summed over faces / B."""
    def sq(c: Tensor, std: Tensor) -> Tensor:
        return ((c / std[: c.shape[-1]].to(c)) ** 2).sum()

    b = params.batch
    return (w_id * sq(params.alpha, model.id_std) + w_exp * sq(params.beta, model.exp_std)
            + w_tex * sq(params.delta, model.albedo_std)) / b


def lighting_regularization(sh: Tensor) -> Tensor:
    """Mean squared deviation of γ (B, 27) from its mean over the 3 colour channels."""
    g = sh.view(-1, 3, 9)
    return ((g - g.mean(1, keepdim=True)) ** 2).mean()


def reflectance_loss(albedo: Tensor, skin: Tensor) -> Tensor:
    """Deng et al.'s albedo flatness: Σ ‖(a_i − ā) m_i‖² / (B Σ m) over vertices i, ā the
    skin-weighted mean albedo of each face. ``albedo`` (B, N, 3); ``skin`` (N,) in [0, 1]."""
    m = skin.to(albedo).view(1, -1, 1)
    mean = (albedo * m).sum(1, keepdim=True) / m.sum().clamp_min(1e-8)
    return (((albedo - mean) * m) ** 2).sum() / (albedo.shape[0] * m.sum().clamp_min(1e-8))


class IdentityLoss(nn.Module):
    """1 − cos(f(a), f(b)) averaged over the batch, f a frozen face-recognition network.

    ``net``: e.g. :func:`face3d.regressor.identity.load_identity_net`; its input is
    ``input_size``² RGB mapped from [0, 1] to [-1, 1] (ArcFace's convention). Crops are
    resampled to the network's input either by a plain resize, or by ``warp`` (B, 2, 3): an
    affine map from the network's normalised output coordinates to the crop's
    (``F.affine_grid`` convention), e.g. to the ArcFace 5-point template. The network stays in
    eval mode and gets no gradient; the images do.
    """

    def __init__(self, net: nn.Module, input_size: int = 112) -> None:
        super().__init__()
        self.net = net.requires_grad_(False).eval()
        self.input_size = input_size

    def train(self, mode: bool = True) -> "IdentityLoss":  # the recognition net stays frozen
        super().train(mode)
        self.net.eval()
        return self

    def _prepare(self, image: Tensor, warp: Optional[Tensor]) -> Tensor:
        s = self.input_size
        if warp is not None:
            grid = F.affine_grid(warp.to(image), [image.shape[0], 3, s, s], align_corners=False)
            image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        elif image.shape[-2:] != (s, s):
            image = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return image * 2.0 - 1.0

    def embed(self, image: Tensor, warp: Optional[Tensor] = None) -> Tensor:
        """Unit embeddings (B, D) of (B, 3, H, W) sRGB images in [0, 1]."""
        return F.normalize(self.net(self._prepare(image, warp)), dim=-1)

    def forward(self, image_a: Tensor, image_b: Tensor, warp: Optional[Tensor] = None) -> Tensor:
        cos = (self.embed(image_a, warp) * self.embed(image_b, warp)).sum(-1)
        return (1.0 - cos).mean()


# -- teacher-student (CFR-GAN stage 2) --------------------------------------------------------------
def parameter_loss(teacher_raw: Tensor, student_raw: Tensor) -> Tensor:
    """CFR-GAN eq. 2: mean over faces of ‖T(I) − S(I')‖₂ (the teacher is not differentiated)."""
    return (teacher_raw.detach() - student_raw).norm(dim=-1).mean()


def teach_loss(teacher_maps: Sequence[Tensor], student_maps: Sequence[Tensor],
               weights: Sequence[float] = TEACH_LAYER_WEIGHTS, distance: str = "rms") -> Tensor:
    """CFR-GAN eq. 3: 1/K Σ_i w_i d(T⁽ⁱ⁾, S⁽ⁱ⁾), d per face averaged over the batch.

    d: "rms" = ‖·‖₂/√(C·H·W); "l2" = ‖·‖₂; "mse" = ‖·‖₂²/(C·H·W) (see
    :class:`RegressorLossConfig`). The teacher maps are detached.
    """
    if not (len(teacher_maps) == len(student_maps) == len(weights)):
        raise ValueError(f"need as many teacher maps ({len(teacher_maps)}), student maps ({len(student_maps)}) "
                         f"and weights ({len(weights)})")
    total = student_maps[0].new_zeros(())
    for t, s, w in zip(teacher_maps, student_maps, weights):
        if t.shape != s.shape:
            raise ValueError(f"teacher map {tuple(t.shape)} and student map {tuple(s.shape)} differ")
        diff = (t.detach() - s).flatten(1)
        n = diff.shape[1]
        if distance == "rms":
            d = diff.norm(dim=1) / math.sqrt(n)
        elif distance == "l2":
            d = diff.norm(dim=1)
        elif distance == "mse":
            d = (diff ** 2).sum(1) / n
        else:
            raise ValueError(f"distance must be 'rms', 'l2' or 'mse', got {distance!r}")
        total = total + w * d.mean()
    return total / len(weights)


def teacher_student_loss(model: MorphableModel, teacher: RegressorOutput, student: RegressorOutput,
                         target_landmarks: Tensor, image_size: int = ALIGNED_SIZE,
                         config: RegressorLossConfig = RegressorLossConfig()) -> LossTerms:
    """CFR-GAN's second stage: w_para L_para + w_teach L_teach + w_lan L_lan (0.1 / 1.0 / 0.01).

    ``teacher`` on the clean crops I, ``student`` on the masked crops I' (both from
    :meth:`FaceRegressor.features`); ``target_landmarks`` (B, 68, 2) in pixels of the
    ``image_size`` crop — the annotated landmarks of I, or the teacher's projected ones.
    L_lan is measured in 224²-crop pixels like :func:`landmark_loss`.
    """
    s = student.coefficients
    sizes = [model.n_id, model.n_exp, model.n_albedo, 3, 27, 3]
    params = FaceParams(*torch.split(s, sizes, dim=1))
    scale = ALIGNED_SIZE / image_size
    lm = project_landmarks(model, params, image_size)
    w = landmark_weights(config.landmark_weights, config.landmark_emphasis, lm.dtype, lm.device)
    terms = {
        "para": parameter_loss(teacher.raw, student.raw),
        "teach": teach_loss(teacher.maps, student.maps, config.teach_layer_weights, config.teach_distance),
        "lan": lan_loss(lm * scale, target_landmarks.to(lm) * scale, w),
    }
    total = config.w_para * terms["para"] + config.w_teach * terms["teach"] + config.w_lan * terms["lan"]
    return LossTerms(total=total, terms=terms)


class RegressorLoss(nn.Module):
    """Deng et al.'s weakly supervised loss (CFR-GAN stage 1), weights from :class:`RegressorLossConfig`.

    ``identity``: an :class:`IdentityLoss` (or None to skip the term, e.g. without weights).
    """

    def __init__(self, model: MorphableModel, config: RegressorLossConfig = RegressorLossConfig(),
                 identity: Optional[IdentityLoss] = None, render_settings: Optional[RenderSettings] = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.identity = identity
        self._settings = render_settings or RenderSettings()
        self._renderers: dict[int, Renderer] = {}

    def renderer(self, size: int) -> Renderer:
        """The (cached) renderer for ``size``² crops."""
        if size not in self._renderers:
            self._renderers[size] = Renderer(dataclasses.replace(self._settings, image_size=size))
        return self._renderers[size]

    def forward(self, params: FaceParams, target: Tensor, landmarks: Optional[Tensor] = None,
                valid_mask: Optional[Tensor] = None, landmark_visibility: Optional[Tensor] = None,
                pseudo_labelled: Optional[Tensor] = None, identity_warp: Optional[Tensor] = None) -> LossTerms:
        """Losses of predicted ``params`` against the (clean) target crops.

        Args:
            params: predictions, batch B.
            target: (B, 3, S, S) sRGB crops in [0, 1] (the clean image in stage 1).
            landmarks: (B, 68, 2) target landmarks in crop pixels, or None to skip the term.
            valid_mask: (B, 1, S, S) 1 where pixels may be compared (e.g. not occluded, inside the photo).
            landmark_visibility: (B, 68) multiplies the landmark weights.
            pseudo_labelled: (B,) bool, faces whose landmarks come from a detector (× ``pseudo_landmark_factor``).
            identity_warp: (B, 2, 3) crop → identity-network warp (see :class:`IdentityLoss`).
        """
        cfg = self.config
        if target.ndim != 4 or target.shape[1] != 3 or target.shape[2] != target.shape[3]:
            raise ValueError(f"target must be square crops (B, 3, S, S), got {tuple(target.shape)}")
        size = int(target.shape[-1])
        r = render_face(self.model, params, size, self.renderer(size))
        mask = r.skin
        if valid_mask is not None:
            mask = mask * valid_mask.to(mask)
        terms: dict[str, Tensor] = {"photo": photometric_loss(r.srgb, target.to(r.srgb), mask)}
        if landmarks is not None:
            w = landmark_weights(cfg.landmark_weights, cfg.landmark_emphasis, r.landmarks.dtype, r.landmarks.device)
            if landmark_visibility is not None:
                w = w * landmark_visibility.to(w)
            sample = None
            if pseudo_labelled is not None:
                sample = torch.where(pseudo_labelled.to(torch.bool), cfg.pseudo_landmark_factor, 1.0).to(w)
            scale = ALIGNED_SIZE / size  # Deng's weight is for pixels of a 224² crop
            terms["landmark"] = landmark_loss(r.landmarks * scale, landmarks.to(r.landmarks) * scale, w, sample)
        if self.identity is not None and cfg.w_identity > 0:
            pasted = r.srgb * r.mask + target.to(r.srgb) * (1.0 - r.mask)
            terms["identity"] = self.identity(target.to(r.srgb), pasted, identity_warp)
        terms["reg"] = coefficient_regularization(params, self.model, cfg.w_reg_id, cfg.w_reg_exp, cfg.w_reg_tex)
        terms["lighting"] = lighting_regularization(params.sh)
        terms["reflectance"] = reflectance_loss(r.albedo, self.model.skin_mask)
        weights = {"photo": cfg.w_photo, "landmark": cfg.w_landmark, "identity": cfg.w_identity, "reg": cfg.w_reg,
                   "lighting": cfg.w_lighting, "reflectance": cfg.w_reflectance}
        total = sum(weights[k] * v for k, v in terms.items())
        return LossTerms(total=total, terms=terms)
