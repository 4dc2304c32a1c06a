"""How far a gradient-heatmap estimate is from converged, from the maps of G independent groups of z (as
gradient_heatmaps(..., groups=G) returns them): bootstrap standard error, agreement of the PSPC-Flex crops of two
halves, and the convergence of the running mean over groups."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from denoiserlab.denoisers.flex_masks import flex_masks
from denoiserlab.errors import DenoiserLabError


def check_group_maps(group_maps: Tensor) -> Tensor:
    """group_maps: float [G, H, W, H, W] with G >= 2 (equal-sized groups)."""
    if group_maps.ndim != 5 or group_maps.shape[0] < 2 or group_maps.shape[1:3] != group_maps.shape[3:]:
        raise DenoiserLabError(f"group maps must have shape [G >= 2, H, W, H, W], got {tuple(group_maps.shape)}")
    return group_maps.double()


def relative_distance(estimate: Tensor, reference: Tensor) -> float:
    """|estimate - reference| / |reference| (Frobenius norms over every entry)."""
    return float((estimate.double() - reference.double()).norm() / reference.double().norm())


def bootstrap_relative_se(group_maps: Tensor, n_resamples: int = 200, seed: int = 0) -> float:
    """|SE| / |mean| of the mean map, SE per entry from resampling the G groups with replacement."""
    maps = check_group_maps(group_maps)
    generator = torch.Generator().manual_seed(seed)
    mean, squares = torch.zeros_like(maps[0]), torch.zeros_like(maps[0])  # Welford's running moments
    for count in range(1, n_resamples + 1):
        resample = maps[torch.randint(len(maps), (len(maps),), generator=generator)].mean(0)
        delta = resample - mean
        mean += delta / count
        squares += delta * (resample - mean)
    return float((squares / n_resamples).sum().sqrt() / maps.mean(0).norm())


def mask_iou(heatmap_a: Tensor, heatmap_b: Tensor, lam: float) -> float:
    """Mean over output pixels of |A and B| / |A or B| of the PSPC-Flex crops of two heatmaps at threshold lam."""
    masks_a, masks_b = flex_masks(heatmap_a, lam), flex_masks(heatmap_b, lam)  # [HW, H, W] bool
    union = (masks_a | masks_b).flatten(1).sum(1)
    return float(((masks_a & masks_b).flatten(1).sum(1) / union).mean())


def halves(group_maps: Tensor) -> tuple[Tensor, Tensor]:
    """Mean maps of the first and second half of the groups (independent estimates with half the z each)."""
    maps = check_group_maps(group_maps)
    middle = len(maps) // 2
    return maps[:middle].mean(0), maps[middle : 2 * middle].mean(0)


def running_mean_distances(group_maps: Tensor) -> tuple[list[int], list[float]]:
    """Convergence: relative distance of the mean of the first 1, 2, 4, ... groups to the mean of all groups.
    Returns (group counts, distances); the distance of a mean over g groups falls as sqrt(1/g - 1/G)."""
    maps = check_group_maps(group_maps)
    counts = [2**k for k in range(int(math.log2(len(maps))) + 1) if 2**k < len(maps)]
    full = maps.mean(0)
    return counts, [relative_distance(maps[:count].mean(0), full) for count in counts]


def heatmap_convergence(group_maps: Tensor, thresholds: tuple[float, ...] = (0.3, 0.6, 0.9)) -> dict:
    """Every convergence figure of one heatmap estimate: {"relative_se", "half_relative_difference",
    "half_iou" [T] at `thresholds`, "running_counts", "running_distances"} (plain floats and lists)."""
    first, second = halves(group_maps)
    counts, distances = running_mean_distances(group_maps)
    return {"relative_se": bootstrap_relative_se(group_maps),
            "half_relative_difference": relative_distance(first, second),
            "half_iou": [mask_iou(first, second, lam) for lam in thresholds],
            "thresholds": list(thresholds), "running_counts": counts, "running_distances": distances}
