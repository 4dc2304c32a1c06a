"""EDM training loss (Karras et al. 2022, eq. 2 with the sigma distribution and weighting of Table 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.networks.precond import SIGMA_DATA

P_MEAN = -1.2  # mean of ln(sigma) during training
P_STD = 1.2  # standard deviation of ln(sigma) during training


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, which makes the F-space loss unit-weighted."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclass(frozen=True)
class SigmaDistribution:
    """Training noise levels: EDM's log-normal ln(sigma) ~ N(p_mean, p_std^2), of which a share `loguniform_fraction`
    is replaced by log-uniform draws over [sigma_min, sigma_max].

    Why the mixture: the log-normal puts 2.8 % of its mass above sigma = 3 and almost none near sigma = 80
    (4.6 standard deviations out), so at CPU budgets (~1e5 images, 0.1 % of EDM's) the sampling grid's high end is
    barely trained. A log-uniform share gives every octave of the grid the same number of examples.
    """

    p_mean: float = P_MEAN  # mean of ln(sigma) of the log-normal part
    p_std: float = P_STD  # standard deviation of ln(sigma) of the log-normal part
    loguniform_fraction: float = 0.0  # share drawn log-uniform (0: EDM's log-normal only)
    sigma_min: float = 0.002  # log-uniform range, lower end
    sigma_max: float = 80.0  # log-uniform range, upper end

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        """float32 [batch] noise levels on the CPU; with loguniform_fraction = 0 the draws are EDM's exactly."""
        sigma = (torch.randn(batch, generator=generator) * self.p_std + self.p_mean).exp()
        if self.loguniform_fraction == 0:
            return sigma
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        uniform = (torch.rand(batch, generator=generator) * (log_max - log_min) + log_min).exp()
        chosen = torch.rand(batch, generator=generator) < self.loguniform_fraction
        return torch.where(chosen, uniform, sigma)


def sample_training_sigmas(batch: int, generator: torch.Generator, p_mean: float = P_MEAN,
                           p_std: float = P_STD) -> Tensor:
    """Log-normal noise levels ln(sigma) ~ N(p_mean, p_std^2): float32 [batch] on the CPU."""
    return SigmaDistribution(p_mean, p_std).sample(batch, generator)


def training_noise(x0_shape: torch.Size, generator: torch.Generator,
                   sigmas: SigmaDistribution | None = None) -> tuple[Tensor, Tensor]:
    """(sigma float32 [B], eps float32 [B, C, H, W]) on the CPU for a batch of shape x0_shape, drawn from `generator`
    in this order (default sigmas: EDM's log-normal)."""
    distribution = sigmas if sigmas is not None else SigmaDistribution()
    sigma = distribution.sample(x0_shape[0], generator)
    return sigma, torch.randn(x0_shape, generator=generator)


def edm_loss_at(denoiser, x0: Tensor, sigma: Tensor, eps: Tensor, sigma_data: float = SIGMA_DATA,
                posterior_mean: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Per-sample EDM loss [B] of `edm_loss` at given noise levels sigma [B] and noise eps [B, C, H, W] (any device:
    moved to x0's)."""
    sigma, eps = sigma.to(x0.device), eps.to(x0.device)
    x_t = x0 + sigma.view(-1, 1, 1, 1) * eps
    target = x0
    if posterior_mean is not None:
        with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):  # exact float64 target
            target = posterior_mean(x_t, sigma).to(x0.dtype)
    denoised = denoiser(x_t, sigma)
    squared_error = (denoised.float() - target).square().flatten(1).mean(dim=1)  # [B]
    return edm_loss_weight(sigma, sigma_data) * squared_error


def edm_loss(denoiser, x0: Tensor, generator: torch.Generator, p_mean: float = P_MEAN, p_std: float = P_STD,
             sigma_data: float = SIGMA_DATA, sigmas: SigmaDistribution | None = None,
             posterior_mean: Callable[[Tensor, Tensor], Tensor] | None = None, rows: slice = slice(None)) -> Tensor:
    """Per-sample EDM loss lambda(sigma) * mean_pixels (D(x0 + sigma eps, sigma) - target)^2. x0: [B, C, H, W] -> [B],
    or with `rows` only those samples of the batch -> [len(rows)] (one rank's share under DistributedDataParallel:
    sigma and eps are drawn for all B samples first, so the shares of all ranks make up the one-process batch).

    sigma (from `sigmas`, default EDM's log-normal with p_mean, p_std) and eps come from the CPU `generator`, so a
    run is reproducible on any device. The target is x0, or with `posterior_mean` (a denoiser, e.g. the optimal
    denoiser of the training set) E[x0 | x_t]: the same expected loss up to a constant, hence the same minimiser and
    gradient in expectation, without the variance of x0 around its posterior mean (Xu et al. 2023, "stable target
    field", with the whole training set as reference batch).
    """
    sigma, eps = training_noise(x0.shape, generator, sigmas if sigmas is not None else SigmaDistribution(p_mean, p_std))
    return edm_loss_at(denoiser, x0[rows], sigma[rows], eps[rows], sigma_data, posterior_mean)
