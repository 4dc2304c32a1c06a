"""Closed-form PF-ODE trajectory of the Gaussian denoiser (Wang & Vastola 2023; Li et al. 2024, eq. 7).

For D(x, sigma) = mu + U diag(s / (s + sigma^2)) U^T (x - mu), the ODE dx/dsigma = (x - D) / sigma decouples
in the eigenbasis: the coefficient c_k = u_k^T (x - mu) obeys dc_k/dsigma = c_k sigma / (s_k + sigma^2), so
c_k(sigma) = c_k(sigma_T) sqrt((s_k + sigma^2) / (s_k + sigma_T^2)). Directions outside span(U) have s = 0 and
scale as sigma / sigma_T.
"""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.validation import check_images


def gaussian_ode_trajectory(mean: Tensor, eigvals: Tensor, eigvecs: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x(sigma) at every sigma of `sigmas` ([S] high -> low, may end in 0) from x(sigmas[0]) = noise * sigmas[0].

    mean: [D]; eigvals: [r] >= 0; eigvecs: [D, r] orthonormal columns; noise: [B, C, H, W] unit variance.
    Returns [S, B, C, H, W] in noise's dtype (computed in float64).
    """
    check_images(noise, "noise")
    shape, dtype = noise.shape, noise.dtype
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=noise.device)
    mean, eigvals, eigvecs = (t.to(noise.device, torch.float64) for t in (mean, eigvals, eigvecs))
    sigma_start = sigmas[0]
    offset = noise.reshape(shape[0], -1).double() * sigma_start - mean  # [B, D]
    coeffs = offset @ eigvecs  # [B, r]
    residual = offset - coeffs @ eigvecs.T  # [B, D], the part outside span(U)
    states = []
    for sigma in sigmas:
        gain = torch.sqrt((eigvals + sigma**2) / (eigvals + sigma_start**2))  # [r]
        x = mean + (coeffs * gain) @ eigvecs.T + residual * (sigma / sigma_start)
        states.append(x.reshape(shape))
    return torch.stack(states).to(dtype)
