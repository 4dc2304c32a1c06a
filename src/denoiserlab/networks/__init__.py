"""Trained diffusion networks as denoisers den(x, sigma): architectures, EDM preconditioning, checkpoints, training."""

from denoiserlab.networks.build import ARCHITECTURES, build_denoiser, count_parameters, resolve_preset
from denoiserlab.networks.checkpoint import load_checkpoint, save_checkpoint
from denoiserlab.networks.loaders import load
from denoiserlab.networks.precond import SIGMA_DATA, EDMPrecond, edm_coefficients
from denoiserlab.networks.presets import PRESETS

__all__ = [
    "ARCHITECTURES", "PRESETS", "SIGMA_DATA", "EDMPrecond", "edm_coefficients", "build_denoiser",
    "count_parameters", "resolve_preset", "save_checkpoint", "load_checkpoint", "load",
]
