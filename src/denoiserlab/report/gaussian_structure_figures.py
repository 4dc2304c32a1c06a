"""Figures of the Gaussian-structure study (Li et al. 2024 figs. 1, 2, 4, 6-10 in our setting): results.json and
the arrays (arrays.safetensors) in, PNG files out; nothing is computed beyond layout and display scaling."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from denoiserlab.report.images import save_figure, save_labelled_rows

SWEEP_AXES = {"n_train": "training images N", "width": "base width (channels)", "kimg": "training length (kimg)"}


def sigma_axis(axis, label: str) -> None:
    axis.set_xscale("log")
    axis.set_xlabel("sigma")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)


def spread_indices(count: int, wanted: int) -> list[int]:
    """Up to `wanted` indices spread evenly over range(count)."""
    return sorted(set(np.linspace(0, count - 1, min(wanted, count)).round().astype(int).tolist()))


def nan_for_none(values: list) -> list[float]:
    return [np.nan if value is None else value for value in values]


def linearity_figure(results: dict, path: Path) -> Path:
    """Cosine and NMSE linearity scores vs sigma at the default alpha, every network and denoiser."""
    sigmas, paper = results["sigmas"], results["paper"]["linearity_cosine_min"]
    figure, (cosine_axis, nmse_axis) = plt.subplots(1, 2, figsize=(12, 4.4))
    colours = plt.get_cmap("tab20").colors
    for index, (label, table) in enumerate(results["linearity"]["scores"].items()):
        style = dict(linestyle="--" if label.startswith("denoiser:") else "-", color=colours[index % len(colours)],
                     marker="o", markersize=3, label=label)
        cosine_axis.plot(sigmas, nan_for_none(table["cosine"]), **style)
        nmse_axis.plot(sigmas, nan_for_none(table["nmse"]), **style)
    cosine_axis.axhline(paper, color="grey", linestyle=":", label=f"paper's lowest ({paper})")
    sigma_axis(cosine_axis, "linearity score (cosine, eq. 11)")
    sigma_axis(nmse_axis, "linearity NMSE (eq. 12)")
    nmse_axis.set_yscale("log")
    cosine_axis.legend(fontsize=7, ncol=2)
    alpha, beta = results["linearity"]["alpha"], results["linearity"]["beta"]
    figure.suptitle(f"Linearity of the denoisers (alpha = {alpha:.3f}, beta = {beta:.3f})")
    return save_figure(figure, path)


def linearity_sweep_figure(results: dict, path: Path) -> Path:
    """Cosine linearity vs sigma for each swept alpha, one panel per network / denoiser (paper fig. 10)."""
    scores = {label: table for label, table in results["linearity"]["scores"].items() if table["sweep_cosine"]}
    sigmas = results["sigmas"]
    columns = min(4, max(1, len(scores)))
    rows = max(1, -(-len(scores) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(scores):]:
        axis.set_visible(False)
    for axis, (label, table) in zip(axes.flat, scores.items()):
        for alpha, beta, values in zip(results["linearity"]["alphas"], results["linearity"]["betas"],
                                       table["sweep_cosine"]):
            axis.plot(sigmas, nan_for_none(values), marker="o", markersize=3, label=f"a={alpha:.2f}, b={beta:.2f}")
        axis.plot(sigmas, nan_for_none(table["cosine"]), "k--", label="default alpha")
        sigma_axis(axis, "linearity score (cosine)")
        axis.set_title(label, fontsize=10)
    axes[0, 0].legend(fontsize=7)
    return save_figure(figure, path)


def weight_figure(results: dict, path: Path) -> Path:
    """Weight NMSE of W_sigma vs the Gaussian map, and mean singular-vector alignment, vs sigma (paper fig. 4)."""
    sigmas = results["sigmas"]
    figure, (nmse_axis, align_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, table in results["distillation"].items():
        line, = nmse_axis.plot(sigmas, table["weight_nmse"], marker="o", markersize=3, label=name)
        split_half = np.array(table.get("weight_nmse_split_half", []), dtype=float)
        if np.isfinite(split_half).any():
            nmse_axis.plot(sigmas, np.where(split_half > 0, split_half, np.nan), linestyle="--", color=line.get_color(),
                           label=f"{name} (split-half: no fitting noise)")
        align_axis.plot(sigmas, np.mean(table["alignment"], axis=1), marker="o", markersize=3, label=name)
    nmse_axis.axhline(results["paper"]["weight_nmse_max"], color="grey", linestyle=":", label="paper: < 0.2")
    sigma_axis(nmse_axis, "weight NMSE |W - W_gauss|^2 / |W_gauss|^2")
    nmse_axis.set_yscale("log")
    sigma_axis(align_axis, "mean |cos| of the top-k singular vectors")
    align_axis.set_ylim(0, 1.05)
    nmse_axis.legend(fontsize=8)
    return save_figure(figure, path)


def spectra_figure(results: dict, name: str, path: Path, shown: int = 5) -> Path:
    """Singular values of W_sigma (solid) and of the Gaussian map (dashed) at a few sigmas."""
    table, sigmas = results["distillation"][name], results["sigmas"]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index in spread_indices(len(sigmas), shown):
        line, = axis.plot(table["spectrum_linear"][index], label=f"W, sigma={sigmas[index]:.3g}")
        axis.plot(table["spectrum_gaussian"][index], "--", color=line.get_color())
    axis.set_yscale("log")
    axis.set_xlabel("index")
    axis.set_ylabel("singular value (dashed: Gaussian map)")
    axis.set_title(f"Spectra of the distilled maps, {name}")
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def unit_scaled(images: Tensor) -> Tensor:
    """Each image divided by its largest |value| (display of singular vectors in [-1, 1])."""
    peak = images.flatten(1).abs().amax(1).clamp(min=1e-12)
    return images / peak.view(-1, *[1] * (images.ndim - 1))


def vectors_figure(results: dict, arrays: dict, name: str, path: Path, shown: int = 4) -> Path:
    """Top left singular vectors of W_sigma and of the Gaussian map as images, at a few sigmas."""
    sigmas, rows = results["sigmas"], {}
    for index in spread_indices(len(sigmas), shown):
        rows[f"W, sigma={sigmas[index]:.3g}"] = unit_scaled(arrays["vectors_linear"][index])
        rows[f"Gaussian, sigma={sigmas[index]:.3g}"] = unit_scaled(arrays["vectors_gaussian"][index])
    return save_labelled_rows(rows, path, title=f"Leading singular vectors, {name} (grey = 0)")


def score_error_figure(results: dict, path: Path) -> Path:
    """Network vs distilled linear / Gaussian / optimal denoiser, RMSE per sigma (paper fig. 2, three regimes)."""
    networks = results["score_error"]
    figure, axes = plt.subplots(1, len(networks), figsize=(5.5 * len(networks), 4), squeeze=False)
    for axis, (name, table) in zip(axes[0], networks.items()):
        for reference, values in table.items():
            axis.plot(results["sigmas"], values, marker="o", markersize=3, label=f"vs {reference}")
        axis.plot(results["sigmas"], results["distillation"][name]["rmse_linear_vs_gaussian"], ":",
                  color="grey", label="linear vs Gaussian")
        sigma_axis(axis, "score-approximation error (RMSE, eq. 10)")
        axis.set_title(name)
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def trajectory_nmse_figure(results: dict, path: Path) -> Path:
    """Per-step NMSE between the network's Euler trajectory and the Gaussian closed-form trajectory."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name, table in results["sampling"].items():
        steps = np.arange(len(table["nmse"]))
        axis.plot(steps, table["nmse"], marker="o", markersize=3, label=f"{name} (Euler) vs Gaussian closed form")
        axis.plot(steps, table["nmse_gaussian_euler"], ":", label=f"Gaussian Euler vs closed form ({name} data)")
    axis.set_yscale("symlog", linthresh=1e-4)
    axis.set_xlabel("step (0 = initial noise, last = sample)")
    axis.set_ylabel("NMSE between trajectory states")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def trajectory_grid(results: dict, arrays: dict, name: str, path: Path, shown: int = 4) -> Path:
    """Trajectory states (columns: steps) of the network and the Gaussian from the same noise, per sample."""
    scale = 1 / (1 + Tensor(results["sampling"][name]["sigmas"]) ** 2).sqrt().view(-1, 1, 1, 1)  # display only
    rows = {}
    for sample in range(min(shown, arrays["trajectory_network"].shape[1])):
        rows[f"{name} #{sample}"] = (arrays["trajectory_network"][:, sample] * scale).clamp(-1, 1)
        rows[f"Gaussian #{sample}"] = (arrays["trajectory_gaussian"][:, sample] * scale).clamp(-1, 1)
    return save_labelled_rows(rows, path, title="Trajectories from shared noise, x / sqrt(1 + sigma^2) "
                                                "(left: sigma_max, right: sample)")


