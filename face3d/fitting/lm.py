"""Batched Levenberg–Marquardt fitting of a 3DMM to 68 2D landmarks.

Solves, for every face of a batch independently (Yuan & Park, "Face de-occlusion using
3D morphable model and generative adversarial network", ICCV 2019, §3.2 eq. 2)::

    argmin_{R, t, α, β}  Σ_i w_i ‖Π(R·V_i(α, β) + t) − U_i‖²  +  s² (ρ1 ‖α/ξ_id‖² + ρ2 ‖β/ξ_exp‖²)

with V_i the landmark vertices of the model (jaw landmarks 0–16 re-assigned to the
silhouette every iteration, see :mod:`face3d.fitting.contour`), Π the perspective camera
of :mod:`face3d.camera` (or weak perspective), w_i per-landmark weights (0 where masked)
and s = sqrt(w·h) of the landmarks' bounding box in pixels, which makes ρ1, ρ2
independent of image resolution: ρ is the squared landmark noise as a fraction of the
face size (the MAP reading of eq. 2 with Gaussian landmark noise). Blendshape
expression models (``meta["expression_kind"] == "blendshapes"``) keep β in [0, 1].

Implementation notes
--------------------
* Analytic Jacobian. Only the landmark (and jaw-candidate) rows of the bases enter,
  precomputed once per model by :class:`LandmarkFitter`. Rotation is updated
  multiplicatively, ``R ← exp([ω]×)·R`` (ω in the camera frame), so there is no gimbal
  lock at profile poses.
* Marquardt damping on the Jacobi-scaled normal equations
  ``(D^-½ H D^-½ + λ I) y = −D^-½ g``, one batched Cholesky per iteration; λ adapts per
  face (Nielsen's rule). The first step from the mean face at the closed-form pose is
  the linear least-squares shape solve (the landmarks are linear in α, β for a fixed
  pose), taken jointly with a pose correction.
* Bounds on β: every step solves its damped quadratic model *exactly* under the box
  constraints. The expression block is ordered last, so the trailing block of the
  Cholesky factor is the factor of the Schur complement S of the expression variables;
  the box-constrained problem ``min ½ (z − z₀)ᵀ S (z − z₀)`` (E ≤ 53 variables) is solved
  by block principal pivoting (Júdice & Pires 1994: flip every infeasible variable
  between free and bound, re-solve; Murty's single-flip rule if that stops reducing the
  infeasibilities) and the other variables are recovered by one triangular solve. The
  active set is therefore found within each step instead of being discovered by
  rejected steps, which is what made the earlier projected-step variant crawl.
* Work is split into chunks of ``LMFitConfig.chunk`` faces: temporaries stay small
  (a (1024, 136, 139) Jacobian alone is 77 MB, and large fresh allocations page-fault on
  every iteration), and chunks run concurrently on ``num_threads`` worker threads, each
  running its tensor ops on one intra-op thread (the matrices are far too small for
  intra-op parallelism to pay: multi-threaded potrf on 139² is many times slower on a
  busy 2-core machine than on one thread).
* Faces that have converged leave their chunk, so a chunk costs what its slowest faces
  need. No NaN can come out: failed factorisations and non-finite trial costs are
  rejected steps.

Global state: while :meth:`LandmarkFitter.fit` runs, ``torch.set_num_threads(1)`` is in
effect for the process (restored on exit, also on error); other threads of the caller
that run torch ops concurrently see one intra-op thread for that time.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

import torch
from torch import Tensor

from face3d.camera import Intrinsics, axis_angle_to_matrix, matrix_to_euler
from face3d.fitting.contour import jaw_sides, silhouette_weights
from face3d.fitting.pose_init import affine_pose
from face3d.morphable_model import MorphableModel

N_LANDMARKS = 68
N_JAW = 17


@dataclass
class LMFitConfig:
    """Settings of :func:`fit_landmarks` / :class:`LandmarkFitter`.

    Attributes:
        n_id: identity modes fitted (the first ``n_id``); ``None`` = min(80, K_id), the
            80 identity modes of eq. 2. Higher modes are returned as zeros.
        n_exp: expression modes fitted; ``None`` = all.
        rho_id, rho_exp: ρ1, ρ2 of eq. 2, relative to the face size s (see module doc).
            The paper gives no values. ρ = σ² with σ the landmark noise as a fraction of
            s: 0.015² ≈ 2.3e-4 matches the spread of manual 68-point annotations and
            detector errors on in-the-wild photos (≈ 1.5 % of the face box), and keeps
            real-photo fits plausible (tests/test_fitting.py). Lower it for clean,
            synthetic landmarks: 1 px of noise on a face box of s px is ρ ≈ (0.7 / s)².
        max_iter: LM iterations (accepted or rejected steps) per face.
        lambda_init: initial damping λ of the scaled system.
        lambda_max: a face whose λ exceeds this cannot decrease its cost any further and
            stops (reported converged: it sits at a minimum to working precision).
        ftol: stop when an accepted step lowers the cost by less than ``ftol`` relative
            (costs are scored with the jaw re-assigned, so this includes the contour).
            1e-3 of a cost of ≈ 70 px² (68 landmarks at ≈ 0.7 px) moves the landmarks by
            ≈ 0.02 px; it saves about one iteration per face against 1e-4.
        gtol: stop when the scaled (projected) gradient's largest entry is below
            ``gtol`` × cost.
        contour: re-assign jaw landmarks 0–16 to the silhouette every iteration.
        contour_softness: soft-arg-max temperature of the silhouette search, as a
            fraction of the face size s (0.003 ≈ 0.6 px on a 200 px face).
        contour_full_deg: yaw toward a side from which that side's jaw landmarks are
            pure silhouette points (blended with the front vertex below it).
        projection: ``"perspective"`` (default) or ``"weak"`` (scaled orthographic
            about the depth of the model origin).
        clamp_blendshapes: for models with ``meta["expression_kind"] == "blendshapes"``,
            keep β in [0, 1] (each step solves its box-constrained model exactly).
        qp_iter: block-principal-pivoting passes allowed per step for those bounds.
        min_points: fewest usable landmarks accepted per face.
        chunk: faces per unit of work (see module doc); results do not depend on it.
        num_threads: worker threads for batches of several chunks; ``None`` = the
            current ``torch.get_num_threads()``.
        dtype: working precision; float32 is ample (Jacobi-scaled system) and fastest.
    """

    n_id: Optional[int] = None
    n_exp: Optional[int] = None
    rho_id: float = 2.3e-4
    rho_exp: float = 2.3e-4
    max_iter: int = 30
    lambda_init: float = 1e-3
    lambda_max: float = 1e7
    ftol: float = 1e-3
    gtol: float = 1e-7
    contour: bool = True
    contour_softness: float = 0.003
    contour_full_deg: float = 15.0
    projection: Literal["perspective", "weak"] = "perspective"
    clamp_blendshapes: bool = True
    qp_iter: int = 10
    min_points: int = 6
    chunk: int = 64
    num_threads: Optional[int] = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.rho_id < 0 or self.rho_exp < 0:
            raise ValueError("rho_id and rho_exp must be non-negative")
        if self.max_iter < 1:
            raise ValueError("max_iter must be at least 1")
        if self.projection not in ("perspective", "weak"):
            raise ValueError(f"projection must be 'perspective' or 'weak', got {self.projection!r}")
        if self.chunk < 1 or self.qp_iter < 1:
            raise ValueError("chunk and qp_iter must be at least 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be at least 1")


@dataclass
class LMFitResult:
    """Output of :func:`fit_landmarks`; every tensor is batched over B faces.

    Attributes:
        alpha: (B, K_id) identity coefficients (zero beyond the fitted ``n_id``).
        beta: (B, K_exp) expression coefficients.
        R: (B, 3, 3) model→camera rotation; t: (B, 3) translation, mm.
        landmarks_2d: (B, 68, 2) fitted landmark projections, pixels.
        residuals: (B, 68) distance fitted↔given landmark, pixels (0 where the given
            point was missing, i.e. non-finite and masked).
        landmark_ids: (B, 68) model vertex ids used, after jaw-contour re-assignment.
        iterations: (B,) LM iterations run; converged: (B,) bool.
        cost: (B,) final value of the objective (px²).
        intrinsics: the camera used; projection: "perspective" or "weak".
    """

    alpha: Tensor
    beta: Tensor
    R: Tensor
    t: Tensor
    landmarks_2d: Tensor
    residuals: Tensor
    landmark_ids: Tensor
    iterations: Tensor
    converged: Tensor
    cost: Tensor
    intrinsics: Intrinsics
    projection: str = "perspective"
    mask: Optional[Tensor] = field(default=None, repr=False)

    def yaw_pitch_roll(self, degrees: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(yaw, pitch, roll), each (B,), conventions of :mod:`face3d.camera`."""
        return matrix_to_euler(self.R, degrees=degrees)

    def vertices(self, model: MorphableModel) -> Tensor:
        """The fitted shape (B, N, 3), model frame, mm."""
        return model.shape(self.alpha.to(model.dtype), self.beta.to(model.dtype))

    def mean_error(self) -> Tensor:
        """(B,) mean landmark distance in pixels over the landmarks that were used."""
        m = self.mask.to(self.residuals.dtype) if self.mask is not None else torch.ones_like(self.residuals)
        return (self.residuals * m).sum(1) / m.sum(1).clamp_min(1)


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(1)``; the previous count is restored."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def _skew_neg(q: Tensor) -> Tensor:
    """−[q]× for q (..., 3): the derivative of exp([ω]×)·q w.r.t. ω at 0."""
    x, y, z = q.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, z, -y, -z, o, x, y, -x, o], -1).view(*q.shape, 3)


