"""How much of a distilled weight matrix's distance to a reference is least-squares noise (Li et al. 2024, sec. 3.2).

A least-squares fit W_n on n noisy samples is the denoiser's best affine map W plus estimation noise whose squared
size shrinks like D / n, so NMSE(W_n, R) overstates NMSE(W, R) when n is not much larger than D. Two fits W_a, W_b
on disjoint halves of the draw have independent noise, so <W_a - R, W_b - R> / |R|^2 estimates NMSE(W, R) without
that noise term and without a model of how it decays (split-half, or cross-fit, estimate).
"""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.analysis.distillation import check_least_squares_samples, least_squares_fit
from denoiserlab.analysis.noisy_inputs import Denoiser, check_sigma, checked_call, noisy_batches
from denoiserlab.analysis.weight_comparison import weight_nmse
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images


def weight_nmse_versus_samples(den: Denoiser, images: Tensor, sigma: float, reference: Tensor,
                               sizes: tuple[int, ...] = (2048, 4096, 8192, 16384), seed: int = 0,
                               batch_size: int = 256) -> dict:
    """Least-squares distillations of den on the first n of one noisy draw, for n in sizes, against reference.

    images: float [N, C, H, W] in [-1, 1]; reference: [D, D] (D = C*H*W), e.g. the Gaussian denoiser's W.
    sizes: increasing sample counts, the smallest >= D + 1, the largest >= 2 (D + 1) (for the two halves).
    Memory: max(sizes) * D * 8 bytes of pairs. Returns {"n": sizes, "weight_nmse": [NMSE of each fit vs
    reference], "noise_free_nmse": the split-half estimate over the two halves of all max(sizes) samples}.
    """
    sigma = check_sigma(sigma)
    check_images(images, "images")
    sizes = check_sizes(sizes, images[0].numel())
    inputs, targets = noisy_pairs(den, images, sigma, sizes[-1], seed, batch_size)
    nmse = [weight_nmse(fit_rows(inputs, targets, 0, n, batch_size)[0], reference) for n in sizes]
    first, second = split_half_fits(inputs, targets, batch_size)
    return {"n": sizes, "weight_nmse": nmse, "noise_free_nmse": split_half_nmse(first, second, reference)}


def least_squares_with_halves(den: Denoiser, images: Tensor, sigma: float, n_samples: int, seed: int = 0,
                              batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """distill_linear's least-squares fit (W [D, D], b [D], residual [1]; float64) on the same draw, plus the W of
    the fits on its two halves for split_half_nmse (None when n_samples < 2 (D + 1), too few for two fits).
    Memory: n_samples * D * 8 bytes of pairs, where distill_linear streams them."""
    sigma = check_sigma(sigma)
    check_images(images, "images")
    dim = images[0].numel()
    check_least_squares_samples(n_samples, dim)
    inputs, targets = noisy_pairs(den, images, sigma, n_samples, seed, batch_size)
    halves = split_half_fits(inputs, targets, batch_size) if n_samples >= 2 * (dim + 1) else None
    return *fit_rows(inputs, targets, 0, n_samples, batch_size), halves


@torch.no_grad()
def noisy_pairs(den: Denoiser, images: Tensor, sigma: float, n_samples: int, seed: int,
                batch_size: int) -> tuple[Tensor, Tensor]:
    """Flattened noisy images x [n_samples, D] and den(x) [n_samples, D], drawn as distill_linear draws them."""
    inputs, targets = [], []
    for x in noisy_batches(images, sigma, n_samples, batch_size, seed):
        inputs.append(x.flatten(1))
        targets.append(checked_call(den, x, sigma).flatten(1))
    return torch.cat(inputs), torch.cat(targets)


def split_half_fits(inputs: Tensor, targets: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """W [D, D] (float64) of the least-squares fits on the first and the second half of the rows [n, D]."""
    half = inputs.shape[0] // 2
    return fit_rows(inputs, targets, 0, half, chunk)[0], fit_rows(inputs, targets, half, 2 * half, chunk)[0]


def split_half_nmse(first: Tensor, second: Tensor, reference: Tensor) -> float:
    """<first - reference, second - reference>_F / |reference|_F^2 in float64 (all [D, D])."""
    first, second, reference = first.double(), second.double(), reference.double().to(first.device)
    return ((first - reference) * (second - reference)).sum().item() / reference.pow(2).sum().item()


def fit_rows(inputs: Tensor, targets: Tensor, start: int, stop: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """least_squares_fit (W [D, D], b [D], residual [1]; float64) on rows start:stop of inputs -> targets [n, D]."""
    return least_squares_fit((inputs[row : min(row + chunk, stop)], targets[row : min(row + chunk, stop)])
                             for row in range(start, stop, chunk))


def least_squares_noise(fit_mse: float, n_samples: int, gaussian_spectrum: Tensor, sigma: float) -> tuple[float, float]:
    """What least-squares noise alone adds to a distillation on n_samples noisy training images at sigma, expected
    when the part of the denoiser that no affine map explains acts as white noise of the fit's residual variance:
    (weight NMSE against the Gaussian map R, mean-square output difference per element on fresh noisy images).

    fit_mse: the fit's in-sample residual per element; gaussian_spectrum: float [D], R's singular values
    s_i = lambda_i / (lambda_i + sigma^2) (R = Sigma C^-1, with C = Sigma + sigma^2 I the noisy images' covariance).
    With r^2 = fit_mse n / (n - D - 1), the unbiased residual variance, the fitted W scatters around the best affine
    map by E|dW|_F^2 = D r^2 tr(C^-1) / (n - D - 1), where tr(C^-1) = (D - sum s) / sigma^2, and |R|_F^2 = sum s^2;
    its outputs by E|dW (x - mean)|^2 / D = D r^2 / (n - D - 1) per element. So the noise grows with the residual
    (largest where the denoiser is least linear) and falls like D / n: colour images (D = 3,072) need n >> 3,073.
    """
    spectrum = torch.as_tensor(gaussian_spectrum, dtype=torch.float64)
    dim = spectrum.numel()
    dof = n_samples - dim - 1
    if dof <= 0:
        raise DenoiserLabError(f"least squares needs n_samples > D + 1 = {dim + 1}, got {n_samples}")
    residual = fit_mse * n_samples / dof
    weight_noise = dim * residual * (dim - spectrum.sum().item()) / sigma**2 / dof
    return weight_noise / spectrum.pow(2).sum().item(), dim * residual / dof


def check_sizes(sizes, dim: int) -> list[int]:
    """sizes as a list of increasing ints, the smallest >= D + 1 and the largest >= 2 (D + 1)."""
    sizes = [int(n) for n in sizes]
    if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < dim + 1 or sizes[-1] < 2 * dim + 2:
        raise DenoiserLabError(f"sizes must be increasing sample counts, the smallest >= D + 1 = {dim + 1} and the"
                               f" largest >= 2 (D + 1) = {2 * dim + 2}, got {sizes}")
    return sizes
