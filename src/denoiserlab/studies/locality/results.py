"""Step 7 of the locality study: sample numbers, rankings and the results.json table (nesting: see
studies/locality/study.py), with the peer papers' claims beside ours."""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch import Tensor

from denoiserlab.analysis import heatmap_extent, pearson_r
from denoiserlab.config import to_dict
from denoiserlab.studies.common.results import plain, versions
from denoiserlab.studies.locality.heatmaps import READINGS
from denoiserlab.studies.locality.metrics import (
    copies_share,
    nearest_neighbour_per_sample,
    pearson_summary,
    similarity_per_sample,
)
from denoiserlab.studies.locality.ranking import analytical, ranking_table
from denoiserlab.studies.locality.tuning import fixed_schedule

finite_or_none = plain  # the name of this helper before the studies shared it

PROCESSES = ("forward", "reverse")

# What the papers behind the methods report, set beside our numbers (registry names as keys where a number
# belongs to a method). Sources: ../shared/papers and the papers themselves.
PAPERS = {
    "niedoba_2025": {
        "title": "Niedoba et al. 2025, Towards a mechanistic explanation of diffusion model generalization",
        "claim": "ranking by MSE to the networks at the peak sigma (CIFAR-10, DDPM++ / DiT / MLP-Mixer): "
                 "pspc_flex < pspc_square < gaussian < cfdm, optimal",
        "ranking_at_peak": ["pspc_flex", "pspc_square", "gaussian", "cfdm", "optimal"],
    },
    "kamb_ganguli_2025": {
        "title": "Kamb & Ganguli 2025, An analytic theory of creativity in convolutional diffusion models",
        "claim": "median Pearson r of final samples to the network's from the same noise, Fashion-MNIST U-Net "
                 "(Table 1, as quoted by issue 12); the abstract gives median r^2 0.94 for their best model",
        "sample_pearson_r_fashion_mnist_unet": {"els": 0.93, "ls": 0.93, "optimal": 0.80},
    },
    "lukoianov_2025": {
        "title": "Lukoianov et al. 2025, Locality in image diffusion models emerges from data statistics",
        "claim": "masks thresholded from the Wiener (Gaussian) denoiser give an analytical denoiser close to networks",
    },
    "wang_vastola_2024": {
        "title": "Wang & Vastola 2024, The unreasonable effectiveness of Gaussian score approximation",
        "claim": "Gaussian (mixture) scores approximate trained networks well at high and middle noise",
    },
    "niedoba_2024": {
        "title": "Niedoba et al. 2024, Nearest neighbour score estimators for diffusion generative models",
        "claim": "an estimator of the optimal denoiser: it should rank with it, not with the networks",
    },
    "scarvelis_2025": {
        "title": "Scarvelis, Sáez de Ocáriz Borde & Solomon 2025, Closed-form diffusion models",
        "claim": "smoothing the closed-form score yields new samples near barycenters of training points",
    },
}


def sample_numbers(samples: dict[str, dict[str, Tensor]], train: Tensor, ssim_window: int,
                   features: Callable | None) -> dict:
    """Similarity of every method's samples to each network's, Pearson r per seed, nearest-training-image
    distances and the share of copies.

    samples: {network: {"network": its samples [R, C, H, W], method: samples from the same noise}}.
    """
    similarity, nearest, pearson, copies = {}, {}, {}, {}
    for network, by_method in samples.items():
        nearest[network] = {label: nearest_neighbour_per_sample(images, train) for label, images in by_method.items()}
        copies[network] = {label: copies_share(images, train) for label, images in by_method.items()}
        pearson[network] = {}
        for label, images in by_method.items():
            if label == "network":
                continue
            for metric, values in similarity_per_sample(images, by_method["network"], ssim_window, features).items():
                similarity.setdefault(metric, {}).setdefault(network, {})[label] = values
            pearson[network][label] = pearson_r(images, by_method["network"]).tolist()
    return {"similarity_per_sample": similarity, "nearest_neighbour_per_sample": nearest,
            "sample_pearson_r_per_sample": pearson, "memorized_fraction": copies}