def samples_grid(arrays: dict, name: str, path: Path) -> Path:
    """Samples above their nearest training images."""
    rows = {f"{name} samples": arrays["samples"].clamp(-1, 1), "nearest training image": arrays["nearest"]}
    return save_labelled_rows(rows, path)


def loss_curves_figure(results: dict, name: str, path: Path) -> Path:
    """Adam loss of the linear distillation at each sigma ("gd" only)."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for sigma, losses in zip(results["sigmas"], results["distillation"][name]["loss_curves"]):
        axis.plot(losses, label=f"sigma={sigma:.3g}")
    axis.set_yscale("log")
    axis.set_xlabel("Adam step")
    axis.set_ylabel("MSE per element")
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def sweep_figure(results: dict, kind: str, path: Path) -> Path:
    """Generalization score and score errors at the sweep's sigmas vs the swept quantity (paper figs. 6-8), one
    line per group of entries that share what is held fixed (the training-set size, or the network size)."""
    figure, (score_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for group, entries in sweep_groups(results["sweeps"]["entries"], kind).items():
        values = [row["value"] for row in entries]
        line, = score_axis.plot(values, [row["generalization_score"] for row in entries], marker="o", label=group)
        for position, sigma in enumerate(results["sweeps"]["sigmas"]):
            for reference, style in (("gaussian", "-"), ("optimal", "--")):
                error_axis.plot(values, [row[f"score_error_{reference}"][position] for row in entries], marker="o",
                                markersize=3, linestyle=style, alpha=1 - 0.4 * position, color=line.get_color(),
                                label=f"{group}: vs {reference}, sigma={sigma:.3g}")
    score_axis.axhline(results["paper"]["generalization_score_threshold"], color="grey", linestyle=":",
                       label="paper's threshold")
    score_axis.set_ylabel("generalization score (eq. 14)")
    error_axis.set_ylabel("score-approximation error (RMSE)")
    for axis in (score_axis, error_axis):
        axis.set_xlabel(SWEEP_AXES[kind])
        axis.set_xscale("linear" if kind == "kimg" else "log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(figure, path)


def sweep_groups(entries: list[dict], kind: str) -> dict[str, list[dict]]:
    """Entries of one kind grouped by what the sweep holds fixed, each group sorted by the swept value:
    {"N=16": [...]} for width and kimg sweeps, {"0.44 M parameters": [...]} for training-set-size sweeps."""
    groups: dict[str, list[dict]] = {}
    for row in sorted((row for row in entries if row["kind"] == kind), key=lambda row: row["value"]):
        fixed = f"{row['n_parameters'] / 1e6:.2g} M parameters" if kind == "n_train" else f"N={row['n_train']}"
        groups.setdefault(fixed, []).append(row)
    return groups


def sweep_samples_grid(results: dict, arrays: list[dict], path: Path) -> Path:
    """Each sweep entry's first samples, one row per entry."""
    rows = {row["label"]: images["samples"].clamp(-1, 1) for row, images in zip(results["sweeps"]["entries"], arrays)}
    return save_labelled_rows(rows, path, title="Sweep samples from shared noise")


def strong_grid(arrays: dict, pair: tuple[str, str], path: Path) -> Path:
    """The two networks' samples from the same noise, one row each."""
    a, b = pair
    return save_labelled_rows({a: arrays[a]["samples"].clamp(-1, 1), b: arrays[b]["samples"].clamp(-1, 1)}, path)
