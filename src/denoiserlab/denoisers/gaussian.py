"""The Gaussian (Wiener) denoiser of the training set's empirical mean and covariance (Li et al. 2024, eq. 6)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.training_set import dataset_fingerprint, training_images
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample


@dataclass(frozen=True)
class GaussianConfig:
    rank: int | None = None  # keep the top `rank` principal components (None: all C*H*W)
    xflip: bool = False  # also use the horizontal flip of every training image


def cache_dir() -> Path:
    """Where eigendecompositions are cached: $DENOISERLAB_CACHE, else ~/.cache/denoiserlab."""
    return Path(os.environ.get("DENOISERLAB_CACHE", Path.home() / ".cache" / "denoiserlab"))


class GaussianDenoiser:
    """D(x, sigma) = mu + U diag(S / (S + sigma^2)) U^T (x - mu), with U, S the eigenvectors and eigenvalues of the
    biased (divide by N) empirical covariance. Computed once in float64 and cached on disk keyed by the data."""

    config_class = GaussianConfig
    tunable = None  # no option to fit per sigma

    def __init__(self, train: Tensor | ImageSet, rank: int | None = None, xflip: bool = False,
                 cache: bool = True):
        images = training_images(train, xflip)
        dim = images[0].numel()
        if rank is not None and not 1 <= rank <= dim:
            raise DenoiserLabError(f"rank must be between 1 and C*H*W = {dim}, got {rank}")
        self.config = GaussianConfig(rank=rank, xflip=xflip)
        self.image_shape_ = tuple(images.shape[1:])
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
        gains = eigvals / (eigvals + sigma[:, None] ** 2)  # [B, r]
        out = mean + ((offset @ eigvecs) * gains) @ eigvecs.T
        return out.reshape(x.shape).to(x.dtype)

    def linear_map(self, sigma: float) -> Tensor:
        """The matrix A of D(x, sigma) = mu + A (x - mu): U diag(S / (S + sigma^2)) U^T, float64 [D, D] on CPU."""
        gains = self.eigvals_ / (self.eigvals_ + float(sigma) ** 2)  # [r]
        return (self.eigvecs_ * gains) @ self.eigvecs_.T

    def ode_trajectory(self, noise: Tensor, sigmas: Tensor) -> Tensor:
        """Closed-form PF-ODE states at `sigmas` from x = noise * sigmas[0] (see diffusion.gaussian_ode_trajectory)."""
        from denoiserlab.diffusion.gaussian_trajectory import gaussian_ode_trajectory

        check_same_image_shape(noise, self.image_shape_)
        return gaussian_ode_trajectory(self.mean_, self.eigvals_, self.eigvecs_, noise, sigmas)


def empirical_mean_covariance(images: Tensor, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean [D] and biased covariance [D, D] (divided by N) in float64, accumulated over chunks."""
    flat = images.reshape(images.shape[0], -1)
    mean = flat.double().mean(0)
    covariance = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
    for start in range(0, flat.shape[0], chunk_size):
        centred = flat[start : start + chunk_size].double() - mean
        covariance += centred.T @ centred
    return mean, covariance / flat.shape[0]


def eigendecomposition(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean [D], eigenvalues [D] descending and clamped >= 0, eigenvectors [D, D] as columns), float64."""
    mean, covariance = empirical_mean_covariance(images)
    eigvals, eigvecs = torch.linalg.eigh(covariance)
    return mean, eigvals.flip(0).clamp(min=0), eigvecs.flip(1).contiguous()


def _cached_eigendecomposition(images: Tensor, use_cache: bool) -> tuple[Tensor, Tensor, Tensor]:
    """eigendecomposition(images), read from or written (atomically) to the cache keyed by the data's hash."""
    if not use_cache:
        return eigendecomposition(images)
    path = cache_dir() / "gaussian" / f"{dataset_fingerprint(images)}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            return stored["mean"], stored["eigvals"], stored["eigvecs"]
        except Exception:  # a corrupt cache entry is recomputed and overwritten
            pass
    mean, eigvals, eigvecs = eigendecomposition(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"mean": mean, "eigvals": eigvals, "eigvecs": eigvecs}, partial)
    os.replace(partial, path)
    return mean, eigvals, eigvecs
