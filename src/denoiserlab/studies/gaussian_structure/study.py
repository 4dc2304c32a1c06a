"""The hidden-Gaussian-structure study of Li et al. 2024 ("Understanding generalizability of diffusion models
requires rethinking the hidden Gaussian structure") on trained networks: `run_gaussian_study(config, out)`, or
`denoiserlab gaussian-study CONFIG.toml --out DIR`.

Each network is compared with the Gaussian denoiser (empirical mean and covariance, eq. 6) and the optimal
denoiser (eq. 5) of its own training set (the [data] table, else the network's recorded training_data), on the
EDM 10-step grid. Steps, each cached under DIR/stages/ (studies.common.cache; a rerun resumes where it stopped):
1. linearity score per sigma (eqs. 11-12, cosine and NMSE, default alpha and an alpha sweep) of every network and
   of every configured analytical denoiser (those on the first network's training set);
2. linear distillation per sigma (eq. 9; exact least squares by default, Adam as in the paper with a loss curve)
   and its comparison with the Gaussian map: weight NMSE, singular-vector alignment, spectra, output RMSE;
3. score-approximation error per sigma (eq. 10): network vs distilled linear, vs Gaussian, vs optimal;
4. Gaussian sampling: the closed-form Gaussian trajectory (eq. 7) from the same initial noise as the network's
   Euler sampler on the grid, per-step NMSE between the two;
5. generalization score (eq. 14) of K network samples (shared seeded noise);
6. strong generalization: similarity of two networks' samples from the same noise (pairs from the config);
7. sweeps: for each checkpoint (training-set size, width or kimg), generalization score and score errors vs the
   Gaussian and optimal denoisers at the middle sigma (or configured grid indices);
8. DIR/results.json, DIR/config.toml (resolved), DIR/arrays.safetensors (images for figures, written by
   studies.common.cache.write_value: safetensors plus JSON, no pickle), DIR/figures/*.png and DIR/report.html.

results.json keys ([L]: one value per grid sigma, high -> low; [A]: per swept alpha; <net>: a network name):
    study, version, command, config (resolved table), sigmas [L]
    networks: {<net>: {path, n_parameters, dataset: {name, n_images, image_shape, load_options}}}
    linearity: {alpha, beta, alphas [A], betas [A],
                scores: {<net> | "denoiser:<registry name>": {cosine [L], nmse [L], sweep_cosine [A][L],
                                                              sweep_nmse [A][L] (empty for a denoiser when
                                                              linearity.denoiser_sweep is false)}},
                denoiser_pairs (pairs per sigma of the analytical denoisers),
                denoiser_values: {<registry name>: {option, value, source}} (the tuned value each was measured
                at: "fixed", a named schedule, or the method's "default"),
                skipped: {<registry name>: why it was not measured}}
    distillation: {<net>: {method, weight_nmse [L], weight_nmse_split_half [L] (the NMSE without least-squares
                           noise, from fits on two halves of the draw; NaN for "gd" or too few samples),
                           alignment [L][k] (|cos| of the i-th singular vectors),
                           rmse_linear_vs_gaussian [L], fit_mse [L], spectrum_linear [L][D],
                           spectrum_gaussian [L][D], loss_curves [L][steps] (method "gd" only)}}
    score_error: {<net>: {linear [L], gaussian [L], optimal [L]}}  (RMSE of the network vs each)
    sampling: {<net>: {sigmas [L + 1] (ending in 0), nmse [L + 1] (network Euler vs Gaussian closed form, per
               state), nmse_gaussian_euler [L + 1] (Gaussian Euler vs its closed form), final_nmse}}
    generalization: {<net>: {score, k, nearest_distance_mean, memorized_fraction (nearest / second-nearest
                    training-image distance < 1/3), heldout_score (held-out images' score against the same
                    training set), calibrated_score (score / heldout_score: 1 like new real images, 0 copies),
                    verdict ("memorizes" | "partly memorizes" | "generalizes", from the copies and the calibrated
                    score: analysis.memorization_verdict), generalizes (verdict == "generalizes"),
                    paper_threshold_generalizes (the paper's CIFAR-10 rule, score > 0.6)}}
    strong_generalization: [{a, b, n_samples, pixel_cosine, nmse (|a - b|^2 / |b|^2), feature_cosine or null,
                             a_vs_gaussian_pixel_cosine, b_vs_gaussian_pixel_cosine, gaussians_pixel_cosine}]
    sweeps: {sigmas [S] (the sweep's grid points), entries: [{label, kind (n_train | width | kimg), value, path,
             n_train, n_parameters, generalization_score, nearest_distance_mean, memorized_fraction,
             heldout_score, calibrated_score, verdict, generalizes, paper_threshold_generalizes,
             score_error_gaussian [S], score_error_optimal [S]}]}
    paper: the paper's reference numbers;  checks: {<net>: the paper's claims on our numbers}
    timings_s: {<stage>: seconds (computed now or when first computed), total};
    stages: {computed: [stage names computed by this run], loaded: [stage names loaded from DIR/stages],
             cpu_seconds: {<stage>: process CPU seconds when computed, or null if not recorded}}
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from denoiserlab.analysis.feature_model import feature_encoder
from denoiserlab.atomic import write_json
from denoiserlab.config import to_dict
from denoiserlab.outputs import check_output_folder, write_resolved_config
from denoiserlab.process_group import is_main_process
from denoiserlab.studies.common.cache import StageCache, file_fingerprint, key_hash, write_value
from denoiserlab.studies.common.inputs import heatmaps_path
from denoiserlab.studies.common.methods import (
    FITTED_SOURCES,
    MethodSpec,
    build_method,
    default_value,
    method_data_key,
    method_spec,
    named_schedule,
)
from denoiserlab.studies.gaussian_structure.config import GaussianStudyConfig
from denoiserlab.studies.gaussian_structure.inputs import StudyData, StudyNetwork, load_study_network
from denoiserlab.studies.gaussian_structure.measures import samples_similarity
from denoiserlab.studies.gaussian_structure.results import (
    assemble_results,
    network_arrays,
    shown_samples,
    strong_generalization_row,
    sweep_row,
)
from denoiserlab.studies.gaussian_structure.stages import (
    GaussianStudyContext,
    denoiser_linearity_config,
    stage_distillation,
    stage_generalization,
    stage_linearity,
    stage_score_errors,
    stage_trajectory,
)
from denoiserlab.studies.locality.heatmaps import check_heatmaps_network, read_heatmaps_file
from denoiserlab.validation import check_device

ARRAYS_FILE = "arrays.safetensors"  # images the report draws (studies.common.cache.write_value: no pickle)
HEATMAP_READING = "same_channel"  # the heatmap reading that builds masks for the analytical denoisers


def run_gaussian_study(config: GaussianStudyConfig, out: str | Path, command: str | None = None,
                       progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the study; writes results.json, config.toml, arrays.safetensors, figures and report.html.
    `log` gets one line per stage computed."""
    started = time.perf_counter()
    check_device(config.device, "device")  # a GPU this machine lacks fails before anything is written
    ctx = open_study(config, Path(out), progress, log)
    datasets: dict[str, StudyData] = {}
    networks = {entry.name: load_study_network(entry.name, entry.path, entry.trust_pickle, entry.options,
                                               config.data, config.device, datasets) for entry in config.networks}
    for entry in config.networks[:1]:  # PSPC-Flex's masks come from the first network's heatmaps: its own
        if entry.heatmaps is not None:
            check_heatmaps_network(read_heatmaps_file(heatmaps_path(entry.heatmaps)),
                                   networks[entry.name].key["fingerprint"], entry.heatmaps, entry.name)
    studies = {name: study_network(ctx, network) for name, network in networks.items()}
    first_data = next(iter(networks.values())).data if networks else None
    denoiser_linearity = {} if first_data is None else analytical_linearity(ctx, first_data)
    sweeps, sweep_images, sweep_studies = study_sweeps(ctx, datasets)
    strong = strong_generalization(ctx, {**networks, **sweep_studies["networks"]},
                                   {**studies, **sweep_studies["studies"]})
    timings = {stage: record["seconds"] for stage, record in ctx.cache.timings.items()}
    timings["total"] = time.perf_counter() - started
    results = assemble_results(config, ctx.sigmas, networks, studies, denoiser_linearity, strong, sweeps, timings,
                               command or " ".join(sys.argv))
    results["stages"] = {"computed": list(ctx.cache.computed),
                         "loaded": [stage for stage, record in ctx.cache.timings.items() if record["cached"]],
                         "cpu_seconds": {stage: record["cpu_seconds"] for stage, record in ctx.cache.timings.items()}}
    if not is_main_process():  # under torchrun rank 0 alone writes the outputs
        return results
    write_json(ctx.out / "results.json", results)
    arrays = {"networks": {name: network_arrays(studies[name], network.data.images,
                                                tuple(network.data.images.shape[1:]))
                           for name, network in networks.items()}, "sweeps": sweep_images}
    write_value(ctx.out / ARRAYS_FILE, arrays)
    from denoiserlab.report.gaussian_structure import write_gaussian_report

    write_gaussian_report(results, arrays, ctx.out)
    return results


