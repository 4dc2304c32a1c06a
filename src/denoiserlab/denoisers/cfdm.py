"""CFDM: the smoothed closed-form diffusion model (Scarvelis, Sáez de Ocáriz Borde & Solomon, "Closed-Form Diffusion
Models", TMLR 2025).

D(x, sigma) = (1 / K) sum_k D_opt(x + smoothing * eps_k, sigma): the optimal empirical denoiser averaged over K fixed
perturbations of its input, a Monte Carlo estimate of the Gaussian-smoothed closed-form denoiser. The perturbations
eps = standard_noise((K, C, H, W), seed) are drawn once and shared by every sample and call, so D is a deterministic
function of (x, sigma). All B * K perturbed queries go through one streaming pass over the training set
(`optimal.posterior_mean`, float64 distances), read as the optimal denoiser reads it: from a float64 copy, or chunk
by chunk from its storage (`storage`, as `OptimalDenoiser`), or over the processes of torch.distributed
(`distributed`, as `OptimalDenoiser`). smoothing = 0 is the optimal denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.distributed import check_same_queries
from denoiserlab.denoisers.optimal import OptimalDenoiser
from denoiserlab.denoisers.schedules import Tunable, estimate_by_group, value_at
from denoiserlab.denoisers.training_set import DeviceCopies, check_storage
from denoiserlab.diffusion.noise import standard_noise
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_count,
    check_finite_output,
    check_flag,
    check_memory,
    check_optional_count,
    check_seed,
)


@dataclass(frozen=True)
class CFDMConfig:
    smoothing: float | Callable[[float], float] = 0.1  # std of the input perturbations (units of x), or sigma -> std
    n_noise: int = 10  # K, the number of perturbations averaged
    seed: int = 0  # seed of the perturbations eps = standard_noise((K, C, H, W), seed)
    xflip: bool = False  # also use the horizontal flip of every training image
    # training images per chunk of the streaming pass (None: about 32 MiB of float64 rows in RAM, 2 MiB streamed)
    chunk_size: int | None = None
    # "ram": a float64 copy of the training set (8 bytes a value), made once; "stream": every call reads the set
    # chunk by chunk from its storage; "auto": as OptimalDenoiser (ram up to training_set.AUTO_RAM_BYTES). Same results.
    storage: str = "auto"
    # shard the training set over the processes of an initialised torch.distributed group, as OptimalDenoiser does
    # (calls are collective: every rank passes the same x and sigma and gets the one-process result)
    distributed: bool = False

    def __post_init__(self):
        if not callable(self.smoothing):
            check_smoothing(self.smoothing)
        check_count(self.n_noise, "n_noise")
        check_seed(self.seed)
        check_flag(self.xflip, "xflip")
        check_optional_count(self.chunk_size, "chunk_size")
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


def check_smoothing(smoothing: object) -> float:
    """A smoothing scale must be a finite number >= 0; returns it as a float."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < math.inf:
        raise DenoiserLabError("smoothing must be a finite number >= 0 or a schedule sigma -> number, "
                               f"got {smoothing!r}")
    return float(smoothing)


class CFDM:
    """Smoothed closed-form denoiser D(x, sigma); sigma may differ per sample (grouped by their smoothing).

    Memory: that of `OptimalDenoiser` with B K queries (N training images of D values, 2N with xflip): storage="ram"
    holds 8 N D + 8 N bytes; storage="stream" holds nothing per image, and a call adds about 20 n D + 24 B K n +
    16 B K D bytes for chunks of n images; either way 8 K D for the perturbations.
    """

    config_class = CFDMConfig
    tunable = Tunable("smoothing", "smoothing", (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))

    def __init__(self, train: Tensor | ImageSet, smoothing: float | Callable[[float], float] = 0.1, n_noise: int = 10,
                 seed: int = 0, xflip: bool = False, chunk_size: int | None = None, storage: str = "auto",
                 distributed: bool = False):
        self.config = CFDMConfig(smoothing=smoothing, n_noise=n_noise, seed=seed, xflip=xflip, chunk_size=chunk_size,
                                 storage=storage, distributed=distributed)
        # reads the set (with distributed=True this rank's shard)
        self.optimal_ = OptimalDenoiser(train, xflip=xflip, chunk_size=chunk_size, storage=storage,
                                        distributed=distributed)
        self.image_shape_ = self.optimal_.image_shape_  # (C, H, W)
        self.storage_ = self.optimal_.storage_  # "ram" or "stream"
        check_memory(8 * n_noise * math.prod(self.image_shape_),
                     f"{n_noise} perturbations of {list(self.image_shape_)} images")
        self.eps_ = standard_noise((n_noise, *self.image_shape_), seed).double().flatten(1)  # [K, D]
        self._device_copies = DeviceCopies(self.eps_)

    def smoothing_at(self, sigma: float) -> float:
        """The perturbation scale used at noise level sigma."""
        return check_smoothing(value_at(self.config.smoothing, sigma))

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the CFDM estimate of x0, shape/dtype/device of x."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)
        out = estimate_by_group(x, [self.smoothing_at(s) for s in sigma.tolist()],
                                lambda smoothing, group: self.smoothed_mean(x[group], sigma[group], smoothing))
        return check_finite_output(out, "CFDM", sigma)

    def smoothed_mean(self, x: Tensor, sigma: Tensor, smoothing: float) -> Tensor:
        """(1/K) sum_k D_opt(x + smoothing eps_k, sigma). x: [B, C, H, W]; sigma: float64 [B]; returns float64."""
        (eps,) = self._device_copies.on(x.device)
        if smoothing == 0:
            eps = eps[:1] * 0  # every perturbation is zero: one query per sample gives the same average
        queries = x.double().flatten(1)[:, None] + smoothing * eps[None]  # [B, K, D]
        sigmas = sigma.repeat_interleave(eps.shape[0])  # [B * K], sample-major like queries
        means = self.optimal_.posterior_mean(queries.flatten(0, 1), sigmas)
        return means.unflatten(0, queries.shape[:2]).mean(1).reshape(x.shape)  # [B, C, H, W]
