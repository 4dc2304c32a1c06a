"""CFDM: the smoothed closed-form diffusion model (Scarvelis, Sáez de Ocáriz Borde & Solomon, "Closed-Form Diffusion
Models", TMLR 2025).

D(x, sigma) = (1 / K) sum_k D_opt(x + smoothing * eps_k, sigma): the optimal empirical denoiser averaged over K fixed
perturbations of its input, a Monte Carlo estimate of the Gaussian-smoothed closed-form denoiser. The perturbations
eps = standard_noise((K, C, H, W), seed) are drawn once and shared by every sample and call, so D is a deterministic
function of (x, sigma). All B * K perturbed queries go through one streaming pass over the training set
(`optimal.posterior_mean`, float64 distances). smoothing = 0 is the optimal denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.optimal import posterior_mean
from denoiserlab.denoisers.schedules import Tunable, samples_by_value, value_at
from denoiserlab.denoisers.training_set import DeviceCopies, training_images
from denoiserlab.diffusion.noise import standard_noise
from denoiserlab.distances import row_chunks, squared_norms
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_count,
    check_finite_output,
    check_flag,
    check_images,
    check_memory,
    check_optional_count,
    check_same_image_shape,
    check_seed,
    sigma_per_sample,
)


@dataclass(frozen=True)
class CFDMConfig:
    smoothing: float | Callable[[float], float] = 0.1  # std of the input perturbations (units of x), or sigma -> std
    n_noise: int = 10  # K, the number of perturbations averaged
    seed: int = 0  # seed of the perturbations eps = standard_noise((K, C, H, W), seed)
    xflip: bool = False  # also use the horizontal flip of every training image
    chunk_size: int | None = None  # training images per chunk of the streaming pass (None: about 32 MiB)

    def __post_init__(self):
        if not callable(self.smoothing):
            check_smoothing(self.smoothing)
        check_count(self.n_noise, "n_noise")
        check_seed(self.seed)
        check_flag(self.xflip, "xflip")
        check_optional_count(self.chunk_size, "chunk_size")


def check_smoothing(smoothing: object) -> float:
    """A smoothing scale must be a finite number >= 0; returns it as a float."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < math.inf:
        raise DenoiserLabError("smoothing must be a finite number >= 0 or a schedule sigma -> number, "
                               f"got {smoothing!r}")
    return float(smoothing)


class CFDM:
    """Smoothed closed-form denoiser D(x, sigma); sigma may differ per sample (grouped by their smoothing)."""

    config_class = CFDMConfig
    tunable = Tunable("smoothing", "smoothing", (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))

    def __init__(self, train: Tensor | ImageSet, smoothing: float | Callable[[float], float] = 0.1, n_noise: int = 10,
                 seed: int = 0, xflip: bool = False, chunk_size: int | None = None):
        self.config = CFDMConfig(smoothing=smoothing, n_noise=n_noise, seed=seed, xflip=xflip, chunk_size=chunk_size)
        images = training_images(train, xflip)
        self.image_shape_ = tuple(images.shape[1:])  # (C, H, W)
        check_memory(8 * n_noise * images[0].numel(), f"{n_noise} perturbations of {list(self.image_shape_)} images")
        self.train_flat_ = images.reshape(images.shape[0], -1).double()  # [N, D] float64, as OptimalDenoiser
        self.train_norms_ = squared_norms(self.train_flat_)  # [N]
        self.eps_ = standard_noise((n_noise, *self.image_shape_), seed).double().flatten(1)  # [K, D]
        self._device_copies = DeviceCopies(self.train_flat_, self.train_norms_, self.eps_)

    def smoothing_at(self, sigma: float) -> float:
        """The perturbation scale used at noise level sigma."""
        return check_smoothing(value_at(self.config.smoothing, sigma))

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the CFDM estimate of x0, shape/dtype/device of x."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        out = torch.empty_like(x)
        for smoothing, group in samples_by_value([self.smoothing_at(s) for s in sigma.tolist()], x.device):
            out[group] = self.smoothed_mean(x[group], sigma[group], smoothing).to(x.dtype)
        return check_finite_output(out, "CFDM", sigma)

    def smoothed_mean(self, x: Tensor, sigma: Tensor, smoothing: float) -> Tensor:
        """(1/K) sum_k D_opt(x + smoothing eps_k, sigma). x: [B, C, H, W]; sigma: float64 [B]; returns float64."""
        train_flat, train_norms, eps = self._device_copies.on(x.device)
        if smoothing == 0:
            eps = eps[:1] * 0  # every perturbation is zero: one query per sample gives the same average
        queries = x.double().flatten(1)[:, None] + smoothing * eps[None]  # [B, K, D]
        sigmas = sigma.repeat_interleave(eps.shape[0])  # [B * K], sample-major like queries
        train_chunks = row_chunks(train_flat, train_norms, self.config.chunk_size)
        means = posterior_mean(queries.flatten(0, 1), sigmas, train_chunks)
        return means.unflatten(0, queries.shape[:2]).mean(1).reshape(x.shape)  # [B, C, H, W]