def open_study(config: GaussianStudyConfig, out: Path, progress: bool,
               log: Callable[[str], None] | None = None) -> GaussianStudyContext:
    """Write the resolved config (never over a config.toml that denoiserlab did not write, such as the one given)
    and open the stage cache."""
    check_output_folder(out)
    if is_main_process():  # under torchrun rank 0 alone writes the outputs
        write_resolved_config(out / "config.toml", to_dict(config))
    return GaussianStudyContext(config, out, StageCache(out, log, collective=True), config.sigmas.grid(),
                                progress and is_main_process())


def study_network(ctx: GaussianStudyContext, network: StudyNetwork) -> dict:
    """Steps 1-5 for one network."""
    levels = tqdm(range(len(ctx.sigmas)), desc=f"distillation {network.name}", disable=not ctx.progress)
    return {
        "linearity": stage_linearity(ctx, network.name, network.key, network.data, lambda: network.module),
        "distillation": [stage_distillation(ctx, network, level) for level in levels],
        "score_errors": stage_score_errors(ctx, network.name, network.key, network.module, network.data),
        "trajectory": stage_trajectory(ctx, network),
        "generalization": stage_generalization(ctx, network.name, network.key, network.module, network.data),
    }


def analytical_linearity(ctx: GaussianStudyContext, data: StudyData) -> dict:
    """Step 1 for every configured analytical denoiser, on `data` (the first network's training set):
    {"scores": {name: linearity tables}, "values": {name: the tuned value used}, "skipped": {name: reason}}."""
    scores, values, skipped = {}, {}, {}
    heatmaps = first_network_heatmaps(ctx)
    config = denoiser_linearity_config(ctx.config.linearity)
    for name, options in ctx.config.methods().items():
        spec = method_spec(name, options)
        if spec.tunable is not None and spec.tunable.needs and heatmaps is None:
            skipped[name] = (f"needs {list(spec.tunable.needs)}: give the first [[networks]] table a heatmaps file")
            continue
        value, source = linearity_value(spec)
        inputs, inputs_key = heatmaps if spec.tunable is not None and spec.tunable.needs else ({}, {})
        key = {**spec.key, "data": method_data_key(data.training, spec), "value": value_key(value), **inputs_key}
        scores[name] = stage_linearity(ctx, f"denoiser-{name}", key, data, method_factory(spec, data, value, inputs),
                                       config)
        if spec.tunable is not None:
            values[name] = {"option": spec.tunable.name, "value": value_key(value), "source": source}
    return {"scores": scores, "values": values, "skipped": skipped}


