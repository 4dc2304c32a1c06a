"""A network's fidelity across noise levels on held-out images: its denoising MSE beside the closed forms of its own
training set (a network trained to the population should be at least as good as both at every sigma)."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.validation import check_images


def heldout_inputs(images: Tensor, sigmas: Tensor, seed: int = 1, levels: list[int] | None = None) -> Tensor:
    """Noisy copies z = images + sigmas[l] * eps_l of every image at every level l of `levels` (default: all):
    [len(levels), M, C, H, W] in images' dtype.

    images: float [M, C, H, W] in [-1, 1]; sigmas: [L]. eps_l depends on (seed, l) only, so adding levels or
    images elsewhere, or drawing only some levels, does not change a level's draw.
    """
    check_images(images, "images")
    noisy = []
    for level in range(len(sigmas)) if levels is None else levels:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + level)
        noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
        noisy.append(images + float(sigmas[level]) * noise)
    return torch.stack(noisy)


def mse_per_level(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error per element at each level: outputs [L, M, C, H, W], targets [M, C, H, W] or
    [L, M, C, H, W] -> float64 [L]."""
    return (outputs.double() - targets.double()).square().flatten(1).mean(1)


def ratio_to_best(errors: dict[str, Tensor], name: str, references: list[str]) -> Tensor:
    """errors[name] / min over references of errors[ref], per level: float64 [L] (<= 1: as good as the best)."""
    best = torch.stack([errors[reference] for reference in references]).min(dim=0).values
    return errors[name] / best


def errors_per_image(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error per image at each level: outputs [L, M, C, H, W], targets [M, C, H, W] or
    [L, M, C, H, W] -> float64 [L, M] (its mean over M is mse_per_level)."""
    return (outputs.double() - targets.double()).square().flatten(2).mean(2)


def ratio_to_best_with_error(image_errors: dict[str, Tensor], name: str,
                             references: list[str]) -> tuple[Tensor, Tensor]:
    """ratio_to_best from per-image errors [L, M], and the standard error of each level's ratio over the M images
    (delta method for a ratio of paired means: sd(a_i - r b_i) / (sqrt(M) mean(b)), b the best reference on
    average at that level): two float64 [L]."""
    means = {key: values.mean(dim=1) for key, values in image_errors.items()}
    ratio = ratio_to_best(means, name, references)
    stacked = torch.stack([image_errors[reference] for reference in references])  # [R, L, M]
    best = stacked[torch.stack([means[reference] for reference in references]).argmin(dim=0),
                   torch.arange(stacked.shape[1])]  # [L, M]
    spread = (image_errors[name] - ratio[:, None] * best).std(dim=1)  # [L]
    return ratio, spread / (best.shape[1] ** 0.5 * best.mean(dim=1))
