"""Per-sample similarity metrics between images (estimates vs a reference, e.g. a denoiser vs a network).

Every metric takes two float tensors [B, C, H, W] in the [-1, 1] scale (estimate first, reference second where it
matters) and returns float64 [B], one value per sample; `mean_and_median` summarises them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images

SSIM_K1 = 0.01
SSIM_K2 = 0.03


def per_sample_mse(estimate: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error per element of each sample, [-1, 1] scale: [B]."""
    estimate, reference = flat_pair(estimate, reference)
    return (estimate - reference).pow(2).mean(1)


def r_squared(estimate: Tensor, reference: Tensor) -> Tensor:
    """1 - SSE / sum (reference - mean(reference))^2 per sample, the mean taken over that sample's elements: [B]."""
    estimate, reference = flat_pair(estimate, reference)
    residual = (estimate - reference).pow(2).sum(1)
    spread = (reference - reference.mean(1, keepdim=True)).pow(2).sum(1)
    return 1 - residual / spread


def pearson_r(estimate: Tensor, reference: Tensor) -> Tensor:
    """Pearson correlation over the elements of each sample: [B]."""
    estimate, reference = flat_pair(estimate, reference)
    return rows_cosine(estimate - estimate.mean(1, keepdim=True), reference - reference.mean(1, keepdim=True))


def pixel_cosine(estimate: Tensor, reference: Tensor) -> Tensor:
    """Cosine similarity of the flattened images ([-1, 1] values, not centred): [B]."""
    return rows_cosine(*flat_pair(estimate, reference))


def feature_cosine(estimate: Tensor, reference: Tensor, features: Callable[[Tensor], Tensor]) -> Tensor:
    """Cosine similarity of features(estimate) and features(reference), flattened per sample: [B].

    features: any image encoder taking [B, C, H, W] in [-1, 1] and returning [B, ...] (run without gradients).
    """
    flat_pair(estimate, reference)
    with torch.no_grad():
        feature_a, feature_b = features(estimate), features(reference)
    return rows_cosine(feature_a.reshape(estimate.shape[0], -1).double(),
                       feature_b.reshape(reference.shape[0], -1).double())


def ssim(estimate: Tensor, reference: Tensor, window_size: int = 11, window_sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) per sample: [B], images mapped from [-1, 1] to [0, 1] (L = 1).

    Gaussian window window_size x window_size of std window_sigma, K1 = 0.01, K2 = 0.03, local statistics over
    the 'valid' positions only (no padding), biased local variances; the map is averaged over positions and
    channels. Needs H, W >= window_size.
    """
    estimate, reference = check_pair(estimate, reference)
    if min(estimate.shape[-2:]) < window_size:
        raise DenoiserLabError(f"SSIM needs images of at least {window_size}x{window_size} pixels, got"
                               f" {tuple(estimate.shape[-2:])}")
    a, b = (estimate.double() + 1) / 2, (reference.double() + 1) / 2
    window = gaussian_window(window_size, window_sigma, a.device)
    mean_a, mean_b = local_mean(a, window), local_mean(b, window)
    var_a, var_b = local_mean(a * a, window) - mean_a**2, local_mean(b * b, window) - mean_b**2
    covariance = local_mean(a * b, window) - mean_a * mean_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)
                / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)))
    return ssim_map.reshape(a.shape[0], -1).mean(1)


def local_mean(images: Tensor, window: Tensor) -> Tensor:
    """Window-weighted local means of every channel, valid positions only: [B, C, H, W] -> [B*C, 1, h, w]."""
    return F.conv2d(images.reshape(-1, 1, *images.shape[-2:]), window)


def gaussian_window(size: int, std: float, device: torch.device) -> Tensor:
    """Normalised 2-D Gaussian window as a conv2d weight, float64 [1, 1, size, size]."""
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    profile = torch.exp(-offsets**2 / (2 * std**2))
    window = torch.outer(profile, profile)
    return (window / window.sum()).reshape(1, 1, size, size)


def mean_and_median(values: Tensor) -> dict[str, float]:
    """{"mean": ..., "median": ...} of a [B] tensor of per-sample values (median: the lower middle for even B)."""
    return {"mean": values.double().mean().item(), "median": values.double().median().item()}


def rows_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of [B, D] tensors: [B]."""
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def check_pair(estimate: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Check two image batches [B, C, H, W] of the same shape; returns them."""
    check_images(estimate, "estimate")
    check_images(reference, "reference")
    if estimate.shape != reference.shape:
        raise DenoiserLabError(f"estimate and reference must have the same shape, got {tuple(estimate.shape)} and"
                               f" {tuple(reference.shape)}")
    return estimate, reference.to(estimate.device)


def flat_pair(estimate: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Checked pair flattened to float64 [B, D] each."""
    estimate, reference = check_pair(estimate, reference)
    return estimate.reshape(estimate.shape[0], -1).double(), reference.reshape(reference.shape[0], -1).double()