def linearity_value(spec: MethodSpec) -> tuple[object, str]:
    """(tuned value or schedule, source) of a method in this study, which fits nothing: the fixed value, the
    schedule the config names, else the method's default value. (None, "") for methods without a tunable."""
    if spec.tunable is None:
        return None, ""
    if spec.fixed is not None:
        return spec.fixed, "fixed"
    if spec.schedule not in FITTED_SOURCES:
        return named_schedule(spec), spec.schedule
    return default_value(spec), "default"


def value_key(value: object) -> object:
    """A tuned value or schedule as plain data (for cache keys and results.json)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def method_factory(spec: MethodSpec, data: StudyData, value: object, inputs: dict) -> Callable:
    return lambda: build_method(spec, data.training, value, inputs)


def first_network_heatmaps(ctx: GaussianStudyContext) -> tuple[dict, dict] | None:
    """(inputs, cache key) of the first network's heatmap file for methods built from heatmaps, or None."""
    spec = ctx.config.networks[0].heatmaps if ctx.config.networks else None
    if spec is None:
        return None
    path = heatmaps_path(spec)
    table = read_heatmaps_file(path)
    return ({"heatmaps": table[HEATMAP_READING].float(), "heatmap_sigmas": table["sigmas"].double()},
            {"heatmaps": {"file": file_fingerprint(path)}, "reading": HEATMAP_READING})


