"""In-distribution inputs for the analyses: noisy training images z = y + sigma * eps, drawn reproducibly."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images, sigma_per_sample

Denoiser = Callable[[Tensor, "float | Tensor"], Tensor]


def check_positive_int(value: int, name: str) -> int:
    """Check that `value` is an int >= 1; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DenoiserLabError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_sigma(sigma: float | Tensor) -> float:
    """Check that sigma is one finite number > 0 (the analyses work at one noise level at a time)."""
    if isinstance(sigma, Tensor):
        if sigma.numel() != 1:
            raise DenoiserLabError(f"sigma must be a single number, got a tensor of shape {tuple(sigma.shape)}")
        sigma = sigma.item()
    return float(sigma_per_sample(sigma, 1).item())


def noisy_batches(images: Tensor, sigma: float, n_samples: int, batch_size: int,
                  seed: int | torch.Generator) -> Iterator[Tensor]:
    """Yield batches z = y + sigma * eps, y drawn uniformly with replacement from `images`, until n_samples are out.

    images: float [N, C, H, W]; yields [<= batch_size, C, H, W] in images' dtype and device. The draw depends on
    (seed, n_samples, batch_size) only.
    """
    check_images(images, "images")
    check_positive_int(n_samples, "n_samples")
    check_positive_int(batch_size, "batch_size")
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    indices = torch.randint(images.shape[0], (n_samples,), generator=generator)  # with replacement
    for start in range(0, n_samples, batch_size):
        chosen = indices[start : start + batch_size].to(images.device)
        eps = torch.randn((chosen.shape[0], *images.shape[1:]), generator=generator)
        yield images[chosen] + sigma * eps.to(images.device, images.dtype)


@torch.no_grad()
def denoise_in_batches(den: Denoiser, x: Tensor, sigma: float, batch_size: int) -> Tensor:
    """den(x, sigma) evaluated on slices of at most batch_size images, concatenated: [B, C, H, W]."""
    check_positive_int(batch_size, "batch_size")
    return torch.cat([checked_call(den, x[start : start + batch_size], sigma)
                      for start in range(0, x.shape[0], batch_size)])


def checked_call(den: Denoiser, x: Tensor, sigma: float) -> Tensor:
    """den(x, sigma), checked to return a tensor of x's shape (the denoiser protocol)."""
    out = den(x, sigma)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        seen = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise DenoiserLabError(f"the denoiser must return a tensor of the input's shape {tuple(x.shape)}, got {seen}")
    return out
