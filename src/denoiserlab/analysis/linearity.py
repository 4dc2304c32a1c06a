"""Linearity score of a denoiser (Li et al. 2024, sec. 3.1 and appendix A, eqs. 11-12).

For in-distribution inputs x1 = y1 + sigma eps1, x2 = y2 + sigma eps2 (y1 != y2 two training images) and scalars
alpha, beta, compare D(alpha x1 + beta x2) with alpha D(x1) + beta D(x2). With alpha^2 + beta^2 = 1 (the default,
beta = sqrt(1 - alpha^2)) the mixed input carries noise of level sigma again, so D is queried in distribution.

Two readings, each computed per pair on the flattened images and then averaged over pairs:
- "cosine" (eq. 11): cos(D(a x1 + b x2), a D(x1) + b D(x2)); 1 for a linear map.
- "nmse" (eq. 12): |D(a x1 + b x2) - (a D(x1) + b D(x2))|^2 / |a D(x1) + b D(x2)|^2; 0 for a linear map.

An affine map D(x) = A x + c gives D(a x1 + b x2) - (a D(x1) + b D(x2)) = (1 - a - b) c: it scores exactly
1 / 0 when a + b = 1 and not otherwise. Since a^2 + b^2 = 1 and a + b = 1 only hold together for (1, 0) or
(0, 1), the Gaussian denoiser (affine, c = (I - A) mu) scores slightly off 1 / 0 at every in-distribution
(a, b) pair with both non-zero. The cosine ignores the scale of the mismatch (at large sigma A -> 0, both
sides -> multiples of mu, cosine -> 1) while the NMSE does not (it tends to (1 - a - b)^2 / (a + b)^2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from denoiserlab.analysis.metrics import rows_cosine
from denoiserlab.analysis.noisy_inputs import Denoiser, check_positive_int, check_sigma, denoise_in_batches
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images

METRICS = ("cosine", "nmse")


def linearity_score(den: Denoiser, images: Tensor, sigma: float, n_pairs: int = 100, alpha: float = 2**-0.5,
                    seed: int = 0, metric: str = "cosine", beta: float | None = None,
                    batch_size: int = 64) -> float:
    """Mean over n_pairs pairs of the linearity score (module docstring) of den at noise level sigma.

    images: float [N, C, H, W] in [-1, 1], N >= 2 (the two images of a pair differ); beta defaults to
    sqrt(1 - alpha^2); metric "cosine" or "nmse". Pairs and noise come from `seed`; den is called on at most
    batch_size images at a time.
    """
    alpha, beta = mixing_weights(alpha, beta)
    if metric not in METRICS:
        raise DenoiserLabError(f"metric must be one of {METRICS}, got {metric!r}")
    sigma = check_sigma(sigma)
    x1, x2 = noisy_pairs(images, sigma, check_positive_int(n_pairs, "n_pairs"), seed)
    mixed = alpha * x1 + beta * x2
    outputs = denoise_in_batches(den, torch.cat([x1, x2, mixed]), sigma, batch_size)
    d1, d2, d_mixed = outputs.double().reshape(3, n_pairs, -1)  # each [P, D]
    combined = alpha * d1 + beta * d2
    scores = rows_cosine(d_mixed, combined) if metric == "cosine" else pair_nmse(d_mixed, combined)
    return scores.mean().item()


def mixing_weights(alpha: float, beta: float | None) -> tuple[float, float]:
    """(alpha, beta) with beta = sqrt(1 - alpha^2) when not given; both finite, |alpha| <= 1 in that case."""
    alpha = float(alpha)
    if beta is None:
        if not -1 <= alpha <= 1:
            raise DenoiserLabError(f"alpha must lie in [-1, 1] when beta is derived from it, got {alpha}")
        beta = math.sqrt(1 - alpha**2)
    beta = float(beta)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise DenoiserLabError(f"alpha and beta must be finite, got alpha={alpha}, beta={beta}")
    return alpha, beta


def noisy_pairs(images: Tensor, sigma: float, n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """(x1, x2), each [P, C, H, W]: two different random images per pair plus independent noise of level sigma."""
    check_images(images, "images")
    if images.shape[0] < 2:
        raise DenoiserLabError(f"the linearity score needs at least 2 images, got {images.shape[0]}")
    generator = torch.Generator().manual_seed(int(seed))
    first = torch.randint(images.shape[0], (n_pairs,), generator=generator)
    second = (first + torch.randint(1, images.shape[0], (n_pairs,), generator=generator)) % images.shape[0]
    eps = torch.randn((2, n_pairs, *images.shape[1:]), generator=generator).to(images.device, images.dtype)
    return images[first.to(images.device)] + sigma * eps[0], images[second.to(images.device)] + sigma * eps[1]


def pair_nmse(estimate: Tensor, reference: Tensor) -> Tensor:
    """Row-wise |estimate - reference|^2 / |reference|^2 of [P, D] tensors: [P]."""
    return (estimate - reference).pow(2).sum(1) / reference.pow(2).sum(1)
