"""The Gaussian (Wiener) denoiser of the training set's empirical mean and covariance (Li et al. 2024, eq. 6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from denoiserlab.atomic import atomic_write
from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.training_set import TrainingImages, dataset_fingerprint, training_source
from denoiserlab.errors import DenoiserLabError
from denoiserlab.user_cache import user_cache_dir
from denoiserlab.validation import (
    check_finite_output,
    check_flag,
    check_images,
    check_memory,
    check_optional_count,
    check_same_image_shape,
    sigma_per_sample,
)


@dataclass(frozen=True)
class GaussianConfig:
    rank: int | None = None  # keep the top `rank` principal components (None: all C*H*W)
    xflip: bool = False  # also use the horizontal flip of every training image

    def __post_init__(self):
        check_optional_count(self.rank, "rank")  # the upper bound C*H*W is checked once the data is known
        check_flag(self.xflip, "xflip")


class GaussianDenoiser:
    """D(x, sigma) = mu + U diag(S / (S + sigma^2)) U^T (x - mu), with U, S the eigenvectors and eigenvalues of the
    biased (divide by N) empirical covariance. Computed once in float64 and cached on disk keyed by the data.

    The mean and covariance are accumulated over chunks of the training set read from its storage (an ImageSet's
    uint8, memory-mapped or not, is converted chunk by chunk; see `empirical_mean_covariance`), so no float copy of
    the set is made. Memory: 24 D^2 bytes for the covariance and eigh (D = C*H*W) plus about 24 n D for one chunk
    of n = 4096 images (as float32 and float64, centred), independent of N; the denoiser then holds 8 D (r + 1)
    bytes (r = rank or D).
    """

    config_class = GaussianConfig
    tunable = None  # no option to fit per sigma

    def __init__(self, train: Tensor | ImageSet, rank: int | None = None, xflip: bool = False,
                 cache: bool = True):
        self.config = GaussianConfig(rank=rank, xflip=xflip)
        check_flag(cache, "cache")
        images = training_source(train, xflip)
        self.image_shape_ = images.image_shape
        check_rank(rank, math.prod(self.image_shape_))
        mean, eigvals, eigvecs = _cached_eigendecomposition(images, cache)
        keep = slice(None) if rank is None else slice(0, rank)
        self.mean_ = mean  # [D] float64
        self.eigvals_ = eigvals[keep]  # [r] float64, descending
        self.eigvecs_ = eigvecs[:, keep].contiguous()  # [D, r] float64, orthonormal columns

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns [B, C, H, W] in x's dtype and device."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        mean, eigvals, eigvecs = (t.to(x.device) for t in (self.mean_, self.eigvals_, self.eigvecs_))
        offset = x.reshape(x.shape[0], -1).double() - mean  # [B, D]
        gains = wiener_gains(eigvals, sigma[:, None] ** 2)  # [B, r]
        out = mean + ((offset @ eigvecs) * gains) @ eigvecs.T
        return check_finite_output(out.reshape(x.shape).to(x.dtype), "the Gaussian denoiser", sigma)

    def linear_map(self, sigma: float) -> Tensor:
        """The matrix A of D(x, sigma) = mu + A (x - mu): U diag(S / (S + sigma^2)) U^T, float64 [D, D] on CPU, with
        the gains of the denoiser itself (`wiener_gains`): finite at any sigma > 0, 0 on the null space."""
        (sigma,) = sigma_per_sample(sigma, 1)  # a positive finite number
        gains = wiener_gains(self.eigvals_, sigma**2)  # [r]
        return (self.eigvecs_ * gains) @ self.eigvecs_.T

    def ode_trajectory(self, noise: Tensor, sigmas: Tensor) -> Tensor:
        """Closed-form PF-ODE states at `sigmas` from x = noise * sigmas[0] (see diffusion.gaussian_ode_trajectory)."""
        from denoiserlab.diffusion.gaussian_trajectory import gaussian_ode_trajectory

        check_same_image_shape(noise, self.image_shape_)
        return gaussian_ode_trajectory(self.mean_, self.eigvals_, self.eigvecs_, noise, sigmas)


def check_rank(rank: int | None, dim: int) -> None:
    """A rank must be None or an integer in [1, C*H*W]."""
    if rank is not None and not 1 <= rank <= dim:
        raise DenoiserLabError(f"rank must be between 1 and C*H*W = {dim}, got {rank}")


def wiener_gains(eigvals: Tensor, sigma_squared: Tensor) -> Tensor:
    """S / (S + sigma^2) per eigenvalue S, and exactly 0 where S = 0 for every sigma > 0: that is the limit as
    sigma -> 0 too (the projection onto the span of the data), where S / (S + sigma^2) alone gives 0 / 0 once
    sigma^2 underflows. sigma^2 overflowing to inf gives 0: the training mean, the sigma -> inf limit."""
    return torch.where(eigvals > 0, eigvals / (eigvals + sigma_squared), 0.0)


def empirical_mean_covariance(images: TrainingImages, chunk_images: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean [D] and biased covariance [D, D] (divided by N) of the N images, float64, over chunks of chunk_images.

    Two passes, each accumulating float64 sums chunk by chunk: sum x (the mean mu), then sum (x - mu)(x - mu)^T.
    Centring first keeps the covariance free of the cancellation of sum x x^T / N - mu mu^T (at the same GEMM cost),
    and nothing larger than one chunk of images is ever converted to float.
    """
    dim = math.prod(images.image_shape)
    check_memory(3 * 8 * dim**2, f"the covariance of {list(images.image_shape)} images")
    total = torch.zeros(dim, dtype=torch.float64)
    for chunk in images.chunks(chunk_images):
        total += chunk.reshape(chunk.shape[0], -1).double().sum(0)
    mean = total / len(images)
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for chunk in images.chunks(chunk_images):
        centred = chunk.reshape(chunk.shape[0], -1).double() - mean  # [n, D]
        covariance += centred.T @ centred
    return mean, covariance / len(images)


