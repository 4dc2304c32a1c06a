"""EDM / variance-exploding diffusion: noise grids, forward noising, PF-ODE samplers, closed-form Gaussian ODE."""

from denoiserlab.diffusion.gaussian_trajectory import gaussian_ode_trajectory
from denoiserlab.diffusion.noise import add_noise, sigma_view, standard_noise
from denoiserlab.diffusion.samplers import (
    SamplerResult,
    euler_step,
    sample_euler,
    sample_heun,
    sampling_grid,
    to_slope,
)
from denoiserlab.diffusion.sigmas import append_zero, edm_sigmas

__all__ = [
    "edm_sigmas", "append_zero", "add_noise", "sigma_view", "standard_noise", "SamplerResult", "sample_euler",
    "sample_heun", "sampling_grid", "euler_step", "to_slope", "gaussian_ode_trajectory",
]
