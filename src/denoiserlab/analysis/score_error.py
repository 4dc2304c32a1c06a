"""Score-approximation error between two denoisers (Li et al. 2024, eq. 10): RMSE between their outputs on the
same noisy training images."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.analysis.noisy_inputs import Denoiser, check_sigma, checked_call, noisy_batches


@torch.no_grad()
def score_approximation_error(den_a: Denoiser, den_b: Denoiser, images: Tensor, sigma: float,
                              n_samples: int = 1000, seed: int = 0, batch_size: int = 128) -> float:
    """Mean over noisy images x = y + sigma eps of sqrt(|D_a(x) - D_b(x)|^2 / d), d = C*H*W, in the [-1, 1] scale.

    images: float [N, C, H, W]; n_samples images y drawn (seeded) with replacement. Per-sample RMSE, then the mean
    over samples (eq. 10 takes the expectation of the RMSE).
    """
    sigma = check_sigma(sigma)
    total = 0.0
    for x in noisy_batches(images, sigma, n_samples, batch_size, seed):
        difference = (checked_call(den_a, x, sigma).double() - checked_call(den_b, x, sigma).double())
        total += difference.reshape(x.shape[0], -1).pow(2).mean(1).sqrt().sum().item()
    return total / n_samples
