"""Numbers of the comparison (step 5) and of the samples (step 6), from cached outputs; plain lists out.

Comparison at each sigma over the M (forward) or R (reverse) samples of a set: MSE per element (the mean over
samples of each sample's mean squared error, [-1, 1] scale), and the mean and median over samples of
r^2 = 1 - SSE / sum (y_ref - mean(y_ref))^2 and of Pearson r (`denoiserlab.analysis.metrics`).
Samples: pixel cosine, SSIM, Pearson r (Kamb & Ganguli 2025, Table 1: r between a method's and the network's final
samples from the same noise, per seed; summarised by the median over seeds) and (with a feature model) feature
cosine of each method's final samples against a network's samples from the same noise, and the distance of every
sample to its nearest training image, with the share of copies (nearest / second-nearest distance < 1/3).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

import torch

from denoiserlab.analysis import (
    feature_cosine,
    mean_and_median,
    nearest_neighbour_distances,
    nearest_neighbour_ratio,
    pearson_r,
    per_sample_mse,
    pixel_cosine,
    r_squared,
    ssim,
)
from denoiserlab.analysis.memorization import MEMORIZED_RATIO


def comparison_per_sigma(outputs: Tensor, reference: Tensor) -> dict:
    """outputs, reference [L, M, C, H, W] -> {"mse": [L], "r2": {"mean", "median"}, "pearson_r": {...}}."""
    table = {"mse": [], "r2": {"mean": [], "median": []}, "pearson_r": {"mean": [], "median": []}}
    for level in range(outputs.shape[0]):
        table["mse"].append(per_sample_mse(outputs[level], reference[level]).mean().item())
        for name, metric in (("r2", r_squared), ("pearson_r", pearson_r)):
            summary = mean_and_median(metric(outputs[level], reference[level]))
            table[name]["mean"].append(summary["mean"])
            table[name]["median"].append(summary["median"])
    return table


def ssim_window_for(image_side: int, window: int) -> int:
    """The configured SSIM window, reduced to the largest odd side that fits the image."""
    fitting = min(window, image_side)
    return fitting if fitting % 2 == 1 else fitting - 1


def similarity_per_sample(samples: Tensor, reference: Tensor, ssim_window: int,
                          features: Callable[[Tensor], Tensor] | None) -> dict[str, list[float]]:
    """{"pixel_cosine", "ssim"[, "feature_cosine"]: per-sample values [R]} of samples vs reference [R, C, H, W]."""
    window = ssim_window_for(min(samples.shape[-2:]), ssim_window)
    table = {"pixel_cosine": pixel_cosine(samples, reference).tolist(),
             "ssim": ssim(samples, reference, window_size=window).tolist()}
    if features is not None:
        table["feature_cosine"] = feature_cosine(samples, reference, features).tolist()
    return table


def nearest_neighbour_per_sample(samples: Tensor, train: Tensor) -> list[float]:
    """Euclidean distance ([-1, 1] scale) of each sample [R, C, H, W] to its nearest training image."""
    distances, _ = nearest_neighbour_distances(samples, train)
    return distances.tolist()


def pearson_summary(per_sample: list[float]) -> dict:
    """Kamb & Ganguli's summary of per-seed Pearson r: {"median", "mean", "r2_median" (median of r^2), "n"}
    (median: the lower middle for an even count, as mean_and_median)."""
    values = torch.tensor(per_sample, dtype=torch.float64)
    summary = mean_and_median(values)
    return {"median": summary["median"], "mean": summary["mean"], "r2_median": values.pow(2).median().item(),
            "n": len(per_sample)}


def copies_share(samples: Tensor, train: Tensor) -> float:
    """Share of samples [R, C, H, W] that copy a training image: nearest / second-nearest distance < 1/3
    (analysis.memorization); nan with fewer than two training images."""
    if len(train) < 2:
        return float("nan")
    return float((nearest_neighbour_ratio(samples, train) < MEMORIZED_RATIO).double().mean())
