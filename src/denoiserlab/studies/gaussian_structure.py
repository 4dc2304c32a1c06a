"""The hidden-Gaussian-structure study of Li et al. 2024 ("Understanding generalizability of diffusion models
requires rethinking the hidden Gaussian structure") on trained networks: `run_gaussian_study(config, out)`, or
`denoiserlab gaussian-study CONFIG.toml --out DIR`.

Each network is compared with the Gaussian denoiser (empirical mean and covariance, eq. 6) and the optimal
denoiser (eq. 5) of its own training set (the [data] table, else the network's recorded training_data), on the
EDM 10-step grid. Steps, each cached under DIR/stages/ (studies.cache; a rerun resumes where it stopped):
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
8. DIR/results.json, DIR/config.toml (resolved), DIR/arrays.pt (images for figures), DIR/figures/*.png and
   DIR/report.html.

results.json keys ([L]: one value per grid sigma, high -> low; [A]: per swept alpha; <net>: a network name):
    study, version, command, config (resolved table), sigmas [L]
    networks: {<net>: {path, n_parameters, dataset: {name, n_images, image_shape, load_options}}}
    linearity: {alpha, beta, alphas [A], betas [A],
                scores: {<net> | "denoiser:<registry name>": {cosine [L], nmse [L], sweep_cosine [A][L],
                                                              sweep_nmse [A][L]}}}
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
    stages: {computed: [stage names computed by this run], loaded: [stage names loaded from DIR/stages]}
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from denoiserlab.analysis.feature_model import feature_encoder
from denoiserlab.atomic import atomic_write, write_json
from denoiserlab.config import to_dict
from denoiserlab.outputs import check_output_folder, write_resolved_config
from denoiserlab.studies.cache import StageCache, key_hash
from denoiserlab.studies.gaussian_structure_config import GaussianStudyConfig
from denoiserlab.studies.gaussian_structure_inputs import StudyData, StudyNetwork, load_study_network
from denoiserlab.studies.gaussian_structure_measures import samples_similarity
from denoiserlab.studies.gaussian_structure_results import (
    assemble_results,
    network_arrays,
    shown_samples,
    strong_generalization_row,
    sweep_row,
)
from denoiserlab.studies.gaussian_structure_stages import (
    GaussianStudyContext,
    stage_distillation,
    stage_generalization,
    stage_linearity,
    stage_score_errors,
    stage_trajectory,
)


def run_gaussian_study(config: GaussianStudyConfig, out: str | Path, command: str | None = None,
                       progress: bool = True) -> dict:
    """Run (or resume) the study; writes results.json, config.toml, arrays.pt, figures and report.html."""
    started = time.perf_counter()
    ctx = open_study(config, Path(out), progress)
    datasets: dict[str, StudyData] = {}
    networks = {entry.name: load_study_network(entry.name, entry.path, entry.trust_pickle, entry.options,
                                               config.data, config.device, datasets) for entry in config.networks}
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
                         "loaded": [stage for stage, record in ctx.cache.timings.items() if record["cached"]]}
    write_json(ctx.out / "results.json", results)
    arrays = {"networks": {name: network_arrays(studies[name], network.data.images,
                                                tuple(network.data.images.shape[1:]))
                           for name, network in networks.items()}, "sweeps": sweep_images}
    atomic_write(ctx.out / "arrays.pt", lambda temp: torch.save(arrays, temp))
    from denoiserlab.report.gaussian_structure import write_gaussian_report

    write_gaussian_report(results, arrays, ctx.out)
    return results


def open_study(config: GaussianStudyConfig, out: Path, progress: bool) -> GaussianStudyContext:
    """Write the resolved config (never over a config.toml that denoiserlab did not write, such as the one given)
    and open the stage cache."""
    check_output_folder(out)
    write_resolved_config(out / "config.toml", to_dict(config))
    return GaussianStudyContext(config, out, StageCache(out), config.sigmas.grid(), progress)


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
    """Step 1 for every configured analytical denoiser, on `data`."""
    return {name: stage_linearity(ctx, f"denoiser-{name}", {"denoiser": name, "options": options}, data,
                                  lambda n=name, o=options: data.denoiser(n, o))
            for name, options in ctx.config.denoisers.items()}


def gaussian_samples(network: StudyNetwork, ctx: GaussianStudyContext, count: int) -> torch.Tensor:
    """Closed-form Gaussian PF-ODE samples (eq. 7) from the generalization noise: [count, C, H, W]."""
    from denoiserlab.diffusion import append_zero, edm_sigmas, standard_noise

    generalization = ctx.config.generalization
    noise = standard_noise((generalization.k, *network.data.images.shape[1:]), generalization.seed)[:count]
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
    rows, images, by_label = [], [], {"networks": {}, "studies": {}}
    for index, entry in enumerate(tqdm(ctx.config.sweeps.entries, desc="sweeps", disable=not ctx.progress)):
        network = load_study_network(f"sweep{index}", entry.path, entry.trust_pickle, entry.options,
                                     ctx.config.data, ctx.config.device, datasets, prefer_recorded=True)
        name = f"sweep-{key_hash(network.key)}"  # entries sharing a checkpoint share its cached stages
        generalization = stage_generalization(ctx, name, network.key, network.module, network.data)
        errors = stage_score_errors(ctx, name, network.key, network.module, network.data, levels)
        rows.append(sweep_row(entry, network, generalization, errors))
        images.append(shown_samples(generalization, network.data.images, ctx.config.sweeps.n_samples_shown))
        by_label["networks"][entry.name()] = network
        by_label["studies"][entry.name()] = {"generalization": generalization}
    return {"sigmas": ctx.sigmas[levels], "entries": rows}, images, by_label
