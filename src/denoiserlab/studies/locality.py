"""The locality study of Niedoba et al. 2025 ("Towards a mechanistic explanation of diffusion model
generalization") on any dataset and network(s): `run_locality_study(config, out)`, or
`denoiserlab study CONFIG.toml --out DIR`.

Steps (each cached under DIR/stages/, see `studies.cache`; a rerun resumes where it stopped):
1. evaluation sets: forward pairs per sigma, and each network's Heun trajectory from shared noise (reverse);
2. network vs optimal denoiser per sigma, forward and reverse (paper fig. 2);
3. gradient heatmaps of each network per sigma (eq. 8; or read from a heatmap file);
4. schedule fitting: PSPC-Square patch sizes and PSPC-Flex thresholds swept on a separate forward set, the best per
   sigma against the network saved as schedule files under DIR/schedules/ (paper figs. 4, 10, 12);
5. comparison of every configured denoiser (and the other networks) with each network, forward and reverse:
   MSE per element, MSE vs the optimal denoiser, r^2 and Pearson r (mean and median over samples) (fig. 7);
6. samples of every method from the shared noise, their similarity to each network's samples and their distance
   to the nearest training image (figs. 1, 8, 9);
7. DIR/results.json, DIR/config.toml (resolved), DIR/report.html and DIR/figures/*.png.

results.json nesting (one entry per network, always, even for one network; `<method>` is a registry denoiser name,
e.g. "optimal", "pspc_square", or "network:<other network>"):
    sigmas: [L] high -> low;  networks: [names]
    forward / reverse: {"mse" | "mse_vs_optimal": {<network>: {<method>: [L]}},
                        "r2" | "pearson_r": {<network>: {<method>: {"mean": [L], "median": [L]}}}}
    network_vs_optimal: {"forward" | "reverse": {<network>: [L]}}
    fitted_schedules: {"pspc_square" | "pspc_flex": {<network>: [L]}};  schedules_used: {<denoiser>: {<network>: ...}}
    fitting: {<network>: {"patch_sizes", "square_mse_vs_network" [S][L], "square_mse_vs_optimal", "thresholds",
              "flex_mse_vs_network" [T][L], "flex_mse_vs_optimal"}}
    heatmaps: {<network>: {"source", "command", "n_samples", "extent": {<reading>: [L]}}}
    similarity: {<metric>: {<network>: {<method>: mean}}}  (metrics pixel_cosine, ssim, feature_cosine if a model)
    similarity_per_sample: {<metric>: {<network>: {<method>: [R]}}}
    nearest_neighbour: {<network>: {<method or "network">: mean distance}}, nearest_neighbour_per_sample likewise
    checks: {<network>: the paper's claims evaluated on our numbers};  timings_s: {<stage>: seconds, "total": s}
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.analysis.feature_model import feature_encoder
from denoiserlab.atomic import write_json
from denoiserlab.config import to_dict
from denoiserlab.denoisers import load_schedule
from denoiserlab.denoisers.gaussian import check_rank
from denoiserlab.errors import DenoiserLabError
from denoiserlab.outputs import check_output_folder, check_resolved_config, write_resolved_config
from denoiserlab.studies.cache import StageCache
from denoiserlab.studies.locality_config import SCHEDULED_DENOISERS, LocalityStudyConfig
from denoiserlab.studies.locality_fitting import (
    SCHEDULE_KINDS,
    best_per_sigma,
    mse_per_sigma,
    save_schedule,
    schedule_from_values,
)
from denoiserlab.studies.locality_heatmaps import READINGS, heatmaps_on_grid, read_heatmaps_file, save_heatmaps_file
from denoiserlab.studies.locality_inputs import (
    LoadedNetwork,
    build_denoiser,
    check_image_shape,
    heatmaps_path,
    load_network,
    load_training_data,
    study_data_options,
)
from denoiserlab.studies.locality_metrics import comparison_per_sigma
from denoiserlab.studies.locality_results import assemble_results, sample_numbers
from denoiserlab.studies.locality_stages import (
    StudyContext,
    chosen_schedule,
    forward_set_key,
    make_scheduled_denoiser,
    reverse_set_key,
    stage_flex_sweep,
    stage_forward_set,
    stage_heatmaps,
    stage_outputs,
    stage_reverse_set,
    stage_samples,
    stage_square_sweep,
    square_sweep_mse,
)


@dataclass
class Method:
    label: str  # name in results ("optimal", "pspc_square", "network:dit", ...)
    cache_label: str  # name in stage files (per-network PSPC denoisers carry "@<network>")
    key: dict  # cache key of the method itself
    make: Callable  # () -> den(x, sigma)


def run_locality_study(config: LocalityStudyConfig, out: str | Path, feature_model: str | None = None,
                       command: str | None = None, write_report: bool = True) -> dict:
    """Run (or resume) the study; writes results.json, config.toml, schedules, heatmaps and (unless write_report
    is False, e.g. in programmatic sweeps) the figures and report.html. Returns the results.json table."""
    started = time.perf_counter()
    features = feature_encoder(feature_model or config.similarity.feature_model, config.device)  # fails early
    ctx = open_study(config, Path(out))
    forward, fit = stage_forward_set(ctx), stage_forward_set(ctx, fitting=True)
    shared = shared_methods(ctx)
    per_network = {name: study_network(ctx, network, forward, fit, shared) for name, network in ctx.networks.items()}
    samples = {name: network_samples(ctx, name, per_network[name]) for name in ctx.networks}
    numbers = sample_numbers(samples, ctx.data.images, config.similarity.ssim_window, features)
    results = assemble_results(ctx, per_network, numbers, feature_model or config.similarity.feature_model,
                               command or " ".join(sys.argv), time.perf_counter() - started)
    write_json(ctx.out / "results.json", results)
    if not write_report:
        return results
    from denoiserlab.report.locality import write_locality_report

    write_locality_report(results, {name: {"samples": samples[name], "heatmaps": per_network[name]["heatmaps"]}
                                    for name in ctx.networks}, ctx.out)
    return results


def open_study(config: LocalityStudyConfig, out: Path) -> StudyContext:
    """Check every input, load the data and networks, then (nothing is written before) open the stage cache and
    write the resolved config. A config.toml in `out` that denoiserlab did not write (say, the config given) is
    never replaced: the study refuses to start instead."""
    check_output_folder(out)
    check_resolved_config(out / "config.toml", to_dict(config))
    for name in SCHEDULED_DENOISERS:
        if name in config.denoisers and config.denoisers[name].get("schedule", "fitted") != "fitted":
            load_schedule(config.denoisers[name]["schedule"], SCHEDULE_KINDS[name])  # the file parses
    networks = {network.name: load_network(network, config.device) for network in config.networks}
    data = load_training_data(study_data_options(config.data, networks))
    image_shape = tuple(data.images.shape[1:])
    for network in networks.values():
        check_image_shape(network, image_shape)
        if network.config.heatmaps is not None:  # the file reads and covers the grid
            heatmaps_on_grid(read_heatmaps_file(heatmaps_path(network.config.heatmaps)), config.sigmas.grid(),
                             image_shape, network.config.heatmaps)
    rank = config.denoisers.get("gaussian", {}).get("rank")
    if rank is not None:
        check_rank(rank, math.prod(image_shape))
    write_resolved_config(out / "config.toml", to_dict(config))
    return StudyContext(config, out, StageCache(out), data, config.sigmas.grid(), networks)


def shared_methods(ctx: StudyContext) -> dict[str, Method]:
    """The configured denoisers without a fitted schedule (the same for every network)."""
    methods = {}
    for name, options in ctx.config.denoisers.items():
        if name not in SCHEDULED_DENOISERS:
            key = {"name": name, "options": options, "data": ctx.data.key}
            methods[name] = Method(name, name, key, lambda n=name, o=options: build_denoiser(
                n, o, ctx.data))
    return methods


def network_method(network: LoadedNetwork) -> Method:
    return Method(f"network:{network.config.name}", f"network:{network.config.name}", network.key,
                  lambda: network.module)


def outputs_of(ctx: StudyContext, method: Method, set_name: str, set_key: dict, z: Tensor) -> Tensor:
    return stage_outputs(ctx, set_name, set_key, z, method.cache_label, method.key, method.make)


def study_network(ctx: StudyContext, network: LoadedNetwork, forward: dict, fit: dict,
                  shared: dict[str, Method]) -> dict:
    """Steps 1-5 for one network: its sets, heatmaps, fitted schedules and comparison tables."""
    name = network.config.name
    reverse = stage_reverse_set(ctx, network)
    own = network_method(network)
    forward_key, fit_key = forward_set_key(ctx), forward_set_key(ctx, fitting=True)
    net_forward = outputs_of(ctx, own, "forward", forward_key, forward["z"])
    net_fit = outputs_of(ctx, own, "fit", fit_key, fit["z"])
    optimal_fit = outputs_of(ctx, shared["optimal"], "fit", fit_key, fit["z"])
    heatmaps = stage_heatmaps(ctx, network)
    keep_heatmaps_file(ctx, name, heatmaps)
    fitting = fit_schedules(ctx, network, heatmaps, fit["z"], {"network": net_fit, "optimal": optimal_fit})
    methods = {**shared, **scheduled_methods(ctx, name, fitting, heatmaps),
               **{f"network:{other}": network_method(loaded) for other, loaded in ctx.networks.items() if other != name}}
    sets = {"forward": ("forward", forward_key, forward["z"], net_forward),
            "reverse": (f"reverse-{name}", reverse_set_key(ctx, network), reverse["z"], reverse["network"])}
    tables = {process: comparison_tables(ctx, methods, *set_) for process, set_ in sets.items()}
    return {"samples": reverse["samples"], "heatmaps": heatmaps, "fitting": fitting, "methods": methods,
            "tables": tables}


def keep_heatmaps_file(ctx: StudyContext, name: str, heatmaps: dict) -> None:
    """Write computed heatmaps to DIR/heatmaps/<network>.npz (float16), ready to ship, once."""
    path = ctx.out / "heatmaps" / f"{name}.npz"
    if heatmaps["source"] == "computed" and not path.exists():
        heatmap_config = ctx.config.heatmaps
        command = (f"{' '.join(sys.argv)}  # heatmaps of network {name!r}: n_samples={heatmap_config.n_samples},"
                   f" seed={ctx.config.evaluation.seed}")
        save_heatmaps_file(path, {key: heatmaps[key] for key in ("sigmas", "n_samples", *READINGS)}, command)


def fit_schedules(ctx: StudyContext, network: LoadedNetwork, heatmaps: dict, fit_z: Tensor,
                  references: dict[str, Tensor]) -> dict:
    """Step 4: sweep tables and fitted schedules (saved as files) for the PSPC denoisers in the config."""
    fitting, name = {}, network.config.name
    if "pspc_square" in ctx.config.denoisers:
        sweep = stage_square_sweep(ctx, fit_z)
        square = {reference: square_sweep_mse(sweep, outputs) for reference, outputs in references.items()}
        fitting["pspc_square"] = {"values": sweep["patch_sizes"], "mse": square,
                                  "fitted": best_per_sigma(square["network"], sweep["patch_sizes"])}
    if "pspc_flex" in ctx.config.denoisers:
        flex = stage_flex_sweep(ctx, network, heatmaps, fit_z, references)
        thresholds = list(ctx.config.fitting.thresholds)
        fitting["pspc_flex"] = {"values": thresholds, "mse": flex, "fitted": best_per_sigma(flex["network"], thresholds)}
    for denoiser, table in fitting.items():
        fitted = schedule_from_values(SCHEDULE_KINDS[denoiser], table["fitted"], ctx.config.sigmas)
        table["file"] = str(save_schedule(fitted, ctx.out / "schedules" / f"{name}-{denoiser}.toml"))
        table["schedule"], table["schedule_source"] = chosen_schedule(ctx, denoiser, fitted)
    return fitting


def scheduled_methods(ctx: StudyContext, network_name: str, fitting: dict, heatmaps: dict) -> dict[str, Method]:
    """PSPC-Square / PSPC-Flex for one network, with the schedule the comparison uses (fitted unless fixed)."""
    methods = {}
    for denoiser, table in fitting.items():
        key = {"name": denoiser, "options": ctx.config.denoisers[denoiser], "data": ctx.data.key,
               "schedule": table["schedule"].to_dict()}
        if denoiser == "pspc_flex":
            key.update(heatmaps=heatmaps["key"], reading=ctx.config.heatmaps.reading)
        methods[denoiser] = Method(denoiser, f"{denoiser}@{network_name}", key,
                                   make_scheduled_denoiser(ctx, denoiser, table["schedule"], heatmaps))
    return methods


def comparison_tables(ctx: StudyContext, methods: dict[str, Method], set_name: str, set_key: dict, z: Tensor,
                      reference: Tensor) -> dict:
    """Steps 2 and 5 on one set: every method against the network's outputs `reference` and against the optimal
    denoiser (outputs loaded one method at a time, so memory holds three output sets at most)."""
    optimal = outputs_of(ctx, methods["optimal"], set_name, set_key, z)
    tables = {"mse": {}, "r2": {}, "pearson_r": {}, "mse_vs_optimal": {"network": mse_per_sigma(reference, optimal).tolist()}}
    for label, method in methods.items():
        outputs = optimal if label == "optimal" else outputs_of(ctx, method, set_name, set_key, z)
        table = comparison_per_sigma(outputs, reference)
        for name in ("mse", "r2", "pearson_r"):
            tables[name][label] = table[name]
        tables["mse_vs_optimal"][label] = mse_per_sigma(outputs, optimal).tolist()
    return tables


def network_samples(ctx: StudyContext, name: str, study: dict) -> dict[str, Tensor]:
    """Step 6: {"network": its samples, <method>: that method's samples from the same noise} (other networks'
    samples are their own trajectories' ends)."""
    samples = {"network": study["samples"]}
    for label, method in study["methods"].items():
        if label.startswith("network:"):
            samples[label] = stage_reverse_set(ctx, ctx.networks[label.split(":", 1)[1]])["samples"]
        else:
            samples[label] = stage_samples(ctx, method.cache_label, method.key, method.make)
    return samples

