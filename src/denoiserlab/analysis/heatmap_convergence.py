"""How far a gradient-heatmap estimate is from converged, from the maps of G independent groups of z (as
gradient_heatmaps(..., groups=G) returns them): bootstrap standard error, agreement of the PSPC-Flex crops of two
halves, and the convergence of the running mean over groups."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.denoisers.flex_masks import flex_masks
from denoiserlab.denoisers.pspc_flex import PSPCFlex
from denoiserlab.analysis.heatmaps import GradientHeatmaps, gradient_heatmaps
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


@torch.no_grad()
def flex_mse_to_network(network, train: Tensor, sigma: float, heatmap: Tensor, thresholds: tuple[float, ...],
                        z: Tensor, network_outputs: Tensor) -> Tensor:
    """MSE per element of PSPC-Flex (crops flex_masks(heatmap, lam)) against the network's outputs, at each lam.

    train: float [N, C, H, W]; z: [M, C, H, W] noisy inputs at sigma; network_outputs: the network at z, [M, C, H, W].
    Returns float64 [T]. lam = 1 (full-image crops: the optimal denoiser) does not depend on the heatmap.
    """
    errors = []
    for lam in thresholds:
        composite = PSPCFlex(train, flex_masks(heatmap, lam))(z, sigma)
        errors.append((composite.double() - network_outputs.double()).square().mean())
    return torch.stack(errors)


def flex_change_on_doubling(mse_half: Tensor, mse_full: Tensor) -> tuple[int, float]:
    """The downstream convergence criterion: at the fitted threshold (index of the lowest full-estimate MSE), the
    relative change |mse_half - mse_full| / mse_full of PSPC-Flex's MSE to the network when the z count doubles
    (mse_half: maps from half the z). Returns (fitted index, relative change)."""
    fitted = int(mse_full.argmin())
    return fitted, float((mse_half[fitted] - mse_full[fitted]).abs() / mse_full[fitted])


# (n_samples, seed, draw) -> maps; draw(running_sums=None) computes them (gradient_heatmaps' running_sums)
RoundCache = Callable[[int, int, Callable[..., GradientHeatmaps]], GradientHeatmaps]
FLEX_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0)  # PSPC-Flex's default candidates (PSPCFlex.tunable)


def heatmaps_until_converged(den, images: Tensor, sigma: float, labels: Tensor | None = None,
                             start_samples: int = 16, max_samples: int = 256, tolerance: float = 0.02,
                             groups: int = 8, check_pairs: int = 16, seed: int = 0, batch_size: int = 8,
                             products_per_pass: int | None = None, thresholds: tuple[float, ...] = FLEX_THRESHOLDS,
                             round_cache: RoundCache | None = None, progress: bool = False) -> dict:
    """Gradient heatmaps of den at sigma with the z count doubled until it no longer matters downstream: PSPC-Flex's
    MSE to den at the fitted threshold changes by less than `tolerance` (relative) when the z count doubles, under
    every reading that builds masks (criterion_readings: both for colour images).

    Each round draws as many new z as it has (systematic, label-stratified draws with a new seed), so the previous
    estimate is exactly the first half of the new one. The check set is `check_pairs` forward-process inputs
    (training image + sigma * eps, seeded apart from the z). Stops at max_samples even if not converged.
    round_cache(n_samples, round_seed, draw) is called for each round (draw(running_sums=None) computes its maps)
    and returns draw()'s maps or what an earlier draw with the same arguments returned: the heatmaps command keeps
    finished rounds, and within a round the running sums (gradient_heatmaps' running_sums), so that a killed sigma
    resumes at its first unfinished batch of z. progress: a bar over each round's z.
    Returns {"heatmaps": GradientHeatmaps of all z (with per-group maps), "n_samples", "converged",
    "history": [{"n_samples", "change" (the largest over the readings), "fitted_threshold" (same_channel's),
    "by_reading": {reading: {"change", "fitted_threshold"}}}], "flex_mse": float64 [T] with all z (same_channel),
    "flex_mse_by_reading": {reading: float64 [T]}, "thresholds"}.
    """
    readings = criterion_readings(images)
    z_check, outputs = flex_check_set(den, images, sigma, check_pairs, seed)
    round_cache = round_cache or (lambda n_samples, round_seed, draw_round: draw_round())

    def draw(n_samples: int, round_seed: int) -> GradientHeatmaps:
        return round_cache(n_samples, round_seed, lambda running_sums=None: gradient_heatmaps(
            den, images, sigma, n_samples, round_seed, batch_size, products_per_pass, sampling="systematic",
            labels=labels, groups=groups, progress=progress, running_sums=running_sums))

    mses = lambda maps: {reading: flex_mse_to_network(den, images, sigma, getattr(maps, reading), thresholds,
                                                      z_check, outputs) for reading in readings}
    current = draw(start_samples, seed)
    mse_half = mses(current)
    history = []
    for round_index in range(1, 64):
        merged = merge_equal_rounds(current, draw(current.n_samples, seed + 7919 * round_index))
        mse_full = mses(merged)
        by_reading = {}
        for reading in readings:
            fitted, change = flex_change_on_doubling(mse_half[reading], mse_full[reading])
            by_reading[reading] = {"change": change, "fitted_threshold": thresholds[fitted]}
        change = max(entry["change"] for entry in by_reading.values())
        history.append({"n_samples": merged.n_samples, "change": change,
                        "fitted_threshold": by_reading["same_channel"]["fitted_threshold"], "by_reading": by_reading})
        if change < tolerance or 2 * merged.n_samples > max_samples:
            break
        current, mse_half = merged, mse_full
    return {"heatmaps": merged, "n_samples": merged.n_samples, "converged": change < tolerance,
            "history": history, "flex_mse": mse_full["same_channel"], "flex_mse_by_reading": mse_full,
            "thresholds": list(thresholds)}


def criterion_readings(images: Tensor) -> tuple[str, ...]:
    """The heatmap readings the convergence criterion checks for images [N, C, H, W]: both for several channels,
    same_channel alone for one channel (where the readings coincide)."""
    return ("same_channel",) if images.shape[1] == 1 else ("same_channel", "all_channels")


def merge_equal_rounds(first: GradientHeatmaps, second: GradientHeatmaps) -> GradientHeatmaps:
    """The estimate over the z of two estimates with equal z counts (and equal group counts): their mean."""
    if first.n_samples != second.n_samples:
        raise DenoiserLabError(f"can only merge equal z counts, got {first.n_samples} and {second.n_samples}")
    mean = lambda name: (getattr(first, name) + getattr(second, name)) / 2  # noqa: E731
    return GradientHeatmaps(mean("same_channel"), mean("all_channels"), 2 * first.n_samples,
                            mean("groups_same_channel"), mean("groups_all_channels"))


@torch.no_grad()
def flex_check_set(den, images: Tensor, sigma: float, n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Forward-process inputs z = y0 + sigma eps (seeded apart from the heatmaps' z) and den's outputs there."""
    generator = torch.Generator().manual_seed(seed + 104729)
    indices = torch.randint(images.shape[0], (n_pairs,), generator=generator)
    z = images[indices] + sigma * torch.randn((n_pairs, *images.shape[1:]), generator=generator).to(images)
    return z, den(z, sigma)
