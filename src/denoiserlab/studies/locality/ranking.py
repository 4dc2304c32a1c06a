"""Which analytical denoiser is closest to each network: rankings by MSE per element read off the comparison tables.

Per process (forward, reverse) and network: the denoisers ordered by MSE at every sigma, at the sigma where the
network departs most from the optimal denoiser (the peak of network_vs_optimal), and per sigma range by the
geometric mean of the MSE over the range's grid points (each sigma weighs the same whatever its scale). Other
networks are not ranked: the question is which closed form explains a network.
"""

from __future__ import annotations

import math

# sigma ranges of the ranking: [low, high) in the units of x ([-1, 1] images); on the 18-step EDM grid each holds
# 6 points, the middle one the peak of network_vs_optimal on Fashion-MNIST and CIFAR-10 (sigma ~ 2-3)
SIGMA_RANGES = {"high": (10.0, math.inf), "middle": (0.5, 10.0), "low": (0.0, 0.5)}


def analytical(labels) -> list[str]:
    """The denoisers among a table's labels (other networks left out)."""
    return [label for label in labels if not label.startswith("network:")]


def order_by(values: dict[str, float | None]) -> list[str]:
    """Labels by value, smallest first; missing or non-finite values last (stable)."""
    finite = lambda value: value is not None and math.isfinite(value)  # noqa: E731
    return sorted(values, key=lambda label: (not finite(values[label]), values[label] if finite(values[label]) else 0))


def ranking_per_sigma(mse: dict[str, list]) -> list[list[str]]:
    """mse {method: [L]} -> for each sigma the denoisers closest first."""
    labels = analytical(mse)
    levels = len(next(iter(mse.values()))) if mse else 0
    return [order_by({label: mse[label][level] for label in labels}) for level in range(levels)]


def geometric_mean(values: list) -> float | None:
    """exp(mean log v) over the finite values (each floored at 1e-30); None when there are none."""
    kept = [value for value in values if value is not None and math.isfinite(value)]
    return math.exp(sum(math.log(max(value, 1e-30)) for value in kept) / len(kept)) if kept else None


def ranking_by_range(mse: dict[str, list], sigmas: list[float]) -> dict:
    """{range: {"sigmas": [low, high], "order": [...], "geometric_mean_mse": {method: value}}} for the ranges
    holding at least one grid sigma."""
    table = {}
    for name, (low, high) in SIGMA_RANGES.items():
        levels = [level for level, sigma in enumerate(sigmas) if low <= sigma < high]
        if not levels:
            continue
        means = {label: geometric_mean([mse[label][level] for level in levels]) for label in analytical(mse)}
        table[name] = {"sigmas": [low, high if math.isfinite(high) else None], "order": order_by(means),
                       "geometric_mean_mse": means}
    return table


def peak_level(network_vs_optimal: list) -> int:
    """Grid index where the network departs most from the optimal denoiser (non-finite values ignored)."""
    finite = [value if value is not None and math.isfinite(value) else -math.inf for value in network_vs_optimal]
    return max(range(len(finite)), key=lambda level: finite[level])


def ranking_table(mse: dict[str, list], network_vs_optimal: list, sigmas: list[float]) -> dict:
    """One process and network: {"per_sigma", "closest", "at_peak", "peak_sigma", "by_range"}; the peak is that of
    `network_vs_optimal` (the study passes the forward process's, the paper's peak sigma, for both processes: on
    the reverse process a generalizing network's states end far from every training image, so its MSE to the
    optimal denoiser grows to the last step)."""
    per_sigma = ranking_per_sigma(mse)
    peak = peak_level(network_vs_optimal)
    return {"per_sigma": per_sigma, "closest": [order[0] if order else None for order in per_sigma],
            "at_peak": per_sigma[peak], "peak_sigma": sigmas[peak], "by_range": ranking_by_range(mse, sigmas)}
