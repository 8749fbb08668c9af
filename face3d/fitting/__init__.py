"""Fitting a 3DMM to 2D evidence: batched Levenberg–Marquardt landmark fitting (eq. 2 of
the 3DMM-conditioned GAN paper), its closed-form pose start and silhouette-following
jaw correspondences."""
from face3d.fitting.contour import jaw_sides, silhouette_weights
from face3d.fitting.lm import LandmarkFitter, LMFitConfig, LMFitResult, check_landmarks, fit_landmarks
from face3d.fitting.pose_init import affine_pose

__all__ = ["LMFitConfig", "LMFitResult", "LandmarkFitter", "fit_landmarks", "check_landmarks",
           "affine_pose", "jaw_sides", "silhouette_weights"]
