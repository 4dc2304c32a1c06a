"""PNG figures of the locality study from results.json (and the samples and heatmaps tensors); nothing computed.

Analogues of Niedoba et al. 2025: fig. 2 (network vs optimal per sigma), fig. 3 (gradient heatmaps and their
extent), figs. 4 / 10 / 12 (schedule sweeps), fig. 7 (comparison per sigma), figs. 1 / 8 (samples from shared
noise), fig. 9 (similarity distributions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from denoiserlab.report.images import plt, save_figure, save_labelled_rows


def figure_network_vs_optimal(results: dict, path: Path) -> Path:
    """Fig. 2: MSE(network, optimal) per sigma, forward (solid) and reverse (dashed), one colour per network."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, name in enumerate(results["networks"]):
        for process, style in (("forward", "-"), ("reverse", "--")):
            axis.plot(results["sigmas"], nan_for_none(results["network_vs_optimal"][process][name]), style,
                      color=f"C{index}", marker="o", markersize=3, label=f"{name} ({process})")
    log_axes(axis, "MSE(network, optimal) per element")
    axis.set_title("Network vs optimal denoiser")
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def figure_comparison(results: dict, name: str, path: Path) -> Path:
    """Fig. 7: MSE of every method against network `name` per sigma, forward and reverse."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for axis, process in zip(axes, ("forward", "reverse")):
        for label, values in results[process]["mse"][name].items():
            axis.plot(results["sigmas"], nan_for_none(values), marker="o", markersize=3, label=label)
        log_axes(axis, f"MSE vs {name} per element")
        axis.set_title(f"{process} process")
    axes[0].legend(fontsize=8)
    return save_figure(figure, path)


def figure_heatmaps(heatmaps: Tensor, sigmas: list[float], pixels: list[tuple[int, int]], n_sigmas: int,
                    name: str, path: Path) -> Path:
    """Fig. 3: heatmaps [L, H, W, H, W] of a few output pixels (columns) at several sigmas (rows)."""
    levels = np.unique(np.linspace(0, len(sigmas) - 1, min(n_sigmas, len(sigmas))).round().astype(int))
    figure, axes = plt.subplots(len(levels), len(pixels), figsize=(1.8 * len(pixels) + 0.6, 1.8 * len(levels)),
                                squeeze=False)
    for row, level in enumerate(levels):
        for column, (y, x) in enumerate(pixels):
            axes[row, column].imshow(heatmaps[level, y, x].numpy(), cmap="magma")
            axes[row, column].plot([x], [y], "c+", markersize=6)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(f"pixel ({y}, {x})", fontsize=9)
        axes[row, 0].set_ylabel(f"sigma {sigmas[level]:.3g}", fontsize=9)
    figure.suptitle(f"Gradient heatmaps of {name}")
    return save_figure(figure, path)


def figure_heatmap_extent(results: dict, path: Path) -> Path:
    """Spatial extent of the heatmaps (pixels holding 90% of the gradient mass) per sigma."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, name in enumerate(results["networks"]):
        for reading, style in (("same_channel", "-"), ("all_channels", ":")):
            extent = results["heatmaps"][name]["extent"].get(reading)
            if extent is not None:
                axis.plot(results["sigmas"], nan_for_none(extent), style, color=f"C{index}", marker="o",
                          markersize=3, label=f"{name} ({reading})")
    axis.set_xscale("log")
    axis.set_xlabel("sigma")
    axis.set_ylabel("pixels holding 90% of the mass")
    axis.set_title("Heatmap extent")
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def figure_fitting(results: dict, name: str, path: Path) -> Path:
    """Figs. 4 / 10 / 12: log10 MSE over (sigma, swept value) against the optimal and the network; dots = fitted."""
    fitting = results["fitting"][name]
    panels = [(f"{prefix}_mse_vs_{reference}", values_key, f"{title} vs {reference}", denoiser)
              for values_key, prefix, title, denoiser in (("patch_sizes", "square", "PSPC-Square", "pspc_square"),
                                                          ("thresholds", "flex", "PSPC-Flex", "pspc_flex"))
              if values_key in fitting for reference in ("optimal", "network")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for axis, (table_key, values_key, title, denoiser) in zip(axes[0], panels):
        table = np.log10(np.maximum(np.array(nan_for_none_2d(fitting[table_key])), 1e-12))
        image = axis.imshow(table, aspect="auto", cmap="viridis")
        axis.set_yticks(range(len(fitting[values_key])), [f"{v:g}" for v in fitting[values_key]], fontsize=7)
        ticks = list(range(0, len(results["sigmas"]), max(1, len(results["sigmas"]) // 6)))
        axis.set_xticks(ticks, [f"{results['sigmas'][i]:.2g}" for i in ticks], fontsize=7)
        axis.set_xlabel("sigma (high -> low)")
        fitted = results["fitted_schedules"][denoiser][name]
        axis.plot(range(len(fitted)), [fitting[values_key].index(v) for v in fitted], "r.", markersize=6)
        axis.set_title(title, fontsize=10)
        figure.colorbar(image, ax=axis, label="log10 MSE")
    return save_figure(figure, path)


def figure_samples(samples: dict[str, Tensor], name: str, path: Path, n_columns: int = 8) -> Path:
    """Figs. 1 / 8: one row per method, samples from the same initial noise as network `name`'s."""
    rows = {("network " + name if label == "network" else label): images[:n_columns]
            for label, images in samples.items()}
    return save_labelled_rows(rows, path, title=f"Samples from shared noise (network {name})")


def figure_similarity(results: dict, name: str, path: Path) -> Path:
    """Fig. 9: distribution over samples of each similarity metric of each method to network `name`'s samples."""
    metrics = list(results["similarity_per_sample"])
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        table = results["similarity_per_sample"][metric][name]
        axis.boxplot([nan_for_none(values) for values in table.values()], tick_labels=list(table), orientation="horizontal")
        axis.set_title(f"{metric} to {name}'s samples", fontsize=10)
        axis.tick_params(labelsize=8)
    return save_figure(figure, path)


def log_axes(axis, ylabel: str) -> None:
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sigma")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)


def nan_for_none(values: list) -> list[float]:
    return [np.nan if value is None else value for value in values]


def nan_for_none_2d(rows: list[list]) -> list[list[float]]:
    return [nan_for_none(row) for row in rows]
