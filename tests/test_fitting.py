"""Levenberg–Marquardt landmark fitting (face3d.fitting): recovery of known faces, real
photos with ground-truth landmarks, masks, weights, batching and bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from face3d.camera import Intrinsics, euler_to_matrix
from face3d.fitting import LandmarkFitter, LMFitConfig, check_landmarks, fit_landmarks
from face3d.morphable_model import MorphableModel, load_model_arrays, save_model_arrays

W = H = 512


# -- fixtures / helpers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(toy_model) -> MorphableModel:
    return MorphableModel(toy_model)


@pytest.fixture(scope="session")
def ict_model(shared_data, request) -> MorphableModel:
    """The ICT-FaceKit model, converted once and cached in pytest's cache folder."""
    src = shared_data / "models" / "ict-facekit.tar.xz"
    if not src.is_file():
        pytest.skip(f"ICT-FaceKit archive not found at {src}")
    try:
        from face3d.converters.ict import convert_ict
    except ImportError as e:  # converter not there yet
        pytest.skip(f"face3d.converters.ict unavailable: {e}")
    cache = Path(request.config.cache.mkdir("face3d_fitting")) / f"ict_{src.stat().st_size}_{int(src.stat().st_mtime)}.npz"
    if not cache.is_file():
        save_model_arrays(convert_ict(src), cache)
    return MorphableModel(load_model_arrays(cache))


def synthetic_faces(model: MorphableModel, fitter: LandmarkFitter, batch: int, seed: int,
                    noise_px: float = 1.0, n_id: int = 80):
    """Random faces from the prior, yaw in [-80°, 80°], pitch/roll in [-15°, 15°], 1.5 m away.

    ``noise_px`` is the RMS length of the 2-D noise added to each landmark (σ = noise/√2
    per coordinate). Returns (alpha, beta, R, t, K, clean landmarks, noisy landmarks).
    """
    g = torch.Generator().manual_seed(seed)
    alpha, beta, _ = model.sample_coefficients(batch, generator=g)
    alpha[:, n_id:] = 0.0
    if model.meta.get("expression_kind") == "blendshapes":
        beta = beta.clamp(0.0, 1.0)
    yaw = torch.rand(batch, generator=g) * 160 - 80
    pitch, roll = (torch.rand(batch, generator=g) * 30 - 15 for _ in range(2))
    R = euler_to_matrix(yaw, pitch, roll)
    t = torch.stack([torch.randn(batch, generator=g) * 20, torch.randn(batch, generator=g) * 20,
                     torch.full((batch,), 1500.0)], -1)
    K = Intrinsics.default(W, H, batch=batch)
    clean, _ = fitter.project(alpha, beta, R, t, K)
    noisy = clean + torch.randn(clean.shape, generator=g) * (noise_px / math.sqrt(2.0))
    return alpha, beta, R, t, K, clean, noisy


