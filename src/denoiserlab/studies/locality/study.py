"""The locality study of Niedoba et al. 2025 ("Towards a mechanistic explanation of diffusion model
generalization") on any dataset and network(s), with every registered analytical denoiser the config names (or all
of them): `run_locality_study(config, out)`, or `denoiserlab study CONFIG.toml --out DIR`.

Steps (each cached under DIR/stages/, see `studies.common.cache`; a rerun resumes where it stopped):
1. evaluation sets: forward pairs per sigma, and each network's Heun trajectory from shared noise (reverse);
2. network vs optimal denoiser per sigma, forward and reverse (paper fig. 2);
3. gradient heatmaps of each network per sigma (eq. 8; or read from a heatmap file);
4. fitting (studies.locality.tuning): every tunable method swept on fitting sets drawn apart from the evaluation
   sets, the network's own reverse trajectories and forward pairs; per sigma the value with the lowest MSE against
   the network (paper sec. 5.1, figs. 4, 10, 12) and the value with the largest median score cosine (Kamb & Ganguli
   2025), saved as schedule files under DIR/schedules/; a method built from heatmaps is also fitted under the other
   heatmap reading when the two differ (several channels), for the comparison of readings;
5. comparison of every configured denoiser (and the other networks) with each network, forward and reverse:
   MSE per element, MSE vs the optimal denoiser, r^2 and Pearson r (mean and median over samples) (fig. 7), and the
   ranking of the denoisers by MSE per sigma, at the peak sigma and per sigma range;
6. samples of every method from the shared noise, their similarity to each network's samples (pixel cosine, SSIM,
   feature cosine, Pearson r as in Kamb & Ganguli's Table 1) and their distance to the nearest training image and
   share of copies (figs. 1, 8, 9);
7. DIR/results.json, DIR/config.toml (resolved), DIR/report.html and DIR/figures/*.png.

results.json nesting (one entry per network, always, even for one network; `<method>` is a registry denoiser name,
e.g. "optimal", "els", or "network:<other network>"; `<denoiser>` a tunable one):
    sigmas: [L] high -> low;  networks: [names];  methods: {<method>: {"tunable", "train_subset", "per_network"}}
    forward / reverse: {"mse" | "mse_vs_optimal": {<network>: {<method>: [L]}},
                        "r2" | "pearson_r": {<network>: {<method>: {"mean": [L], "median": [L]}}}}
    network_vs_optimal: {"forward" | "reverse": {<network>: [L]}}
    fitted_schedules: {<denoiser>: {<network>: [L]}}  (MSE fit on fitting.process: what schedule = "fitted" uses)
    calibrated_schedules: {<denoiser>: {<network>: [L]}}  (Kamb & Ganguli's score-cosine fit, reverse process)
    fits: {<denoiser>: {<network>: {"mse_forward", "mse_reverse", "cosine_reverse": [L]}}}
    schedules_used: {<denoiser>: {<network>: {"source", "values", "grid", "fitted_file"}}}
    fitting: {<network>: {"process": fitting.process, "methods": {<denoiser>: {"option", "values" [S],
              "forward" | "reverse": {"mse_vs_network", "mse_vs_optimal", "score_cosine_median": [S][L]}}},
              plus older flat keys of the PSPC methods ("patch_sizes", "square_mse_vs_network" [S][L],
              "square_mse_vs_optimal", "thresholds", "flex_mse_vs_network", "flex_mse_vs_optimal"; on fitting.process)}}
    ranking: {"forward" | "reverse": {<network>: {"per_sigma": [L][denoisers, closest first], "closest": [L],
              "at_peak": [...] (at the forward process's peak sigma), "peak_sigma", "by_range": {<range>: {"sigmas": [low, high], "order": [...],
              "geometric_mean_mse": {<method>: value}}}}}}
    heatmaps: {<network>: {"source", "command", "n_samples", "extent": {<reading>: [L]}}}
    heatmap_readings: {<network>: {"used": heatmaps.reading, "equal": the two readings' maps are identical (one
              channel; null: the heatmaps hold one reading), "fitted": {<denoiser>: {<reading>: [L]}} (the MSE fit
              on fitting.process of each method built from heatmaps, under each reading), "fit_mse": {<denoiser>:
              {<reading>: [L]}} (its MSE per element to the network at the fitted value)}}
    similarity: {<metric>: {<network>: {<method>: mean}}}  (metrics pixel_cosine, ssim, feature_cosine if a model)
    similarity_per_sample: {<metric>: {<network>: {<method>: [R]}}}
    sample_pearson_r: {<network>: {<method>: {"median", "mean", "r2_median", "n"}}}, sample_pearson_r_per_sample
    nearest_neighbour: {<network>: {<method or "network">: mean distance}}, nearest_neighbour_per_sample likewise
    memorized_fraction: {<network>: {<method or "network">: share of samples copying a training image}}
    papers: the peer papers' claims and numbers;  checks: {<network>: the paper's claims evaluated on our numbers}
    timings_s: {<stage>: seconds, "total": s};  stages: {<stage>: {"seconds", "cpu_seconds", "cached"}}
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from denoiserlab.analysis.feature_model import feature_encoder
from denoiserlab.atomic import write_json
from denoiserlab.config import to_dict
from denoiserlab.denoisers.gaussian import check_rank
from denoiserlab.outputs import check_output_folder, check_resolved_config, write_resolved_config
from denoiserlab.process_group import is_main_process
from denoiserlab.studies.common.cache import StageCache
from denoiserlab.studies.common.inputs import (
    LoadedNetwork,
    check_image_shape,
    heatmaps_path,
    load_network,
    load_training_data,
    study_data_options,
)
from denoiserlab.studies.common.methods import (
    FITTED_SOURCES,
    MethodSpec,
    build_method,
    method_data_key,
    method_spec,
    named_schedule,
)
from denoiserlab.studies.locality.config import LocalityStudyConfig
from denoiserlab.studies.locality.fitting import mse_per_sigma
from denoiserlab.studies.locality.heatmaps import (READINGS, check_heatmaps_network, heatmaps_on_grid,
                                                   read_heatmaps_file, save_heatmaps_file)
from denoiserlab.studies.locality.metrics import comparison_per_sigma
from denoiserlab.studies.locality.results import assemble_results, sample_numbers
from denoiserlab.studies.locality.stages import (
    StudyContext,
    forward_set_key,
    reverse_set_key,
    stage_forward_set,
    stage_heatmaps,
    stage_outputs,
    stage_reverse_set,
    stage_samples,
)
from denoiserlab.studies.locality.tuning import (FitSet, fit_method, fit_readings, fixed_schedule, method_inputs,
                                                 tuned_factory)
from denoiserlab.validation import check_device


@dataclass
class Method:
    label: str  # name in results ("optimal", "els", "network:dit", ...)
    cache_label: str  # name in stage files (per-network methods carry "@<network>")
    key: dict  # cache key of the method itself
    make: Callable  # () -> den(x, sigma)


def run_locality_study(config: LocalityStudyConfig, out: str | Path, feature_model: str | None = None,
                       command: str | None = None, write_report: bool = True,
                       log: Callable[[str], None] | None = None, progress: bool = True) -> dict:
    """Run (or resume) the study; writes results.json, config.toml, schedules, heatmaps and (unless write_report
    is False, e.g. in programmatic sweeps) the figures and report.html. `log` gets one line per stage computed;
    `progress` shows progress bars. Returns the results.json table."""
    started = time.perf_counter()
    check_device(config.device, "device")  # a GPU this machine lacks fails before any work
    features = feature_encoder(feature_model or config.similarity.feature_model, config.device)  # fails early
    ctx = open_study(config, Path(out), log, progress)
    specs = {name: method_spec(name, options) for name, options in config.methods().items()}
    forward, fit = stage_forward_set(ctx), stage_forward_set(ctx, fitting=True)
    shared = {name: shared_method(ctx, spec) for name, spec in specs.items() if not spec.per_network}
    per_network = {name: study_network(ctx, network, forward, fit, specs, shared)
                   for name, network in ctx.networks.items()}
    samples = {name: network_samples(ctx, name, per_network[name]) for name in ctx.networks}
    numbers = sample_numbers(samples, ctx.data.images, config.similarity.ssim_window, features)
    results = assemble_results(ctx, specs, per_network, numbers, feature_model or config.similarity.feature_model,
                               command or " ".join(sys.argv), time.perf_counter() - started)
    if not is_main_process():  # under torchrun rank 0 alone writes the outputs
        return results
    write_json(ctx.out / "results.json", results)
    if not write_report:
        return results
    from denoiserlab.report.locality import write_locality_report

    write_locality_report(results, {name: {"samples": samples[name], "heatmaps": per_network[name]["heatmaps"]}
                                    for name in ctx.networks}, ctx.out)
    return results


def open_study(config: LocalityStudyConfig, out: Path, log: Callable[[str], None] | None = None,
               progress: bool = True) -> StudyContext:
    """Check every input, load the data and networks, then (nothing is written before) open the stage cache and
    write the resolved config. A config.toml in `out` that denoiserlab did not write (say, the config given) is
    never replaced: the study refuses to start instead."""
    check_output_folder(out)
    check_resolved_config(out / "config.toml", to_dict(config))
    specs = [method_spec(name, options) for name, options in config.methods().items()]
    for spec in specs:
        if spec.fits and spec.schedule not in FITTED_SOURCES:
            named_schedule(spec)  # the file parses
    networks = {network.name: load_network(network, config.device) for network in config.networks}
    data = load_training_data(study_data_options(config.data, networks))
    image_shape = tuple(data.images.shape[1:])
    for network in networks.values():
        check_image_shape(network, image_shape)
        if network.config.heatmaps is not None:  # the file reads, covers the grid and is this network's
            table = read_heatmaps_file(heatmaps_path(network.config.heatmaps))
            heatmaps_on_grid(table, config.sigmas.grid(), image_shape, network.config.heatmaps)
            check_heatmaps_network(table, network.key["fingerprint"], network.config.heatmaps, network.config.name)
    for spec in specs:
        if "rank" in spec.options and spec.options["rank"] is not None:
            check_rank(spec.options["rank"], image_shape[0] * image_shape[1] * image_shape[2])
    if is_main_process():
        write_resolved_config(out / "config.toml", to_dict(config))
    return StudyContext(config, out, StageCache(out, log, collective=True), data, config.sigmas.grid(), networks,
                        progress and is_main_process())


def shared_method(ctx: StudyContext, spec: MethodSpec) -> Method:
    """A method that is the same for every network (nothing fitted, no network input)."""
    key = {**spec.key, "data": method_data_key(ctx.data, spec)}
    return Method(spec.name, spec.name, key, lambda: build_method(spec, ctx.data))


def network_method(network: LoadedNetwork) -> Method:
    return Method(f"network:{network.config.name}", f"network:{network.config.name}", network.key,
                  lambda: network.module)


def outputs_of(ctx: StudyContext, method: Method, set_name: str, set_key: dict, z: Tensor) -> Tensor:
    return stage_outputs(ctx, set_name, set_key, z, method.cache_label, method.key, method.make)


def study_network(ctx: StudyContext, network: LoadedNetwork, forward: dict, fit: dict, specs: dict[str, MethodSpec],
                  shared: dict[str, Method]) -> dict:
    """Steps 1-5 for one network: its sets, heatmaps, fitted schedules and comparison tables."""
    name = network.config.name
    reverse = stage_reverse_set(ctx, network)
    own = network_method(network)
    forward_key = forward_set_key(ctx)
    net_forward = outputs_of(ctx, own, "forward", forward_key, forward["z"])
    heatmaps = stage_heatmaps(ctx, network)
    keep_heatmaps_file(ctx, name, heatmaps)
    fitted = [spec for spec in specs.values() if spec.fits]
    fit_sets = fitting_sets(ctx, network, fit, shared) if fitted else {}
    fitting = {spec.name: fit_method(ctx, name, spec, fit_sets, heatmaps) for spec in fitted}
    readings = fit_readings(ctx, name, fitted, fit_sets, heatmaps, fitting)
    methods = {label: shared[label] if label in shared else tuned_method(ctx, name, spec, fitting, heatmaps)
               for label, spec in specs.items()}
    methods.update({f"network:{other}": network_method(loaded) for other, loaded in ctx.networks.items()
                    if other != name})
    sets = {"forward": ("forward", forward_key, forward["z"], net_forward),
            "reverse": (f"reverse-{name}", reverse_set_key(ctx, network), reverse["z"], reverse["network"])}
    tables = {process: comparison_tables(ctx, methods, *set_) for process, set_ in sets.items()}
    return {"samples": reverse["samples"], "heatmaps": heatmaps, "fitting": fitting, "readings": readings,
            "methods": methods, "tables": tables,
            "tuned": {label: spec for label, spec in specs.items() if spec.per_network}}


def fitting_sets(ctx: StudyContext, network: LoadedNetwork, fit: dict, shared: dict[str, Method]) -> dict[str, FitSet]:
    """The two fitting sets of a network with the references there: its own reverse trajectories (other noise
    than the evaluation's) and the forward fitting pairs (shared by all networks)."""
    name = network.config.name
    own = network_method(network)
    fit_key = forward_set_key(ctx, fitting=True)
    fit_reverse = stage_reverse_set(ctx, network, fitting=True)
    reverse_key = reverse_set_key(ctx, network, fitting=True)
    reverse_name = f"fit_reverse-{name}"
    return {
        "reverse": FitSet(reverse_name, reverse_key, fit_reverse["z"],
                          {"network": fit_reverse["network"],
                           "optimal": outputs_of(ctx, shared["optimal"], reverse_name, reverse_key, fit_reverse["z"])},
                          per_network=True),
        "forward": FitSet("fit", fit_key, fit["z"],
                          {"network": outputs_of(ctx, own, "fit", fit_key, fit["z"]),
                           "optimal": outputs_of(ctx, shared["optimal"], "fit", fit_key, fit["z"])},
                          per_network=False),
    }


def tuned_method(ctx: StudyContext, network: str, spec: MethodSpec, fitting: dict, heatmaps: dict) -> Method:
    """A per-network method: fitted to the network (the schedule its `schedule` key chooses) or built from the
    network's heatmaps with a fixed value."""
    inputs, inputs_key = method_inputs(ctx, spec, heatmaps)
    schedule = fitting[spec.name]["schedule"] if spec.fits else fixed_schedule(ctx, spec)
    value = schedule if spec.fits else spec.fixed
    key = {**spec.key, "data": method_data_key(ctx.data, spec), "schedule": schedule.to_dict(), **inputs_key}
    return Method(spec.name, f"{spec.name}@{network}", key, tuned_factory(ctx, spec, value, inputs))


def keep_heatmaps_file(ctx: StudyContext, name: str, heatmaps: dict) -> None:
    """Write computed heatmaps to DIR/heatmaps/<network>.npz (float16), ready to ship, once."""
    path = ctx.out / "heatmaps" / f"{name}.npz"
    if heatmaps["source"] == "computed" and is_main_process() and not path.exists():
        heatmap_config = ctx.config.heatmaps
        command = (f"{' '.join(sys.argv)}  # heatmaps of network {name!r}: n_samples={heatmap_config.n_samples},"
                   f" seed={ctx.config.evaluation.seed}")
        save_heatmaps_file(path, {key: heatmaps[key] for key in ("sigmas", "n_samples", *READINGS)}, command,
                           ctx.networks[name].key["fingerprint"])


def comparison_tables(ctx: StudyContext, methods: dict[str, Method], set_name: str, set_key: dict, z: Tensor,
                      reference: Tensor) -> dict:
    """Steps 2 and 5 on one set: every method against the network's outputs `reference` and against the optimal
    denoiser (outputs loaded one method at a time, so memory holds three output sets at most)."""
    optimal = outputs_of(ctx, methods["optimal"], set_name, set_key, z)
    tables = {"mse": {}, "r2": {}, "pearson_r": {},
              "mse_vs_optimal": {"network": mse_per_sigma(reference, optimal).tolist()}}
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
