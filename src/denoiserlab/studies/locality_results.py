"""Step 7 of the locality study: sample similarity numbers and the results.json table (nesting: see locality.py)."""

from __future__ import annotations

import math
import platform
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from denoiserlab import __version__
from denoiserlab.config import to_dict
from denoiserlab.studies.locality_heatmaps import READINGS
from denoiserlab.studies.locality_metrics import nearest_neighbour_per_sample, similarity_per_sample
from denoiserlab.analysis import heatmap_extent


def sample_numbers(samples: dict[str, dict[str, Tensor]], train: Tensor, ssim_window: int,
                   features: Callable | None) -> dict:
    """Similarity of every method's samples to each network's, and nearest-training-image distances.

    samples: {network: {"network": its samples [R, C, H, W], method: samples from the same noise}}.
    """
    similarity, nearest = {}, {}
    for network, by_method in samples.items():
        nearest[network] = {label: nearest_neighbour_per_sample(images, train) for label, images in by_method.items()}
        for label, images in by_method.items():
            if label == "network":
                continue
            for metric, values in similarity_per_sample(images, by_method["network"], ssim_window, features).items():
                similarity.setdefault(metric, {}).setdefault(network, {})[label] = values
    return {"similarity_per_sample": similarity, "nearest_neighbour_per_sample": nearest}


def mean_of(values: list[float]) -> float:
    return float(np.mean(values))


def assemble_results(ctx, per_network: dict, numbers: dict, feature_model: str | None, command: str,
                     total_seconds: float) -> dict:
    """The results.json table (module docstring of locality.py)."""
    names = list(per_network)
    processes = ("forward", "reverse")
    similarity = numbers["similarity_per_sample"]
    nearest = numbers["nearest_neighbour_per_sample"]
    results = {
        "sigmas": ctx.sigmas.tolist(),
        "networks": names,
        **{process: {table: {name: per_network[name]["tables"][process][table] for name in names}
                     for table in ("mse", "mse_vs_optimal", "r2", "pearson_r")} for process in processes},
        "network_vs_optimal": {process: {name: per_network[name]["tables"][process]["mse_vs_optimal"]["network"]
                                         for name in names} for process in processes},
        "fitted_schedules": {denoiser: {name: per_network[name]["fitting"][denoiser]["fitted"] for name in names}
                             for denoiser in ("pspc_square", "pspc_flex") if denoiser in ctx.config.denoisers},
        "schedules_used": schedules_used(per_network),
        "fitting": {name: fitting_table(per_network[name]["fitting"]) for name in names},
        "heatmaps": {name: heatmap_summary(per_network[name]["heatmaps"]) for name in names},
        "similarity": {metric: {name: {label: mean_of(values) for label, values in table[name].items()}
                                for name in names} for metric, table in similarity.items()},
        "similarity_per_sample": similarity,
        "feature_model": feature_model,
        "nearest_neighbour": {name: {label: mean_of(values) for label, values in nearest[name].items()}
                              for name in names},
        "nearest_neighbour_per_sample": nearest,
        "dataset": {"name": ctx.data.imageset.name, "n_images": int(ctx.data.images.shape[0]),
                    "image_shape": list(ctx.data.images.shape[1:]), "xflip": ctx.data.xflip},
        "config": to_dict(ctx.config),
        "command": command,
        "versions": versions(),
        "stages": ctx.cache.timings,
        "stages_computed": ctx.cache.computed,
        "timings_s": {**{stage: timing["seconds"] for stage, timing in ctx.cache.timings.items()},
                      "total": total_seconds},
    }
    results["checks"] = {name: paper_checks(results, name) for name in names}
    return finite_or_none(results)


def schedules_used(per_network: dict) -> dict:
    """{denoiser: {network: {"source": "fitted" | "cifar10" | file, "values": [...], "fitted_file": path}}}."""
    table = {}
    for name, study in per_network.items():
        for denoiser, fitting in study["fitting"].items():
            schedule = fitting["schedule"]
            table.setdefault(denoiser, {})[name] = {"source": fitting["schedule_source"],
                                                    "values": list(schedule.values), "grid": schedule.sigmas(),
                                                    "fitted_file": fitting["file"]}
    return table


def fitting_table(fitting: dict) -> dict:
    """Sweep tables of one network: values swept and MSE [values][L] against the network and the optimal."""
    table = {}
    short = {"pspc_square": ("patch_sizes", "square"), "pspc_flex": ("thresholds", "flex")}
    for denoiser, sweep in fitting.items():
        values_key, prefix = short[denoiser]
        table[values_key] = list(sweep["values"])
        for reference, mse in sweep["mse"].items():
            table[f"{prefix}_mse_vs_{reference}"] = mse.tolist()
    return table


def heatmap_summary(heatmaps: dict) -> dict:
    """Where the heatmaps came from and their spatial extent (pixels holding 90% of the mass) per sigma."""
    return {"source": heatmaps["source"], "command": heatmaps["command"], "n_samples": heatmaps["n_samples"],
            "extent": {reading: heatmap_extent(heatmaps[reading]).tolist()
                       for reading in READINGS if reading in heatmaps}}


def paper_checks(results: dict, name: str) -> dict:
    """The paper's claims (issue 6, "what the results should show") read off our numbers for one network."""
    sigmas = results["sigmas"]
    forward = results["network_vs_optimal"]["forward"][name]
    peak = int(np.argmax(forward))
    mse_at_peak = {label: values[peak] for label, values in results["forward"]["mse"][name].items()}
    vs_optimal = {label: values[peak] for label, values in results["forward"]["mse_vs_optimal"][name].items()}
    denoisers = [label for label in mse_at_peak if not label.startswith("network:")]
    checks = {
        "peak_sigma_forward": sigmas[peak],
        "peak_sigma_reverse": sigmas[int(np.argmax(results["network_vs_optimal"]["reverse"][name]))],
        "rise_and_fall_forward": bool(forward[0] < forward[peak] and forward[-1] < forward[peak]),
        "ranking_at_peak_forward": sorted(denoisers, key=lambda label: mse_at_peak[label]),
        "pspc_deviates_like_network_at_peak": {
            label: bool(mse_at_peak[label] < vs_optimal[label] and mse_at_peak[label] < vs_optimal["network"])
            for label in denoisers if label.startswith("pspc")},
        "networks_closer_to_each_other_than_to_optimal_at_peak": {
            label: bool(mse_at_peak[label] < vs_optimal["network"]) for label in mse_at_peak
            if label.startswith("network:")},
    }
    cosine = results["similarity"].get("pixel_cosine", {}).get(name, {})
    if "optimal" in cosine:
        checks["pspc_samples_closer_than_optimal_samples"] = {
            label: bool(cosine[label] > cosine["optimal"]) for label in cosine if label.startswith("pspc")}
    return checks


def versions() -> dict:
    return {"denoiserlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def finite_or_none(value):
    """Replace NaN and infinities by None, so results.json is strict JSON."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