def similarity_aligned_error(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Mean vertex distance (B,) after the best similarity transform of src onto dst (Umeyama)."""
    src, dst = src.double(), dst.double()
    ms, md = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    a, b = src - ms, dst - md
    cov = b.transpose(1, 2) @ a / src.shape[1]
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(U @ Vh))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    Rm = U @ D @ Vh
    scale = (S * D.diagonal(dim1=1, dim2=2)).sum(-1) / (a * a).sum((1, 2)) * src.shape[1]
    aligned = scale[:, None, None] * a @ Rm.transpose(1, 2) + md
    return (aligned - dst).norm(dim=-1).mean(1)


# -- synthetic recovery --------------------------------------------------------------------------
def test_recovers_synthetic_faces_toy(toy):
    cfg = LMFitConfig(rho_id=1e-5, rho_exp=1e-5, dtype=torch.float64, max_iter=50)
    fitter = LandmarkFitter(toy, cfg)
    alpha, beta, R, t, K, clean, noisy = synthetic_faces(toy, fitter, 48, seed=1)
    res = fitter.fit(noisy, K)
    assert bool(res.converged.all())
    err_clean = (res.landmarks_2d - clean).norm(dim=-1).mean()
    # 1 px RMS noise, 36 unknowns per face against 136 coordinates: the fit lands within
    # half a pixel of the noise-free landmarks (measured 0.40 px)
    assert err_clean < 0.5, float(err_clean)
    # and it does not over-fit: residuals to the noisy input stay near the noise level
    assert 0.6 < float(res.residuals.mean()) < 1.0
    yaw_true = torch.atan2((R[:, 0, 2]), -R[:, 2, 2]) * 180 / math.pi
    yaw_fit, _, _ = res.yaw_pitch_roll()
    assert float((yaw_fit - yaw_true).abs().max()) < 3.0
    # recovered mesh vs true mesh, after similarity alignment: at least 2× closer than the mean face
    true = toy.shape(alpha.double(), beta.double())
    err_fit = similarity_aligned_error(toy.shape(res.alpha, res.beta).double(), true)
    err_mean = similarity_aligned_error(toy.shape(torch.zeros_like(alpha)).double().expand_as(true), true)
    assert float(err_fit.mean()) < 0.5 * float(err_mean.mean()), (float(err_fit.mean()), float(err_mean.mean()))


def test_recovers_synthetic_faces_ict(ict_model):
    # ρ = σ²/s² is the MAP prior weight for this noise: σ² = 0.5 px² per coordinate on a
    # face box of s ≈ 240 px gives 8.7e-6 (a sweep over 5e-6…8e-5 on 96 faces measured the
    # smallest error to the noise-free landmarks, 0.669 px, at 1e-5)
    cfg = LMFitConfig(rho_id=1e-5, rho_exp=1e-5, max_iter=60)
    fitter = LandmarkFitter(ict_model, cfg)
    alpha, beta, R, t, K, clean, noisy = synthetic_faces(ict_model, fitter, 24, seed=2)
    res = fitter.fit(noisy, K)
    assert torch.isfinite(res.landmarks_2d).all()
    assert bool(res.converged.all()), res.iterations
    # 133 shape unknowns (80 id + 53 blendshapes in [0, 1]) + pose against 136 coordinates:
    # even the Bayes-optimal (Wiener) estimate keeps most of the noise. With the model's
    # landmark spectrum (prior std-dev per landmark-space direction: 63 above 1 px, 92
    # above 0.3 px) its expected error to the noise-free landmarks is ≈ 0.67 px mean for
    # 1 px RMS noise, so < 0.5 px is out of reach for any estimator here; the fit sits at
    # that bound (measured 0.675 px on these faces, 0.669 px on 96)
    err_clean = float((res.landmarks_2d - clean).norm(dim=-1).mean())
    assert err_clean < 0.72, err_clean
    # ...without over-fitting the noise (mean distance of the noise itself: 0.886 px)
    assert 0.5 < float(res.residuals.mean()) < 0.8
    true = ict_model.shape(alpha, beta)
    err_fit = similarity_aligned_error(ict_model.shape(res.alpha, res.beta), true)
    err_mean = similarity_aligned_error(ict_model.mean_shape.expand_as(true), true)
    # the recovered mesh is ≥ 3× closer to the truth than the mean face (measured 4.0×:
    # 2.1 mm against 8.5 mm mean vertex distance after similarity alignment)
    assert float(err_fit.mean()) < float(err_mean.mean()) / 3.0, (float(err_fit.mean()), float(err_mean.mean()))
    # β stays in its box
    assert float(res.beta.min()) >= 0.0 and float(res.beta.max()) <= 1.0


# -- real photos -------------------------------------------------------------------------------------
def _ground_truth_faces(faces: Path) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    from PIL import Image

    from face3d.landmarks.file_backend import annotated_faces

    return [(f.name, f.landmarks, Image.open(f.image).size) for f in annotated_faces(faces)]


@pytest.mark.slow
def test_fits_real_photo_landmarks_ict(ict_model, shared_data):
    faces = _ground_truth_faces(shared_data / "faces")
    assert len(faces) >= 40
    fitter = LandmarkFitter(ict_model)
    errs = []
    for name, pts, (w, h) in faces:
        res = fitter.fit(torch.tensor(pts, dtype=torch.float32)[None], Intrinsics.default(w, h))
        assert torch.isfinite(res.landmarks_2d).all(), name
        box = np.sqrt(np.prod(pts.max(0) - pts.min(0)))
        errs.append(float(res.residuals.mean()) / box)
    # Normalised by the landmark box sqrt(w·h): 68-point annotations themselves scatter by
    # ≈ 1–2 % of that size (300-W inter-annotator studies) and dlib's predictions more; a
    # fit with a plausible (regularised) face should sit inside that band. Measured with
    # the defaults: mean 1.7 %, worst 2.8 %.
    assert np.mean(errs) < 0.025, np.mean(errs)
    assert np.max(errs) < 0.04, np.max(errs)


# -- masks, weights, batching, robustness ---------------------------------------------------------
@pytest.fixture(scope="module")
def toy_case(toy):
    fitter = LandmarkFitter(toy, LMFitConfig(dtype=torch.float64, rho_id=1e-4, rho_exp=1e-4))
    return (fitter, *synthetic_faces(toy, fitter, 4, seed=3))


def test_masked_point_does_not_affect_fit(toy_case):
    fitter, *_, K, clean, noisy = toy_case
    mask = torch.ones(4, 68, dtype=torch.bool)
    mask[:, 30] = False
    ref = fitter.fit(noisy, K, mask=mask)
    bad = noisy.clone()
    bad[:, 30] = torch.tensor([1e4, -3e3], dtype=bad.dtype)
    out = fitter.fit(bad, K, mask=mask)
    torch.testing.assert_close(out.landmarks_2d, ref.landmarks_2d)
    torch.testing.assert_close(out.alpha, ref.alpha)
    bad[:, 30] = float("nan")  # missing points may be NaN when masked
    out = fitter.fit(bad, K, mask=mask)
    torch.testing.assert_close(out.alpha, ref.alpha)
    assert torch.isfinite(out.residuals).all() and float(out.residuals[:, 30].abs().max()) == 0.0


def test_weights(toy_case):
    fitter, *_, K, clean, noisy = toy_case
    w = torch.ones(4, 68, dtype=noisy.dtype)
    base = fitter.fit(noisy, K, weights=w)
    w[:, 48] = 50.0  # mouth corner trusted 50×: it is fitted closer
    heavy = fitter.fit(noisy, K, weights=w)
    assert float(heavy.residuals[:, 48].mean()) < 0.5 * float(base.residuals[:, 48].mean())
    w0 = torch.ones(4, 68, dtype=noisy.dtype)
    w0[:, 30] = 0.0  # zero weight = masked
    m = torch.ones(4, 68, dtype=torch.bool)
    m[:, 30] = False
    torch.testing.assert_close(fitter.fit(noisy, K, weights=w0).alpha, fitter.fit(noisy, K, mask=m).alpha)


def test_batch_equals_single_fits(toy_case):
    fitter, *_, K, clean, noisy = toy_case
    batch = fitter.fit(noisy, K)
    for i in range(noisy.shape[0]):
        one = fitter.fit(noisy[i:i + 1], Intrinsics(K.focal[i:i + 1], K.principal[i:i + 1]))
        torch.testing.assert_close(one.landmarks_2d[0], batch.landmarks_2d[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(one.alpha[0], batch.alpha[i], atol=1e-6, rtol=0)
        assert int(one.iterations[0]) == int(batch.iterations[i])


def test_result_fields(toy, toy_case):
    fitter, alpha, beta, R, t, K, clean, noisy = toy_case
    res = fitter.fit(noisy, K)
    B = noisy.shape[0]
    assert res.alpha.shape == (B, toy.n_id) and res.beta.shape == (B, toy.n_exp)
    assert res.R.shape == (B, 3, 3) and res.t.shape == (B, 3)
    assert res.landmarks_2d.shape == (B, 68, 2) and res.residuals.shape == (B, 68)
    assert res.landmark_ids.shape == (B, 68) and res.iterations.shape == (B,) and res.cost.shape == (B,)
    torch.testing.assert_close(res.R @ res.R.transpose(1, 2), torch.eye(3, dtype=res.R.dtype).expand(B, 3, 3))
    # landmark ids: the 51 inner ones are the model's, the jaw ones come from the contour lines
    assert torch.equal(res.landmark_ids[:, 17:], toy.landmark_ids[17:].expand(B, -1))
    for j in range(17):
        row = toy.contour_lines[j]
        assert all(int(v) in row.tolist() for v in res.landmark_ids[:, j])


def test_turned_face_jaw_follows_silhouette(toy):
    """On the toy surface, at 30° yaw the far-side jaw landmarks have moved onto the
    silhouette, further back than the front vertices. With the contour search the fit
    reproduces them; with fixed front vertices it cannot."""
    cfg = LMFitConfig(dtype=torch.float64, rho_id=1e-5, rho_exp=1e-5)
    fitter = LandmarkFitter(toy, cfg)
    R = euler_to_matrix(torch.tensor([30.0]), torch.tensor([5.0]), torch.tensor([0.0])).double()
    t = torch.tensor([[0.0, 0.0, 1500.0]], dtype=torch.float64)
    K = Intrinsics.default(W, H, dtype=torch.float64)
    U, ids = fitter.project(torch.zeros(1, toy.n_id, dtype=torch.float64),
                            torch.zeros(1, toy.n_exp, dtype=torch.float64), R, t, K)
    assert not torch.equal(ids[0, 13:17], toy.landmark_ids[13:17])  # far side marched
    assert torch.equal(ids[0, :8], toy.landmark_ids[:8])            # near side kept
    good = fitter.fit(U, K)
    fixed = LandmarkFitter(toy, LMFitConfig(dtype=torch.float64, rho_id=1e-5, rho_exp=1e-5, contour=False)).fit(U, K)
    assert float(good.residuals.mean()) < 0.1
    assert float(fixed.residuals[:, 13:17].mean()) > 5 * float(good.residuals[:, 13:17].mean()) + 0.5


def test_weak_perspective_option(toy):
    # without prior and noise the weak-perspective data are reproduced exactly
    fitter = LandmarkFitter(toy, LMFitConfig(projection="weak", dtype=torch.float64, rho_id=0.0, rho_exp=0.0,
                                             ftol=1e-9, max_iter=100))
    *_, K, clean, noisy = synthetic_faces(toy, fitter, 8, seed=5, noise_px=0.0)
    res = fitter.fit(clean, K)
    per_face = res.residuals.mean(1)
    # 7 of 8 faces exactly; the toy face at 7° yaw lands in a nearby minimum (≈ 0.8 px):
    # on the toy surface the front jaw vertex is far from the silhouette, so the jaw
    # blend zone (0–15° yaw) makes the near-frontal cost non-convex. Known limitation.
    assert int((per_face < 0.01).sum()) >= 7, per_face
    assert float(per_face.max()) < 1.0


@pytest.mark.parametrize("kind", ["nan", "equal", "collinear", "few", "shape"])
def test_degenerate_input_is_an_error(toy, kind):
    U = torch.rand(2, 68, 2) * 200 + 100
    mask = None
    if kind == "nan":
        U[1, 5, 0] = float("nan")
    elif kind == "equal":
        U[0] = torch.tensor([250.0, 250.0])
    elif kind == "collinear":
        s = torch.linspace(0, 1, 68)[:, None]
        U[1] = torch.tensor([100.0, 120.0]) + s * torch.tensor([200.0, 50.0])
    elif kind == "few":
        mask = torch.zeros(2, 68, dtype=torch.bool)
        mask[:, :5] = True
    else:
        U = U[:, :60]
    with pytest.raises(ValueError):
        fit_landmarks(toy, U, image_size=(W, H), mask=mask)


def test_never_nan_on_odd_input(toy):
    """Odd but valid input (a tiny face, a huge face, a face of random points, heavy
    weights on a few points) gives finite results."""
    g = torch.Generator().manual_seed(0)
    U = torch.rand(4, 68, 2, generator=g) * 400 + 50
    U[1] = U[1] * 0.01 + 250  # 4 px face
    U[2] = (U[2] - 250) * 40 + 250  # far larger than the image
    w = torch.ones(4, 68)
    w[3, :3] = 1e6
    res = fit_landmarks(toy, U, image_size=(W, H), weights=w)
    for v in (res.alpha, res.beta, res.R, res.t, res.landmarks_2d, res.residuals, res.cost):
        assert torch.isfinite(v).all()


def test_check_landmarks_returns_clean_arrays():
    U = torch.rand(1, 68, 2) * 100
    U[0, 3] = float("nan")
    m = torch.ones(1, 68, dtype=torch.bool)
    m[0, 3] = False
    U2, w, valid = check_landmarks(U, mask=m)
    assert torch.isfinite(U2).all() and float(w[0, 3]) == 0.0 and not bool(valid[0, 3])


def test_box_qp_matches_scipy_bounded_least_squares():
    """The bounded step solver (block principal pivoting on the Schur complement) against
    scipy's bounded least squares on the same problem, min ‖Lᵀ(y − y0)‖² with the last E
    entries boxed."""
    from scipy.optimize import lsq_linear

    from face3d.fitting.lm import _box_qp

    g = torch.Generator().manual_seed(0)
    b, P, E = 6, 20, 8
    X = torch.randn(b, P + 5, P, generator=g, dtype=torch.float64)
    A = X.mT @ X + 0.1 * torch.eye(P, dtype=torch.float64)
    L = torch.linalg.cholesky(A)
    y0 = torch.randn(b, P, generator=g, dtype=torch.float64) * 2
    lo = -torch.rand(b, E, generator=g, dtype=torch.float64)
    hi = torch.rand(b, E, generator=g, dtype=torch.float64)
    y, _, done = _box_qp(L, y0, lo, hi, iters=20)
    assert bool(done.all())
    for i in range(b):
        lb = np.r_[np.full(P - E, -np.inf), lo[i].numpy()]
        ub = np.r_[np.full(P - E, np.inf), hi[i].numpy()]
        Lt = L[i].T.numpy()
        ref = lsq_linear(Lt, Lt @ y0[i].numpy(), bounds=(lb, ub), tol=1e-12, method="bvls").x
        np.testing.assert_allclose(y[i].numpy(), ref, atol=1e-8)


def test_chunks_and_threads_do_not_change_results(toy, toy_case):
    fitter, *_, K, clean, noisy = toy_case
    ref = fitter.fit(noisy, K)
    cfg = LMFitConfig(dtype=torch.float64, rho_id=1e-4, rho_exp=1e-4, chunk=1, num_threads=2)
    split = LandmarkFitter(toy, cfg).fit(noisy, K)
    torch.testing.assert_close(split.landmarks_2d, ref.landmarks_2d, atol=1e-6, rtol=0)
    assert torch.equal(split.iterations, ref.iterations)