def eigendecomposition(images: TrainingImages) -> tuple[Tensor, Tensor, Tensor]:
    """(mean [D], eigenvalues [D] descending, eigenvectors [D, D] as columns), float64.

    Eigenvalues below D * eps * the largest (the rounding noise of eigh, as in numpy's matrix_rank) are set to 0:
    they are directions the data does not span, which the sigma -> 0 limit (wiener_gains) must leave out."""
    mean, covariance = empirical_mean_covariance(images)
    eigvals, eigvecs = torch.linalg.eigh(covariance)
    eigvals = eigvals.flip(0)
    tolerance = eigvals.abs().max() * eigvals.numel() * torch.finfo(torch.float64).eps
    return mean, torch.where(eigvals > tolerance, eigvals, 0.0), eigvecs.flip(1).contiguous()


def _cached_eigendecomposition(images: TrainingImages, use_cache: bool) -> tuple[Tensor, Tensor, Tensor]:
    """eigendecomposition(images), read from or written (atomically, as safetensors) to the user cache folder,
    keyed by the data's hash (`dataset_fingerprint`, streamed). The cache is a convenience: an entry that does not
    load as the three float64 tensors of the right shapes is recomputed, and a cache folder that cannot be written
    is skipped."""
    if not use_cache:
        return eigendecomposition(images)
    dim = math.prod(images.image_shape)
    path = user_cache_dir("gaussian") / f"{dataset_fingerprint(images)}.safetensors"
    stored = _read_cached_eigendecomposition(path, dim)
    if stored is not None:
        return stored
    mean, eigvals, eigvecs = eigendecomposition(images)
    try:
        atomic_write(path, lambda temp: save_file({"mean": mean, "eigvals": eigvals, "eigvecs": eigvecs}, str(temp)))
    except OSError:  # read-only or full cache folder: the result is still right, only not kept
        pass
    return mean, eigvals, eigvecs


def _read_cached_eigendecomposition(path: Path, dim: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """(mean [D], eigvals [D], eigvecs [D, D]) from a cache file, or None when it is absent or not exactly that."""
    try:
        stored = load_file(str(path))
    except Exception:  # absent, truncated or not safetensors at all (safetensors raises its own error types)
        return None
    shapes = {"mean": (dim,), "eigvals": (dim,), "eigvecs": (dim, dim)}
    if set(stored) != set(shapes) or any(tuple(stored[name].shape) != shape or stored[name].dtype != torch.float64
                                         for name, shape in shapes.items()):
        return None
    if not all(torch.isfinite(tensor).all() for tensor in stored.values()) or (stored["eigvals"] < 0).any():
        return None
    return stored["mean"], stored["eigvals"], stored["eigvecs"]
