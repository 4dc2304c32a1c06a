"""Noise-level grids."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError


def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM noise levels (Karras et al. 2022, eq. 5), high -> low: float64 [n], first sigma_max, last sigma_min.

    The sampling grid that ends at 0 is `append_zero(edm_sigmas(n))`.
    """
    if n < 1:
        raise DenoiserLabError(f"the number of noise levels must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise DenoiserLabError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho


def append_zero(sigmas: Tensor) -> Tensor:
    """[n] -> [n + 1] with a final 0, the end of a sampling grid."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])
