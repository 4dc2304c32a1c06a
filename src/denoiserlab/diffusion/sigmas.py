"""Noise-level grids."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError

MAX_LEVELS = 10**6  # more noise levels than any sampler or study uses; larger counts are refused as typos


def check_steps(n: object, name: str = "the number of noise levels") -> int:
    """A number of noise levels must be an integer in [1, MAX_LEVELS] (not a bool); returns it."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_LEVELS:
        raise DenoiserLabError(f"{name} must be an integer in [1, {MAX_LEVELS:,}], got {n!r}")
    return int(n)


def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM noise levels (Karras et al. 2022, eq. 5), high -> low: float64 [n], first sigma_max, last sigma_min.

    The sampling grid that ends at 0 is `append_zero(edm_sigmas(n))`. Needs 1 <= n <= MAX_LEVELS,
    0 < sigma_min <= sigma_max < inf and a finite rho > 0; errors name the argument.
    """
    n = check_steps(n)
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise DenoiserLabError(f"{name} must be a finite number > 0, got {value!r}")
    if not sigma_min <= sigma_max:
        raise DenoiserLabError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho


def append_zero(sigmas: Tensor) -> Tensor:
    """[n] -> [n + 1] with a final 0, the end of a sampling grid."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])
