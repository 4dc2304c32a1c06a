"""Conversion of a discrete variance-preserving (DDPM) model to the EDM / variance-exploding convention.

A DDPM model sees z_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps at integer steps t = 0..T-1. Dividing by
sqrt(alpha_bar_t) gives x = x0 + sigma_t eps with sigma_t^2 = (1 - alpha_bar_t) / alpha_bar_t (Karras et al. 2022,
Table 1, "VP"), so an EDM input x at noise level sigma is fed as z = x / sqrt(1 + sigma^2) at the continuous step t
whose sigma_t equals sigma, found by interpolating log sigma_t linearly between integer steps (as k-diffusion does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")  # diffusers' names for what the network predicts


def vp_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..T-1 as float64 [T]; checks it increases strictly."""
    alpha_bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if alpha_bar.ndim != 1 or len(alpha_bar) < 2:
        raise DenoiserLabError(f"alphas_cumprod must be a [T] tensor with T >= 2, got shape {tuple(alpha_bar.shape)}")
    if not ((alpha_bar > 0) & (alpha_bar < 1)).all():
        raise DenoiserLabError("alphas_cumprod must lie in (0, 1) at every step")
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    if not (sigmas[1:] > sigmas[:-1]).all():
        raise DenoiserLabError("the schedule's noise level sigma_t must increase strictly with t")
    return sigmas


def timesteps_from_sigmas(sigma: Tensor, schedule_sigmas: Tensor) -> Tensor:
    """Continuous step t in [0, T-1] for each sigma [B], interpolating log sigma_t between integer steps.

    schedule_sigmas: float64 [T], increasing. A sigma below sigma_0 gets t = 0; one above sigma_{T-1} gets t = T-1
    (callers reject those first). Returns float64 [B].
    """
    log_table = schedule_sigmas.log()
    log_sigma = sigma.to(torch.float64).log()
    upper = torch.searchsorted(log_table, log_sigma).clamp(1, len(log_table) - 1)  # first step with sigma_t >= sigma
    lower = upper - 1
    weight = (log_sigma - log_table[lower]) / (log_table[upper] - log_table[lower])
    return lower + weight.clamp(0, 1)


def vp_input_scale(sigma: Tensor) -> Tensor:
    """sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2): the factor that turns an EDM input x into the DDPM input z."""
    return (1 + sigma**2).rsqrt()


def denoised_from_prediction(x: Tensor, sigma: Tensor, prediction: Tensor, prediction_type: str) -> Tensor:
    """D(x, sigma) from the network's prediction at z = x / sqrt(1 + sigma^2). sigma: [B, 1, 1, 1] like x.

    epsilon: D = x - sigma * eps. sample: D = x0_hat. v_prediction (v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0):
    D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v.
    """
    if prediction_type == "epsilon":
        return x - sigma * prediction
    if prediction_type == "sample":
        return prediction
    if prediction_type == "v_prediction":
        return x / (1 + sigma**2) - sigma * vp_input_scale(sigma) * prediction
    raise DenoiserLabError(f"unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")
