"""Comparing linear denoisers' weights (Li et al. 2024, sec. 3.2, fig. 4): weight NMSE, singular-vector
alignment, and the Gaussian denoiser's own affine map to compare distilled weights with."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.analysis.noisy_inputs import check_positive_int, check_sigma
from denoiserlab.denoisers.gaussian import GaussianDenoiser
from denoiserlab.errors import DenoiserLabError


def weight_nmse(weight: Tensor, reference: Tensor) -> float:
    """|weight - reference|_F^2 / |reference|_F^2 in float64; both [D, D] (the reference is the second)."""
    check_square_pair(weight, reference)
    weight, reference = weight.double(), reference.double().to(weight.device)
    return ((weight - reference).pow(2).sum() / reference.pow(2).sum()).item()


def singular_vector_alignment(weight: Tensor, reference: Tensor, k: int) -> Tensor:
    """|cos| between the i-th left singular vectors of weight and reference, i < k: float64 [k].

    Singular vectors are ordered by decreasing singular value and have arbitrary sign (hence |cos|); they are only
    determined up to rotation within a repeated singular value, where the alignment is not meaningful.
    """
    check_square_pair(weight, reference)
    if check_positive_int(k, "k") > weight.shape[0]:
        raise DenoiserLabError(f"k must be at most D = {weight.shape[0]}, got {k}")
    left, _, _ = torch.linalg.svd(weight.double())
    left_reference, _, _ = torch.linalg.svd(reference.double().to(weight.device))
    return (left[:, :k] * left_reference[:, :k]).sum(0).abs()


def gaussian_linear_map(den: GaussianDenoiser, sigma: float) -> tuple[Tensor, Tensor]:
    """The Gaussian denoiser as W x + b (Li et al. eq. 6): W = U diag(S / (S + sigma^2)) U^T, b = mu - W mu.

    Returns float64 W [D, D], b [D] (CPU).
    """
    sigma = check_sigma(sigma)
    gains = den.eigvals_ / (den.eigvals_ + sigma**2)  # [r]
    weight = (den.eigvecs_ * gains) @ den.eigvecs_.T
    return weight, den.mean_ - weight @ den.mean_


def check_square_pair(weight: Tensor, reference: Tensor) -> None:
    """Check that both are [D, D] matrices of the same D."""
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or weight.shape != reference.shape:
        raise DenoiserLabError(f"expected two [D, D] matrices of the same D, got {tuple(weight.shape)} and"
                               f" {tuple(reference.shape)}")
