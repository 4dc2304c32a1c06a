"""EDM training loss (Karras et al. 2022, eq. 2 with the sigma distribution and weighting of Table 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.networks.precond import SIGMA_DATA

P_MEAN = -1.2  # mean of ln(sigma) during training
P_STD = 1.2  # standard deviation of ln(sigma) during training


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, which makes the F-space loss unit-weighted."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_training_sigmas(batch: int, generator: torch.Generator, p_mean: float = P_MEAN,
                           p_std: float = P_STD) -> Tensor:
    """Log-normal noise levels ln(sigma) ~ N(p_mean, p_std^2): float32 [batch] on the CPU."""
    return (torch.randn(batch, generator=generator) * p_std + p_mean).exp()


def edm_loss(denoiser, x0: Tensor, generator: torch.Generator, p_mean: float = P_MEAN, p_std: float = P_STD,
             sigma_data: float = SIGMA_DATA) -> Tensor:
    """Per-sample EDM loss lambda(sigma) * mean_pixels (D(x0 + sigma eps, sigma) - x0)^2. x0: [B, C, H, W] -> [B].

    sigma and eps come from the CPU `generator`, so a run is reproducible on any device.
    """
    sigma = sample_training_sigmas(x0.shape[0], generator, p_mean, p_std).to(x0.device)  # [B]
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    denoised = denoiser(x0 + sigma.view(-1, 1, 1, 1) * eps, sigma)
    squared_error = (denoised.float() - x0).square().flatten(1).mean(dim=1)  # [B]
    return edm_loss_weight(sigma, sigma_data) * squared_error
