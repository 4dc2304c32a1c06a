"""The forward (variance-exploding) process x_t = x0 + sigma * eps."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from denoiserlab.validation import check_images, check_memory, check_seed, sigma_per_sample


def sigma_view(sigma: float | Tensor, x: Tensor) -> Tensor:
    """sigma (float or [B]) as a [B, 1, 1, 1] tensor of x's dtype and device, checked > 0."""
    return sigma_per_sample(sigma, x.shape[0], x.device).to(x.dtype).view(-1, 1, 1, 1)


def standard_noise(shape: tuple[int, ...], seed: int | torch.Generator, dtype=torch.float32) -> Tensor:
    """Unit-variance Gaussian noise of `shape` from a seed or a torch.Generator (CPU), reproducible everywhere."""
    check_memory(4 * math.prod(shape), f"noise of shape {list(shape)}")
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(check_seed(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


def add_noise(x0: Tensor, sigma: float | Tensor, seed: int | torch.Generator = 0) -> tuple[Tensor, Tensor]:
    """Forward process: returns (x_t, eps) with x_t = x0 + sigma * eps. x0: [B, C, H, W]; sigma: float or [B]."""
    check_images(x0, "x0")
    eps = standard_noise(tuple(x0.shape), seed, x0.dtype).to(x0.device)
    return x0 + sigma_view(sigma, x0) * eps, eps