def gaussian_samples(network: StudyNetwork, ctx: GaussianStudyContext, count: int) -> torch.Tensor:
    """Closed-form Gaussian PF-ODE samples (eq. 7) from the generalization noise: [count, C, H, W]."""
    from denoiserlab.diffusion import append_zero, edm_sigmas, standard_noise

    generalization = ctx.config.generalization
    noise = standard_noise((count, *network.data.images.shape[1:]), generalization.seed)  # as generate_samples drew
    grid = append_zero(edm_sigmas(generalization.steps))
    return network.data.denoiser("gaussian").ode_trajectory(noise, grid)[-1].float()


def strong_generalization(ctx: GaussianStudyContext, networks: dict[str, StudyNetwork], studies: dict) -> list:
    """Step 6: per configured pair, similarity of the two networks' samples (same noise), and of each to the
    closed-form samples of its own training set's Gaussian, and of the two Gaussians' samples."""
    pairs = ctx.config.strong_generalization.pairs
    if not pairs:
        return []
    features = feature_encoder(ctx.config.strong_generalization.feature_model, ctx.config.device)
    rows = []
    for a, b in pairs:
        samples_a, samples_b = (studies[name]["generalization"]["samples"] for name in (a, b))
        count = min(len(samples_a), len(samples_b))  # a sweep entry may have fewer (sweeps.k); the noise is shared
        samples_a, samples_b = samples_a[:count], samples_b[:count]
        gaussian_a, gaussian_b = (gaussian_samples(networks[name], ctx, len(samples_a)) for name in (a, b))
        gaussian_similarity = {
            "a_vs_gaussian": samples_similarity(samples_a, gaussian_a, None)["pixel_cosine"],
            "b_vs_gaussian": samples_similarity(samples_b, gaussian_b, None)["pixel_cosine"],
            "gaussians": samples_similarity(gaussian_a, gaussian_b, None)["pixel_cosine"]}
        rows.append(strong_generalization_row(a, b, samples_similarity(samples_a, samples_b, features),
                                              gaussian_similarity))
    return rows


def study_sweeps(ctx: GaussianStudyContext, datasets: dict[str, StudyData]) -> tuple[dict, list[dict], dict]:
    """Step 7: each sweep checkpoint on its own recorded training set (the [data] table when it records none).
    Returns the results table, the images for figures, and {"networks": {label: StudyNetwork}, "studies":
    {label: {"generalization": ...}}} for strong-generalization pairs that name sweep entries."""
    levels = list(ctx.config.sweep_sigma_indices())
    config = replace(ctx.config.generalization, k=ctx.config.sweeps.k or ctx.config.generalization.k)
    rows, images, by_label = [], [], {"networks": {}, "studies": {}}
    for index, entry in enumerate(tqdm(ctx.config.sweeps.entries, desc="sweeps", disable=not ctx.progress)):
        network = load_study_network(f"sweep{index}", entry.path, entry.trust_pickle, entry.options,
                                     ctx.config.data, ctx.config.device, datasets, prefer_recorded=True)
        name = f"sweep-{key_hash(network.key)}"  # entries sharing a checkpoint share its cached stages
        generalization = stage_generalization(ctx, name, network.key, network.module, network.data, config)
        errors = stage_score_errors(ctx, name, network.key, network.module, network.data, levels)
        rows.append(sweep_row(entry, network, generalization, errors))
        images.append(shown_samples(generalization, network.data.images, ctx.config.sweeps.n_samples_shown))
        by_label["networks"][entry.name()] = network
        by_label["studies"][entry.name()] = {"generalization": generalization}
    return {"sigmas": ctx.sigmas[levels], "entries": rows}, images, by_label
