"""Fréchet distance between Gaussians fitted to two feature sets (the FID formula of Heusel et al. 2017, eq. 6,
on any encoder's features)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from denoiserlab.analysis.feature_model import image_features
from denoiserlab.errors import DenoiserLabError


def check_feature_sets(features_a: Tensor, features_b: Tensor) -> None:
    """Both [N, F] with N >= 2, the same F and only finite values; else DenoiserLabError."""
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        if features.dim() != 2 or features.shape[0] < 2 or features.shape[1] < 1:
            raise DenoiserLabError(f"frechet_distance needs {name} [N, F] with N >= 2 samples, "
                                   f"got shape {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise DenoiserLabError(f"frechet_distance: {name} holds NaN or infinite values")
    if features_a.shape[1] != features_b.shape[1]:
        raise DenoiserLabError(f"frechet_distance needs the same feature size, got {features_a.shape[1]} "
                               f"and {features_b.shape[1]}")


def mean_and_covariance(features: Tensor) -> tuple[Tensor, Tensor]:
    """float64 mean [F] and unbiased covariance [F, F] of features [N, F]."""
    features = features.double()
    mean = features.mean(0)
    centred = features - mean
    return mean, centred.T @ centred / (len(features) - 1)


def psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix [F, F] (negative rounding-error
    eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def trace_sqrt_product(covariance_a: Tensor, covariance_b: Tensor) -> float:
    """tr((C_a C_b)^(1/2)) as tr((C_a^(1/2) C_b C_a^(1/2))^(1/2)): same eigenvalues, but a symmetric PSD matrix,
    so eigh gives them stably."""
    root_a = psd_sqrt(covariance_a)
    product = root_a @ covariance_b @ root_a  # [F, F], symmetric PSD
    eigenvalues = torch.linalg.eigvalsh((product + product.T) / 2)
    return float(eigenvalues.clamp(min=0).sqrt().sum())


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Squared Fréchet distance of N(mu_a, C_a) and N(mu_b, C_b) fitted to features [N_a, F] and [N_b, F]:
    |mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2)), in float64 (the quantity FID reports)."""
    check_feature_sets(features_a, features_b)
    mean_a, covariance_a = mean_and_covariance(features_a)
    mean_b, covariance_b = mean_and_covariance(features_b)
    distance = (float((mean_a - mean_b).pow(2).sum()) + float(covariance_a.trace()) + float(covariance_b.trace())
                - 2 * trace_sqrt_product(covariance_a, covariance_b))
    return max(distance, 0.0)  # >= 0 exactly; rounding can dip below for identical sets


def feature_frechet_distance(model: Callable[[Tensor], Tensor], images_a: Tensor, images_b: Tensor,
                             batch_size: int = 256) -> float:
    """frechet_distance of model's features of two image sets [N_a, C, H, W] and [N_b, C, H, W] in [-1, 1]."""
    return frechet_distance(image_features(model, images_a, batch_size), image_features(model, images_b, batch_size))
