"""A network's fidelity across noise levels on held-out images: its denoising MSE beside the closed forms of its own
training set (a network trained to the population should be at least as good as both at every sigma)."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.validation import check_images


def heldout_inputs(images: Tensor, sigmas: Tensor, seed: int = 1) -> Tensor:
    """Noisy copies z = images + sigmas[l] * eps_l of every image at every level: [L, M, C, H, W] in images' dtype.

    images: float [M, C, H, W] in [-1, 1]; sigmas: [L]. eps_l depends on (seed, l) only, so adding levels or
    images elsewhere does not change a level's draw.
    """
    check_images(images, "images")
    levels = []
    for level, sigma in enumerate(sigmas.tolist()):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + level)
        levels.append(images + sigma * torch.randn(images.shape, generator=generator).to(images.device, images.dtype))
    return torch.stack(levels)


def mse_per_level(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error per element at each level: outputs [L, M, C, H, W], targets [M, C, H, W] or
    [L, M, C, H, W] -> float64 [L]."""
    return (outputs.double() - targets.double()).square().flatten(1).mean(1)


def ratio_to_best(errors: dict[str, Tensor], name: str, references: list[str]) -> Tensor:
    """errors[name] / min over references of errors[ref], per level: float64 [L] (<= 1: as good as the best)."""
    best = torch.stack([errors[reference] for reference in references]).min(dim=0).values
    return errors[name] / best
