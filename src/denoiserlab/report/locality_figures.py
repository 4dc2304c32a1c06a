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
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    colours = plt.get_cmap("tab20").colors
    for axis, process in zip(axes, ("forward", "reverse")):
        for index, (label, values) in enumerate(results[process]["mse"][name].items()):
            axis.plot(results["sigmas"], nan_for_none(values), ":" if label.startswith("network:") else "-",
                      color=colours[index % len(colours)], marker="o", markersize=3, label=label)
        log_axes(axis, f"MSE vs {name} per element")
        axis.set_title(f"{process} process")
    axes[0].legend(fontsize=7, ncol=2)
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


def criterion_tolerance(convergence: dict) -> float:
    """The heatmap convergence criterion's relative tolerance (files written before it was recorded used 0.02)."""
    return float(convergence.get("tolerance", 0.02))


def figure_heatmap_convergence(sigmas: list[float], table: dict, name: str, path: Path) -> Path:
    """Convergence of one network's heatmaps: left, the PSPC-Flex criterion and the bootstrap standard error per
    sigma, with the z count chosen there; right, the running-mean distance against the number of groups of z
    (each line one sigma; the dashed line is the 1/sqrt(count) fall of independent noise)."""
    convergence = table["convergence"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(sigmas, convergence["flex_change"], "o-", label="PSPC-Flex MSE change on doubling z")
    left.plot(sigmas, convergence["relative_se"], "s-", label="bootstrap SE / |map|")
    if "all_channels_flex_change" in convergence:  # colour images: the criterion held under both readings
        left.plot(sigmas, convergence["all_channels_flex_change"], "o--", label="the same, all_channels reading")
        left.plot(sigmas, convergence["all_channels_relative_se"], "s--", label="bootstrap SE, all_channels")
    tolerance = criterion_tolerance(convergence)
    left.axhline(tolerance, color="gray", linestyle=":", label=f"{100 * tolerance:g} % criterion")
    counts = table["n_samples"] if isinstance(table["n_samples"], list) else [table["n_samples"]] * len(sigmas)
    for sigma, count, change in zip(sigmas, counts, convergence["flex_change"]):
        left.annotate(str(count), (sigma, change), fontsize=6, textcoords="offset points", xytext=(0, 4))
    left.set(xscale="log", yscale="log", xlabel="sigma", title=f"{name}: z per sigma (numbers) and criteria")
    left.legend(fontsize=7)
    groups = np.array(convergence["running_counts"], dtype=float)
    distances = np.array(convergence["running_distances"], dtype=float)  # [L, K]
    for level, sigma in enumerate(sigmas):
        right.plot(groups, distances[level], color=plt.cm.viridis(level / max(len(sigmas) - 1, 1)), alpha=0.8,
                   label=f"{sigma:.3g}" if level % 3 == 0 else None)
    if len(groups):
        right.plot(groups, distances[:, 0].max() / np.sqrt(groups), "k--", linewidth=1)
    right.set(xscale="log", yscale="log", xlabel="groups of z averaged (of all)",
              ylabel="relative distance to the all-z map", title="running mean")
    right.legend(fontsize=6, title="sigma", title_fontsize=7)
    return save_figure(figure, path)


def figure_fitting(results: dict, name: str, path: Path) -> Path:
    """Figs. 4 / 10 / 12 for every fitted method: log10 MSE over (sigma, swept value) against the optimal
    denoiser and the network on the fitting process, and the median score cosine on the reverse process; red dots:
    the MSE fit per sigma, white crosses: the cosine (Kamb & Ganguli) fit."""
    fitting = results["fitting"][name]
    methods = fitting.get("methods") or legacy_methods(fitting)
    process = fitting.get("process", "forward")
    panels = [(denoiser, table, key, f"{denoiser}: {title}")
              for denoiser, table in methods.items()
              for key, title in ((f"{process}:mse_vs_optimal", f"MSE vs optimal ({process})"),
                                 (f"{process}:mse_vs_network", f"MSE vs network ({process})"),
                                 ("reverse:score_cosine_median", "score cosine (reverse)"))
              if key.split(":")[0] in table]
    columns = 3
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (denoiser, table, key, title) in zip(axes.flat, panels):
        part, metric = key.split(":")
        values = np.array(nan_for_none_2d(table[part][metric]), dtype=float)
        is_cosine = metric.startswith("score_cosine")
        shown = values if is_cosine else np.log10(np.maximum(values, 1e-12))
        image = axis.imshow(shown, aspect="auto", cmap="viridis")
        axis.set_yticks(range(len(table["values"])), [f"{v:g}" for v in table["values"]], fontsize=7)
        ticks = list(range(0, len(results["sigmas"]), max(1, len(results["sigmas"]) // 6)))
        axis.set_xticks(ticks, [f"{results['sigmas'][i]:.2g}" for i in ticks], fontsize=7)
        axis.set_xlabel("sigma (high -> low)", fontsize=8)
        fits = results.get("fits", {}).get(denoiser, {}).get(name, {})
        fitted = results["fitted_schedules"].get(denoiser, {}).get(name)
        if fitted:
            axis.plot(range(len(fitted)), [table["values"].index(v) for v in fitted], "r.", markersize=6)
        if fits.get("cosine_reverse"):
            axis.plot(range(len(fits["cosine_reverse"])), [table["values"].index(v) for v in fits["cosine_reverse"]],
                      "wx", markersize=4)
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, label="median cosine" if is_cosine else "log10 MSE")
    figure.tight_layout()
    return save_figure(figure, path)


def legacy_methods(fitting: dict) -> dict:
    """The per-method layout from the flat PSPC keys of results.json files written before it existed."""
    methods = {}
    for values_key, prefix, denoiser in (("patch_sizes", "square", "pspc_square"), ("thresholds", "flex", "pspc_flex")):
        if values_key in fitting:
            methods[denoiser] = {"values": fitting[values_key], "forward": {
                f"mse_vs_{reference}": fitting[f"{prefix}_mse_vs_{reference}"] for reference in ("network", "optimal")}}
    return methods


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
