"""Probability-flow ODE samplers (Karras et al. 2022, Algorithm 1 for Heun) for any denoiser den(x, sigma)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.diffusion.sigmas import append_zero, edm_sigmas
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images

Denoiser = Callable[[Tensor, "float | Tensor"], Tensor]


@dataclass(frozen=True)
class SamplerResult:
    """Final images and, on request, the trajectory."""

    images: Tensor  # [B, C, H, W], the sample at sigma = 0
    sigmas: Tensor  # [S + 1] float64, the grid high -> low ending in 0
    x_t: Tensor | None = None  # [S + 1, B, C, H, W]: x at every grid point (x_t[-1] = images)
    denoised: Tensor | None = None  # [S, B, C, H, W]: den(x_t[i], sigmas[i]) at the first evaluation of step i


def to_slope(x: Tensor, denoised: Tensor, sigma: float) -> Tensor:
    """PF-ODE slope dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def euler_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of the PF-ODE from sigma to sigma_next; to sigma_next = 0 it returns `denoised`."""
    if sigma_next == 0:
        return denoised
    return x + (sigma_next - sigma) * to_slope(x, denoised, sigma)


def sample_euler(den: Denoiser, noise: Tensor, sigmas: Tensor | int = 18, return_trajectory: bool = False,
                 progress: bool = False) -> SamplerResult:
    """Euler PF-ODE sampling from x = noise * sigmas[0]. noise: [B, C, H, W] unit-variance; sigmas: grid or step count."""
    return _sample(den, noise, sigmas, heun=False, return_trajectory=return_trajectory, progress=progress)


def sample_heun(den: Denoiser, noise: Tensor, sigmas: Tensor | int = 18, return_trajectory: bool = False,
                progress: bool = False) -> SamplerResult:
    """Heun PF-ODE sampling (2nd order; no correction on the last step to 0). Same arguments as sample_euler."""
    return _sample(den, noise, sigmas, heun=True, return_trajectory=return_trajectory, progress=progress)


def sampling_grid(sigmas: Tensor | int) -> Tensor:
    """A sampling grid high -> low ending in 0: an int n gives append_zero(edm_sigmas(n)); a tensor gets a 0 appended if missing."""
    grid = edm_sigmas(sigmas) if isinstance(sigmas, int) else torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if len(grid) == 0 or (grid[:-1] <= 0).any() or (grid[:-1] < grid[1:]).any():
        raise DenoiserLabError(f"sigmas must be positive and decreasing (a final 0 allowed), got {grid.tolist()}")
    return grid if grid[-1] == 0 else append_zero(grid)


def _sample(den: Denoiser, noise: Tensor, sigmas: Tensor | int, heun: bool, return_trajectory: bool,
            progress: bool) -> SamplerResult:
    check_images(noise, "noise")
    grid = sampling_grid(sigmas)
    x = noise * float(grid[0])
    xs, denoised_list = [x], []
    steps = range(len(grid) - 1)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        sigma, sigma_next = float(grid[i]), float(grid[i + 1])
        denoised = den(x, sigma)
        x_next = euler_step(x, denoised, sigma, sigma_next)
        if heun and sigma_next > 0:  # Heun correction, skipped on the last step to 0
            slope = to_slope(x, denoised, sigma)
            slope_next = to_slope(x_next, den(x_next, sigma_next), sigma_next)
            x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        if return_trajectory:
            denoised_list.append(denoised)
            xs.append(x_next)
        x = x_next
    if not return_trajectory:
        return SamplerResult(images=x, sigmas=grid)
    return SamplerResult(images=x, sigmas=grid, x_t=torch.stack(xs), denoised=torch.stack(denoised_list))