def mean_of(values: list[float]) -> float:
    return float(np.mean(values))


def assemble_results(ctx, specs: dict, per_network: dict, numbers: dict, feature_model: str | None, command: str,
                     total_seconds: float) -> dict:
    """The results.json table (module docstring of studies/locality/study.py)."""
    names = list(per_network)
    similarity = numbers["similarity_per_sample"]
    nearest = numbers["nearest_neighbour_per_sample"]
    pearson = numbers["sample_pearson_r_per_sample"]
    results = {
        "sigmas": ctx.sigmas.tolist(),
        "networks": names,
        "methods": {name: method_summary(spec) for name, spec in specs.items()},
        **{process: {table: {name: per_network[name]["tables"][process][table] for name in names}
                     for table in ("mse", "mse_vs_optimal", "r2", "pearson_r")} for process in PROCESSES},
        "network_vs_optimal": {process: {name: per_network[name]["tables"][process]["mse_vs_optimal"]["network"]
                                         for name in names} for process in PROCESSES},
        **schedule_tables(per_network),
        "schedules_used": schedules_used(ctx, per_network),
        "fitting": {name: fitting_table(per_network[name]["fitting"], ctx.config.fitting.process) for name in names},
        "heatmaps": {name: heatmap_summary(per_network[name]["heatmaps"]) for name in names},
        "heatmap_readings": {name: per_network[name]["readings"] for name in names},
        "similarity": {metric: {name: {label: mean_of(values) for label, values in table[name].items()}
                                for name in names} for metric, table in similarity.items()},
        "similarity_per_sample": similarity,
        "sample_pearson_r": {name: {label: pearson_summary(values) for label, values in pearson[name].items()}
                             for name in names},
        "sample_pearson_r_per_sample": pearson,
        "feature_model": feature_model,
        "nearest_neighbour": {name: {label: mean_of(values) for label, values in nearest[name].items()}
                              for name in names},
        "nearest_neighbour_per_sample": nearest,
        "memorized_fraction": numbers["memorized_fraction"],
        "papers": PAPERS,
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
    results = plain(results)
    results["ranking"] = {process: {name: ranking_table(results[process]["mse"][name],
                                                        results["network_vs_optimal"]["forward"][name],
                                                        results["sigmas"]) for name in names}
                          for process in PROCESSES}
    results["checks"] = {name: paper_checks(results, name) for name in names}
    return plain(results)


def method_summary(spec) -> dict:
    """What results.json says about a configured method: its tuned option, training-set subset, per network."""
    return {"tunable": None if spec.tunable is None else spec.tunable.name,
            "fixed": spec.fixed, "schedule": spec.schedule if spec.fits else None,
            "train_subset": spec.train_subset, "per_network": spec.per_network}


def schedule_tables(per_network: dict) -> dict:
    """fitted_schedules (MSE fit on fitting.process), calibrated_schedules (score cosine) and fits (every rule)."""
    tables = {"fitted_schedules": {}, "calibrated_schedules": {}, "fits": {}}
    for name, study in per_network.items():
        for denoiser, fitting in study["fitting"].items():
            tables["fitted_schedules"].setdefault(denoiser, {})[name] = fitting["fitted"]
            tables["calibrated_schedules"].setdefault(denoiser, {})[name] = fitting["fits"]["cosine_reverse"]
            tables["fits"].setdefault(denoiser, {})[name] = fitting["fits"]
    return tables


def schedules_used(ctx, per_network: dict) -> dict:
    """{denoiser: {network: {"source": "fitted" | "calibrated" | "cifar10" | file | "fixed", "values": [...],
    "grid": [...], "fitted_file": path or None}}} for every per-network method."""
    table = {}
    for name, study in per_network.items():
        for denoiser, spec in study["tuned"].items():
            fitting = study["fitting"].get(denoiser)
            schedule = fitting["schedule"] if fitting else None
            if schedule is None:
                schedule = fixed_schedule(ctx, spec)
            table.setdefault(denoiser, {})[name] = {
                "source": fitting["schedule_source"] if fitting else "fixed", "values": list(schedule.values),
                "grid": schedule.sigmas(), "fitted_file": fitting["file"] if fitting else None}
    return table


def fitting_table(fitting: dict, process: str) -> dict:
    """Sweep tables of one network: per method the values swept and, per process, MSE [values][L] against the
    network and the optimal denoiser and the median score cosine; plus the flat keys older versions wrote for the
    PSPC methods (their Tunable legacy_names), on the process the fit uses."""
    table = {"process": process, "methods": {}}
    for denoiser, sweep in fitting.items():
        table["methods"][denoiser] = {"option": sweep["option"], "values": list(sweep["values"]),
                                      **{each: {key: value.tolist() for key, value in tables.items()}
                                         for each, tables in sweep["tables"].items()}}
        legacy = sweep["legacy_names"]
        if legacy:
            values_key, prefix = legacy
            table[values_key] = list(sweep["values"])
            for reference in ("network", "optimal"):
                table[f"{prefix}_mse_vs_{reference}"] = sweep["tables"][process][f"mse_vs_{reference}"].tolist()
    return table


def heatmap_summary(heatmaps: dict) -> dict:
    """Where the heatmaps came from, whether they are the network's own (True; None: the file does not say), their
    spatial extent (pixels holding 90% of the mass) per sigma, and the
    evidence of their convergence when the heatmap file carries it (plain lists; see studies.locality.heatmaps)."""
    return {"source": heatmaps["source"], "command": heatmaps["command"], "n_samples": heatmaps["n_samples"],
            "matches_network": heatmaps.get("matches_network"),
            "extent": {reading: heatmap_extent(heatmaps[reading]).tolist()
                       for reading in READINGS if reading in heatmaps},
            "convergence": {key: value.tolist() if hasattr(value, "tolist") else value
                            for key, value in heatmaps.get("convergence", {}).items()}}


def paper_checks(results: dict, name: str) -> dict:
    """The paper's claims (issue 6, "what the results should show") read off our numbers for one network.

    Claims made of PSPC in the paper are checked for every analytical denoiser other than the optimal one (keys
    kept from when PSPC was all the study ran)."""
    sigmas = results["sigmas"]
    forward = results["network_vs_optimal"]["forward"][name]
    peak = int(np.argmax([-np.inf if value is None else value for value in forward]))
    mse_at_peak = {label: values[peak] for label, values in results["forward"]["mse"][name].items()}
    vs_optimal = {label: values[peak] for label, values in results["forward"]["mse_vs_optimal"][name].items()}
    denoisers = analytical(mse_at_peak)
    local = [label for label in denoisers if label != "optimal"]
    reverse = results["network_vs_optimal"]["reverse"][name]
    checks = {
        "peak_sigma_forward": sigmas[peak],
        "peak_sigma_reverse": sigmas[int(np.argmax([-np.inf if value is None else value for value in reverse]))],
        "rise_and_fall_forward": bool(forward[0] < forward[peak] and forward[-1] < forward[peak]),
        "ranking_at_peak_forward": results["ranking"]["forward"][name]["at_peak"],
        "ranking_at_peak_reverse": results["ranking"]["reverse"][name]["at_peak"],
        "closest_by_range": {process: {span: table["order"][0] if table["order"] else None
                                       for span, table in results["ranking"][process][name]["by_range"].items()}
                             for process in PROCESSES},
        "pspc_deviates_like_network_at_peak": {
            label: bool(mse_at_peak[label] < vs_optimal[label] and mse_at_peak[label] < vs_optimal["network"])
            for label in local if None not in (mse_at_peak[label], vs_optimal[label], vs_optimal["network"])},
        "networks_closer_to_each_other_than_to_optimal_at_peak": {
            label: bool(mse_at_peak[label] < vs_optimal["network"]) for label in mse_at_peak
            if label.startswith("network:")},
    }
    cosine = results["similarity"].get("pixel_cosine", {}).get(name, {})
    if "optimal" in cosine:
        checks["pspc_samples_closer_than_optimal_samples"] = {
            label: bool(cosine[label] > cosine["optimal"]) for label in analytical(cosine) if label != "optimal"}
    return checks