def _box_qp(L: Tensor, y0: Tensor, lo: Tensor, hi: Tensor, iters: int,
            guess: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise ½ (y − y0)ᵀ A (y − y0) with lo ≤ y[:, -E:] ≤ hi, where A = L Lᵀ (b, P, P).

    ``guess`` (b, E) is a starting partition (−1 at lower bound, +1 at upper, 0 free),
    usually the previous step's; variables it leaves free start bound where z0 violates
    their box. Returns (y (b, P), final partition (b, E), converged (b,) bool). The trailing E×E block of L factors the
    Schur complement S of the bounded block, so the bounded block alone is the box QP
    ``min ½ (z − z0)ᵀ S (z − z0)``, solved by block principal pivoting; the free block
    follows as ``y_o = y0_o − L_ooᵀ⁻¹ L_eoᵀ (z − z0)``. Tolerances are relative to the
    box widths and to S's diagonal (float32 working precision).
    """
    b, P = y0.shape
    E = lo.shape[1]
    n = P - E
    Le = L[:, n:, n:]
    S = Le @ Le.mT
    z0 = y0[:, n:]
    width = (hi - lo).clamp_min(1e-30)
    xtol = 1e-5 * width
    gtol = 1e-5 * width * S.diagonal(dim1=1, dim2=2)
    viol = torch.where(z0 < lo, -1.0, torch.where(z0 > hi, 1.0, torch.zeros_like(z0)))
    # a feasible unconstrained minimum is the answer (convex problem); otherwise start
    # from the guessed partition, completed by the violated bounds
    feasible = (viol == 0).all(1, keepdim=True)
    state = viol if guess is None else torch.where(guess != 0, guess, viol)
    state = torch.where(feasible, torch.zeros_like(state), state)
    z = torch.where(feasible, z0, z0.clamp(lo, hi))
    done = feasible[:, 0].clone()
    final = state.clone()
    # passes run on the faces still pivoting only (sub-batch ``i``)
    i = (~done).nonzero().squeeze(1)
    Si, z0i, loi, hii, sti, xt, gt = S[i], z0[i], lo[i], hi[i], state[i], xtol[i], gtol[i]
    best = torch.full((i.numel(),), E + 1, dtype=torch.long, device=y0.device)
    stall = torch.zeros_like(best)
    ar = torch.arange(E, device=y0.device)
    eyeE = torch.eye(E, dtype=S.dtype, device=S.device)
    for _ in range(iters):
        if i.numel() == 0:
            break
        act = sti != 0
        ff = (~act).to(S.dtype)
        dA = torch.where(sti < 0, loi, torch.where(sti > 0, hii, z0i)) - z0i
        rhs = -(Si @ dA[..., None]).squeeze(-1) * ff
        M = Si * ff[:, :, None] * ff[:, None, :]
        M.diagonal(dim1=1, dim2=2).add_(1.0 - ff)
        Lm, info = torch.linalg.cholesky_ex(M)
        okf = info == 0
        if not bool(okf.all()):  # numerically singular subproblem: leave those faces clamped
            Lm = torch.where(okf[:, None, None], Lm, eyeE)
        dz = dA + torch.cholesky_solve(rhs[..., None], Lm).squeeze(-1) * ff
        zt = z0i + dz
        grad = (Si @ dz[..., None]).squeeze(-1)
        bad_free = ~act & ((zt < loi - xt) | (zt > hii + xt))
        bad_act = ((sti < 0) & (grad < -gt)) | ((sti > 0) & (grad > gt))
        bad = (bad_free | bad_act) & okf[:, None]
        nbad = bad.sum(1)
        z[i] = zt
        final[i] = sti
        fin = nbad == 0
        done[i] = fin
        # Júdice–Pires safeguard: when a full exchange does not reduce the number of
        # infeasibilities for 3 passes, flip only the last infeasible variable (Murty)
        better = nbad < best
        best = torch.where(better, nbad, best)
        stall = torch.where(better, torch.zeros_like(stall), stall + 1)
        last = torch.where(bad, ar, -1).amax(1, keepdim=True)
        flip = torch.where((stall >= 3)[:, None], bad & (ar == last), bad)
        sti = torch.where(flip, torch.where(act, torch.zeros_like(sti), torch.where(zt < loi, -1.0, 1.0)), sti)
        if bool(fin.any()):
            k = ~fin
            i, Si, z0i, loi, hii, sti, xt, gt, best, stall = (
                v[k] for v in (i, Si, z0i, loi, hii, sti, xt, gt, best, stall))
    state = final
    z = z.clamp(lo, hi)
    yo = y0[:, :n] - torch.linalg.solve_triangular(
        L[:, :n, :n].mT, L[:, n:, :n].mT @ (z - z0)[..., None], upper=True).squeeze(-1)
    return torch.cat([yo, z], 1), state, done


class LandmarkFitter:
    """Reusable batched LM landmark fitter for one model (precomputes landmark bases).

    Example::

        fitter = LandmarkFitter(model)                 # once per model
        res = fitter.fit(landmarks, Intrinsics.default(W, H, batch=B))
    """

    def __init__(self, model: MorphableModel, config: Optional[LMFitConfig] = None,
                 device: torch.device | str | None = None) -> None:
        self.config = cfg = config or LMFitConfig()
        self.device = torch.device(device) if device is not None else model.device
        dt = cfg.dtype
        self.n_id_full, self.n_exp_full = model.n_id, model.n_exp
        self.K = min(cfg.n_id if cfg.n_id is not None else 80, model.n_id)
        self.E = model.n_exp if cfg.n_exp is None else min(cfg.n_exp, model.n_exp)
        if self.K < 0 or self.E < 0:
            raise ValueError("n_id and n_exp must be non-negative")
        self.M = self.K + self.E
        self.blendshapes = (cfg.clamp_blendshapes and self.E > 0
                            and model.meta.get("expression_kind") == "blendshapes")

        def rows(ids: Tensor) -> tuple[Tensor, Tensor]:
            mean = model.mean_shape[ids].to(self.device, dt)                      # (..., 3)
            b = torch.cat([model.id_basis[: self.K, ids], model.exp_basis[: self.E, ids]], 0)
            return mean, b.movedim(0, -1).to(self.device, dt).contiguous()      # (..., 3, M)

        lm = model.landmark_ids.to(self.device)
        self.fixed_ids = lm[N_JAW:]
        self.fixed_mean, self.fixed_basis = rows(model.landmark_ids[N_JAW:])
        # (M, 51·3): the inner landmarks of a batch of shapes are one GEMM
        self._fixed_basis_t = self.fixed_basis.reshape(-1, self.M).T.contiguous()
        cand = model.contour_lines.to(self.device) if cfg.contour else lm[:N_JAW, None]
        valid = cand >= 0
        cand = torch.where(valid, cand, cand[:, :1])  # padding → front vertex, masked below
        self.cand_ids, self.cand_valid = cand, valid
        self.cand_mean, self.cand_basis = rows(cand.to(model.landmark_ids.device))
        L = cand.shape[1]
        self._cand_basis_t = self.cand_basis.reshape(-1, self.M).T.contiguous()        # (M, 17·L·3)
        self._cand_basis_j = self.cand_basis.reshape(N_JAW, L, 3 * self.M)             # (17, L, 3M)
        midline = float(model.mean_shape[model.landmark_ids[27:31], 0].mean())  # nose bridge
        self.side = jaw_sides(self.cand_mean, midline)
        xi = torch.cat([model.id_std[: self.K], model.exp_std[: self.E]]).to(self.device, dt)
        rho = torch.cat([torch.full((self.K,), cfg.rho_id), torch.full((self.E,), cfg.rho_exp)]).to(self.device, dt)
        self.prior = rho / xi ** 2  # (M,), multiplied by s² per face

    # -- model evaluation ------------------------------------------------------------------
    def _project(self, X: Tensor, fx: Tensor, c: Tensor, tz: Tensor) -> Tensor:
        """Camera-frame points (B, n, 3) → pixels (B, n, 2) with the configured camera."""
        if self.config.projection == "weak":
            z = tz[:, None, None]
        else:
            z = X[..., 2:3].clamp_min(1e-3)
        return X[..., :2] / z * fx[:, None] + c[:, None]

    def _contour(self, R: Tensor, t: Tensor, coef: Tensor, fx: Tensor, c: Tensor, s2: Tensor) -> Tensor:
        """Jaw correspondence weights (B, 17, L) under the given pose and shape."""
        B, L = R.shape[0], self.cand_ids.shape[1]
        if L == 1:
            return torch.ones(B, N_JAW, 1, dtype=R.dtype, device=R.device)
        V = (coef @ self._cand_basis_t).view(B, -1, 3) + self.cand_mean.view(1, -1, 3)    # (B,17·L,3)
        X = V @ R.transpose(1, 2) + t[:, None]
        uv = self._project(X, fx, c, t[:, 2]).view(B, N_JAW, L, 2)
        temp = self.config.contour_softness * s2[:, 0].sqrt()
        return silhouette_weights(uv, self.cand_valid, self.side, R, temp, self.config.contour_full_deg)

    def _jaw_rows(self, k: Tensor) -> tuple[Tensor, Tensor]:
        """Jaw landmark mean (B, 17, 3) and basis rows (B, 17, 3, M) for jaw weights k."""
        B = k.shape[0]
        if k.shape[-1] == 1:
            return self.cand_mean[:, 0].expand(B, -1, -1), self.cand_basis[:, 0].expand(B, -1, -1, -1)
        kj = k.transpose(0, 1)                                                          # (17, B, L)
        jm = torch.einsum("bjl,jlk->bjk", k, self.cand_mean)
        jb = torch.bmm(kj, self._cand_basis_j).transpose(0, 1).reshape(B, N_JAW, 3, self.M)
        return jm, jb

    def _points(self, R: Tensor, t: Tensor, coef: Tensor, jm: Tensor, jb: Tensor) -> Tensor:
        """The 68 landmark points in the camera frame (B, 68, 3), mm."""
        B = coef.shape[0]
        jaw = jm + (jb.reshape(B, N_JAW * 3, self.M) @ coef[..., None]).view(B, N_JAW, 3)
        rest = (coef @ self._fixed_basis_t).view(B, -1, 3) + self.fixed_mean
        return torch.cat([jaw, rest], 1) @ R.transpose(1, 2) + t[:, None]

    def _residual(self, R, t, coef, jm, jb, U, sw, fx, c, s2):
        """Weighted residuals (B, 68, 2), cost (B,), camera points X (B, 68, 3)."""
        X = self._points(R, t, coef, jm, jb)
        r = (self._project(X, fx, c, t[:, 2]) - U) * sw[..., None]
        cost = (r * r).sum((1, 2)) + (s2 * self.prior * coef * coef).sum(-1)
        return r, cost, X

    def _normal_equations(self, X, r, R, t, coef, jb, sw, fx, s2):
        """Gauss–Newton H = JᵀJ + prior (B, P, P) and gradient g = Jᵀr + prior·c (B, P)."""
        B, n = X.shape[:2]
        f0, f1 = fx[:, 0:1], fx[:, 1:2]
        o = torch.zeros_like(X[..., 0])
        if self.config.projection == "weak":
            iz = (1.0 / t[:, 2:3]).expand(B, n)
            Pw = torch.stack([f0 * iz, o, o, o, f1 * iz, o], -1)
        else:
            iz = 1.0 / X[..., 2].clamp_min(1e-3)
        # d(uv)/dX with the landmark weights; under weak perspective the depth enters only
        # through tz (which scales the face), so rotation and shape see Pw instead
        Pt = torch.stack([f0 * iz, o, -f0 * X[..., 0] * iz * iz, o, f1 * iz, -f1 * X[..., 1] * iz * iz], -1)
        Pt = (Pt * sw[..., None]).view(B, n, 2, 3)
        P = Pt if self.config.projection != "weak" else (Pw * sw[..., None]).view(B, n, 2, 3)
        PR = P @ R[:, None]                                                            # (B,68,2,3)
        J = torch.empty(B, n, 2, 6 + self.M, dtype=X.dtype, device=X.device)
        J[..., :3] = P @ _skew_neg(X - t[:, None])
        J[..., 3:6] = Pt
        J[:, :N_JAW, :, 6:] = PR[:, :N_JAW] @ jb
        J[:, N_JAW:, :, 6:] = torch.einsum("bnij,njm->bnim", PR[:, N_JAW:], self.fixed_basis)
        J = J.view(B, 2 * n, -1)
        Jt = J.transpose(1, 2)
        H = Jt @ J
        g = (Jt @ r.reshape(B, -1, 1)).squeeze(-1)
        pr = s2 * self.prior                                                           # (B,M)
        H[:, 6:, 6:].diagonal(dim1=1, dim2=2).add_(pr)
        g[:, 6:] += pr * coef
        return H, g

    # -- public ------------------------------------------------------------------------------
    def project(self, alpha: Tensor, beta: Tensor, R: Tensor, t: Tensor,
                intrinsics: Intrinsics) -> tuple[Tensor, Tensor]:
        """The 68 landmarks (B, 68, 2) px and vertex ids (B, 68) the fitter's model predicts.

        Jaw landmarks follow the silhouette exactly as during fitting; use this to make
        synthetic landmark sets. ``alpha`` may hold more modes than are fitted: extra
        modes are ignored here (they are not landmark-visible to the fitter either).
        """
        dt = self.config.dtype
        coef = torch.cat([alpha[:, : self.K], beta[:, : self.E]], -1).to(self.device, dt)
        R, t = R.to(self.device, dt), t.to(self.device, dt)
        fx, c = intrinsics.fxy().to(self.device, dt), intrinsics.principal.to(self.device, dt)
        ones = torch.ones(R.shape[0], N_LANDMARKS, dtype=dt, device=self.device)
        # the contour's soft-max temperature scales with the face size: take it from the
        # landmarks with front jaw vertices, then place the jaw on the silhouette
        k0 = self._contour(R, t, coef, fx, c, torch.ones_like(t[:, :1]))
        X0 = self._points(R, t, coef, *self._jaw_rows(k0))
        uv0 = self._project(X0, fx, c, t[:, 2])
        k = self._contour(R, t, coef, fx, c, _box_area(uv0, ones.bool()))
        X = self._points(R, t, coef, *self._jaw_rows(k))
        return self._project(X, fx, c, t[:, 2]), self._ids(k)

    def _ids(self, k: Tensor) -> Tensor:
        """Vertex ids (B, 68); a jaw landmark reports its most-weighted candidate."""
        jaw = self.cand_ids[torch.arange(N_JAW, device=k.device), k.argmax(-1)]
        return torch.cat([jaw, self.fixed_ids.expand(k.shape[0], -1)], 1)

    def fit(self, landmarks: Tensor, intrinsics: Intrinsics, weights: Optional[Tensor] = None,
            mask: Optional[Tensor] = None, init: Optional[tuple[Tensor, Tensor, Tensor, Tensor]] = None
            ) -> LMFitResult:
        """Fit every face of ``landmarks`` (B, 68, 2) px; see :func:`fit_landmarks`.

        ``init``: optional start ``(R (B,3,3), t (B,3) mm, alpha (B,≥0), beta (B,≥0))`` — e.g.
        a learned regressor's estimate — instead of the closed-form pose and the mean face;
        missing modes start at zero, extra ones are ignored.
        """
        cfg, dt, dev = self.config, self.config.dtype, self.device
        U, w, valid = check_landmarks(landmarks, weights, mask, cfg.min_points)
        U, w, valid = U.to(dev, dt), w.to(dev, dt), valid.to(dev)
        B = U.shape[0]
        start = None
        if init is not None:
            R0, t0, a0, b0 = (x.to(dev, dt) for x in init)
            if R0.shape != (B, 3, 3) or t0.shape != (B, 3) or a0.shape[0] != B or b0.shape[0] != B:
                raise ValueError(f"init must be R (B,3,3), t (B,3), alpha (B,K), beta (B,E) for B={B}")
            coef0 = torch.zeros(B, self.M, dtype=dt, device=dev)
            ka, kb = min(self.K, a0.shape[1]), min(self.E, b0.shape[1])
            coef0[:, :ka] = a0[:, :ka]
            coef0[:, self.K:self.K + kb] = b0[:, :kb]
            if self.blendshapes:  # the box-constrained steps need a feasible start
                coef0[:, self.K:] = coef0[:, self.K:].clamp(0.0, 1.0)
            start = (R0, t0, coef0)
        fx = intrinsics.fxy().to(dev, dt)
        c = intrinsics.principal.to(dev, dt)
        if fx.shape[0] == 1 and B > 1:
            fx, c = fx.expand(B, 2), c.expand(B, 2)
        if fx.shape[0] != B:
            raise ValueError(f"intrinsics batch {fx.shape[0]} does not match {B} faces")
        R = torch.empty(B, 3, 3, dtype=dt, device=dev)
        t = torch.empty(B, 3, dtype=dt, device=dev)
        coef = torch.empty(B, self.M, dtype=dt, device=dev)
        k = torch.empty(B, N_JAW, self.cand_ids.shape[1], dtype=dt, device=dev)
        cost = torch.empty(B, dtype=dt, device=dev)
        it = torch.empty(B, dtype=torch.long, device=dev)
        conv = torch.empty(B, dtype=torch.bool, device=dev)

        def run(i: int) -> None:
            j = min(i + cfg.chunk, B)
            out = self._fit_chunk(U[i:j], w[i:j], valid[i:j], fx[i:j], c[i:j],
                                  None if start is None else tuple(x[i:j] for x in start))
            for dst, src in zip((R, t, coef, k, cost, it, conv), out):
                dst[i:j] = src

        starts = list(range(0, B, cfg.chunk))
        workers = min(cfg.num_threads or torch.get_num_threads(), len(starts))
        with _one_intra_op_thread():
            if workers > 1 and dev.type == "cpu":
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(run, starts))  # list() re-raises a worker's exception
            else:
                for i in starts:
                    run(i)
            X = self._points(R, t, coef, *self._jaw_rows(k))
        uv = self._project(X, fx, c, t[:, 2])
        lm = landmarks.to(dev, dt)
        finite = torch.isfinite(lm).all(-1)
        res = torch.where(finite, (uv - torch.nan_to_num(lm)).norm(dim=-1), torch.zeros_like(uv[..., 0]))
        alpha = torch.zeros(B, self.n_id_full, dtype=dt, device=dev)
        alpha[:, : self.K] = coef[:, : self.K]
        beta = torch.zeros(B, self.n_exp_full, dtype=dt, device=dev)
        beta[:, : self.E] = coef[:, self.K:]
        return LMFitResult(alpha=alpha, beta=beta, R=R, t=t, landmarks_2d=uv, residuals=res,
                           landmark_ids=self._ids(k), iterations=it, converged=conv,
                           cost=cost, intrinsics=Intrinsics(fx, c), projection=cfg.projection,
                           mask=valid)

    def _fit_chunk(self, U: Tensor, w: Tensor, valid: Tensor, fx: Tensor, c: Tensor,
                   start: Optional[tuple[Tensor, Tensor, Tensor]] = None):
        """LM on one chunk of faces; returns (R, t, coef, k, cost, iterations, converged)."""
        cfg, dt, dev = self.config, self.config.dtype, self.device
        B, P, E = U.shape[0], 6 + self.M, self.E
        sw = w.sqrt()
        s2 = _box_area(U, valid)  # (B, 1) face-box area = s²

        if start is not None:
            R, t, coef = (x.clone() for x in start)
        else:
            # closed-form pose from the anatomical (non-jaw) landmarks, which do not slide
            pts = torch.cat([self.cand_mean[:, 0], self.fixed_mean], 0)
            inner_ok = (w[:, N_JAW:] > 0).sum(1) >= cfg.min_points
            w_init = torch.cat([torch.where(inner_ok[:, None], torch.zeros_like(w[:, :N_JAW]), w[:, :N_JAW]),
                                w[:, N_JAW:]], 1)
            R, t = affine_pose(pts, U, w_init, Intrinsics(fx, c))
            coef = torch.zeros(B, self.M, dtype=dt, device=dev)
        if cfg.projection == "perspective":
            t[:, 2] = t[:, 2].clamp_min(1.0)  # keep the face in front of the camera
        k = self._contour(R, t, coef, fx, c, s2)
        jm, jb = self._jaw_rows(k)
        r, cost, X = self._residual(R, t, coef, jm, jb, U, sw, fx, c, s2)
        H, g = self._normal_equations(X, r, R, t, coef, jb, sw, fx, s2)

        # working set: faces still iterating; finished ones are written out and dropped
        S = dict(idx=torch.arange(B, device=dev), R=R, t=t, coef=coef, k=k, jm=jm, jb=jb, U=U, sw=sw,
                 fx=fx, c=c, s2=s2, cost=cost, H=H, g=g,
                 lam=torch.full((B,), cfg.lambda_init, dtype=dt, device=dev),
                 nu=torch.full((B,), 2.0, dtype=dt, device=dev),
                 it=torch.zeros(B, dtype=torch.long, device=dev),
                 qs=torch.zeros(B, E, dtype=dt, device=dev))  # box-QP partition of β, warm start
        out = {key: S[key].clone() for key in ("R", "t", "coef", "k", "cost", "it")}
        out_conv = torch.zeros(B, dtype=torch.bool, device=dev)
        eye = torch.eye(P, dtype=dt, device=dev)

        def retire(done: Tensor, conv: Tensor) -> None:
            ids = S["idx"][done]
            for key in out:
                out[key][ids] = S[key][done]
            out_conv[ids] = conv[done]
            keep = ~done
            for key, v in S.items():
                S[key] = v[keep]

        for _ in range(cfg.max_iter):
            if S["idx"].numel() == 0:
                break
            H, g, lam, coef = S["H"], S["g"], S["lam"], S["coef"]
            d = H.diagonal(dim1=1, dim2=2).clamp_min(1e-12)
            isq = d.rsqrt()
            A = H * isq[:, :, None] * isq[:, None, :]
            A.diagonal(dim1=1, dim2=2).add_(lam[:, None])
            L, info = torch.linalg.cholesky_ex(A)
            ok = info == 0
            if not bool(ok.all()):  # treat as a rejected step; factorise something harmless
                L = torch.where(ok[:, None, None], L, eye.expand_as(L))
            y = -torch.cholesky_solve((g * isq)[..., None], L).squeeze(-1)
            if self.blendshapes:
                be, ie = coef[:, self.K:], isq[:, P - E:]
                y, S["qs"], _ = _box_qp(L, y, -be / ie, (1.0 - be) / ie, cfg.qp_iter, S["qs"])
            delta = y * isq
            R_new = axis_angle_to_matrix(delta[:, :3]) @ S["R"]
            t_new = S["t"] + delta[:, 3:6]
            c_new = coef + delta[:, 6:]
            if self.blendshapes:  # rounding only: the step already respects the box
                c_new[:, self.K:] = c_new[:, self.K:].clamp(0.0, 1.0)
            # the trial is scored with the jaw re-assigned to its silhouette, i.e. on the
            # true (continuous) objective: scoring it with the old assignment and
            # re-assigning afterwards can cycle between two assignments near frontal poses
            U_, sw_, fx_, c_, s2_ = S["U"], S["sw"], S["fx"], S["c"], S["s2"]
            k_new = self._contour(R_new, t_new, c_new, fx_, c_, s2_)
            jm_new, jb_new = self._jaw_rows(k_new)
            r_new, cost_new, X_new = self._residual(R_new, t_new, c_new, jm_new, jb_new, U_, sw_, fx_, c_, s2_)
            # gain ratio against the Gauss–Newton model's predicted decrease −2gᵀδ − δᵀHδ
            pred = -(2.0 * (g * delta).sum(-1) + (delta * (H @ delta[..., None]).squeeze(-1)).sum(-1))
            actual = S["cost"] - cost_new
            gain = actual / pred.clamp_min(1e-30)
            accept = ok & torch.isfinite(cost_new) & (actual > 0) & (gain > 1e-4)
            nu = S["nu"]
            S["lam"] = torch.where(accept, lam * torch.clamp(1.0 - (2.0 * gain - 1.0) ** 3, min=1.0 / 3.0), lam * nu)
            S["nu"] = torch.where(accept, torch.full_like(nu, 2.0), nu * 2.0)
            S["it"] = S["it"] + 1
            # nothing can lower the cost any more: λ ran away, or the model predicts less
            # than the tolerance (float32 rounding then decides accept/reject at random)
            done = ~accept & ((S["lam"] > cfg.lambda_max) | (pred <= 0.1 * cfg.ftol * S["cost"]))
            # an accepted step that gained less than ftol ends the fit: no new linearisation
            fin = accept & (actual <= cfg.ftol * S["cost"])
            lin = accept & ~fin
            if bool(accept.any()):
                a = None if bool(accept.all()) else accept.nonzero().squeeze(1)
                for key, val in (("R", R_new), ("t", t_new), ("coef", c_new), ("k", k_new), ("jm", jm_new),
                                 ("jb", jb_new), ("cost", cost_new)):
                    S[key] = val if a is None else torch.where(
                        accept.view(-1, *([1] * (val.ndim - 1))), val, S[key])
            if bool(lin.any()):
                sel = None if bool(lin.all()) else lin.nonzero().squeeze(1)
                pk = (lambda x: x) if sel is None else (lambda x: x[sel])
                ca = pk(c_new)
                H_a, g_a = self._normal_equations(pk(X_new), pk(r_new), pk(R_new), pk(t_new), ca, pk(jb_new),
                                                  pk(sw_), pk(fx_), pk(s2_))
                gp = g_a
                if self.blendshapes:  # projected gradient: bound-held β do not count
                    be, ge = ca[:, self.K:], g_a[:, 6 + self.K:]
                    held = ((be <= 0) & (ge > 0)) | ((be >= 1) & (ge < 0))
                    gp = torch.cat([g_a[:, : 6 + self.K], ge.masked_fill(held, 0.0)], 1)
                gmax = (gp.abs() * H_a.diagonal(dim1=1, dim2=2).clamp_min(1e-12).rsqrt()).amax(-1)
                gconv = gmax <= cfg.gtol * pk(cost_new).clamp_min(1e-12)
                if sel is None:
                    S["H"], S["g"] = H_a, g_a
                    fin = fin | gconv
                else:
                    S["H"][sel] = H_a
                    S["g"][sel] = g_a
                    fin[sel] |= gconv
            done = done | fin
            conv = done
            if bool(done.any()):
                retire(done, conv)
        if S["idx"].numel():
            retire(torch.ones_like(S["idx"], dtype=torch.bool), torch.zeros_like(S["idx"], dtype=torch.bool))
        return out["R"], out["t"], out["coef"], out["k"], out["cost"], out["it"], out_conv


def _box_area(U: Tensor, valid: Tensor) -> Tensor:
    """(B, 1) area of the bounding box of the valid points of U (B, n, 2): s² of the fit."""
    lo = torch.where(valid[..., None], U, torch.full_like(U, float("inf"))).amin(1)
    hi = torch.where(valid[..., None], U, torch.full_like(U, float("-inf"))).amax(1)
    return (hi - lo).prod(-1).clamp_min(1e-12)[:, None]


def check_landmarks(landmarks: Tensor, weights: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                    min_points: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a landmark batch; returns (U with missing points zeroed, weights w, mask).

    ``landmarks`` (B, 68, 2) px; ``weights`` (B, 68) ≥ 0 (default 1); ``mask`` (B, 68)
    bool, False = missing/occluded (default: all used). Raises ``ValueError`` for a
    non-finite *used* point, fewer than ``min_points`` used points, or used points that
    are all equal or collinear (no pose can be recovered from them).
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be (B, 68, 2), got {tuple(landmarks.shape)}")
    B = landmarks.shape[0]
    if B == 0:
        raise ValueError("landmarks batch is empty")
    U = landmarks
    m = torch.ones(B, N_LANDMARKS, dtype=torch.bool, device=U.device) if mask is None else mask.to(U.device).bool()
    if m.shape != (B, N_LANDMARKS):
        raise ValueError(f"mask must be (B, 68) = ({B}, 68), got {tuple(m.shape)}")
    w = torch.ones(B, N_LANDMARKS, dtype=U.dtype, device=U.device) if weights is None else weights.to(U.device, U.dtype)
    if w.shape != (B, N_LANDMARKS):
        raise ValueError(f"weights must be (B, 68) = ({B}, 68), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    bad = m & ~torch.isfinite(U).all(-1)
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"landmark {i} of face {b} is not finite; mask it out (mask=False) if it is missing")
    m = m & (w > 0)
    n = m.sum(1)
    if bool((n < min_points).any()):
        b = int((n < min_points).nonzero()[0])
        raise ValueError(f"face {b} has {int(n[b])} usable landmarks; at least {min_points} are needed")
    U = torch.where(m[..., None], U, torch.zeros_like(U))
    w = w * m
    # spread of the used points: all-equal or collinear sets determine no pose
    mf = m.to(torch.float64)
    Ud = U.to(torch.float64)
    mean = (Ud * mf[..., None]).sum(1) / n[:, None]
    Dc = (Ud - mean[:, None]) * mf[..., None]
    cov = Dc.transpose(1, 2) @ Dc / n[:, None, None]
    ev = torch.linalg.eigvalsh(cov)  # ascending
    scale = mean.abs().amax(-1).clamp_min(1.0)
    if bool((ev[:, 1].sqrt() <= 1e-6 * scale).any()):
        b = int((ev[:, 1].sqrt() <= 1e-6 * scale).nonzero()[0])
        raise ValueError(f"the landmarks of face {b} are all equal")
    ratio = (ev[:, 0].clamp_min(0) / ev[:, 1]).sqrt()
    if bool((ratio < 1e-2).any()):
        b = int((ratio < 1e-2).nonzero()[0])
        raise ValueError(f"the landmarks of face {b} are collinear")
    return U, w, m


def fit_landmarks(model: MorphableModel, landmarks: Tensor, intrinsics: Optional[Intrinsics] = None,
                  image_size: Optional[tuple[int, int]] = None, weights: Optional[Tensor] = None,
                  mask: Optional[Tensor] = None, config: Optional[LMFitConfig] = None) -> LMFitResult:
    """Fit pose, identity and expression of ``model`` to 68 landmarks per face (eq. 2).

    Args:
        model: the 3DMM.
        landmarks: (B, 68, 2) iBUG-68 points, pixels (image convention of face3d.camera).
        intrinsics: camera; default ``Intrinsics.default(W, H)`` from ``image_size``.
        image_size: (W, H), needed when ``intrinsics`` is None.
        weights: (B, 68) non-negative per-landmark weights (default 1).
        mask: (B, 68) bool, False for missing or occluded points (they may be NaN).
        config: :class:`LMFitConfig`.

    For many calls with one model, build a :class:`LandmarkFitter` once instead.
    """
    B = landmarks.shape[0] if landmarks.ndim == 3 else 0
    if intrinsics is None:
        if image_size is None:
            raise ValueError("give intrinsics or image_size=(width, height)")
        intrinsics = Intrinsics.default(int(image_size[0]), int(image_size[1]), batch=max(B, 1))
    return LandmarkFitter(model, config, device=landmarks.device).fit(landmarks, intrinsics, weights, mask)
