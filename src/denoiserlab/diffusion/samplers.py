"""Probability-flow ODE samplers (Karras et al. 2022, Algorithm 1 for Heun) for any denoiser den(x, sigma)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.diffusion.sigmas import append_zero, edm_sigmas
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_finite_output, check_images

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
    if not torch.isfinite(grid).all():
        raise DenoiserLabError(f"sigmas must be finite numbers (no NaN or inf), got {grid.tolist()}")
    if len(grid) == 0 or (grid[:-1] <= 0).any() or (grid[:-1] < grid[1:]).any():
        raise DenoiserLabError(f"sigmas must be positive and decreasing (a final 0 allowed), got {grid.tolist()}")
    return grid if grid[-1] == 0 else append_zero(grid)


def denoiser_name(den: Denoiser) -> str:
    """How errors name a denoiser: its class, or a function's name."""
    if isinstance(den, torch.nn.Module) and isinstance(getattr(den, "net", None), torch.nn.Module):
        return f"network {type(den).__name__}({type(den.net).__name__})"
    return getattr(den, "__name__", None) or type(den).__name__


def checked_call(den: Denoiser, x: Tensor, sigma: float) -> Tensor:
    """den(x, sigma), checked: same shape as x and finite, else an error naming the denoiser (not the next input)."""
    denoised = den(x, sigma)
    if not isinstance(denoised, Tensor) or denoised.shape != x.shape:
        shape = tuple(denoised.shape) if isinstance(denoised, Tensor) else type(denoised).__name__
        raise DenoiserLabError(f"denoiser {denoiser_name(den)} returned {shape} for input of shape {tuple(x.shape)}")
    return check_finite_output(denoised, f"denoiser {denoiser_name(den)}", sigma)


def _sample(den: Denoiser, noise: Tensor, sigmas: Tensor | int, heun: bool, return_trajectory: bool,
            progress: bool) -> SamplerResult:
    check_images(noise, "noise")
    grid = sampling_grid(sigmas)
    x = noise * float(grid[0])
    xs, denoised_list = [x], []
    steps = range(len(grid) - 1)
    sampler = "Heun sampler" if heun else "Euler sampler"
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        sigma, sigma_next = float(grid[i]), float(grid[i + 1])
        denoised = checked_call(den, x, sigma)
        x_next = euler_step(x, denoised, sigma, sigma_next)
        if heun and sigma_next > 0:  # Heun correction, skipped on the last step to 0
            slope = to_slope(x, denoised, sigma)
            slope_next = to_slope(x_next, checked_call(den, x_next, sigma_next), sigma_next)
            x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        check_finite_output(x_next, f"the {sampler} (step {i + 1} of {len(steps)})", sigma_next or sigma)
        if return_trajectory:
            denoised_list.append(denoised)
            xs.append(x_next)
        x = x_next
    if not return_trajectory:
        return SamplerResult(images=x, sigmas=grid)
    return SamplerResult(images=x, sigmas=grid, x_t=torch.stack(xs), denoised=torch.stack(denoised_list))
