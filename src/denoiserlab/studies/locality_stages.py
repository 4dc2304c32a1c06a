"""The cached stages of the locality study: each a small function (context, ...) -> tensors, run through StageCache.

Every stage's key holds the resolved config parts and input fingerprints it depends on (never results of other
stages except fitted schedule values, which are part of what a PSPC denoiser is), so a rerun with the same
settings loads every finished stage and computes only the missing ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.config import to_dict
from denoiserlab.denoisers import PatchSchedule, ThresholdSchedule, load_schedule
from denoiserlab.studies.cache import StageCache, file_fingerprint
from denoiserlab.studies.locality_config import LocalityStudyConfig
from denoiserlab.studies.locality_fitting import (
    effective_patch_sizes,
    SCHEDULE_KINDS,
    flex_sweep_mse,
    mse_per_sigma,
    square_sweep_outputs,
)
from denoiserlab.studies.locality_heatmaps import (
    GridHeatmapMasks,
    compute_heatmaps,
    heatmaps_on_grid,
    read_heatmaps_file,
)
from denoiserlab.studies.locality_inputs import LoadedNetwork, TrainingData, build_denoiser, heatmaps_path
from denoiserlab.studies.locality_sets import forward_set, outputs_on, reverse_set, samples_from, shared_noise

FIT_SEED_OFFSET = 1_000_003  # the fitting set's seed = evaluation seed + this, so the two sets differ


@dataclass
class StudyContext:
    config: LocalityStudyConfig
    out: Path  # output folder
    cache: StageCache
    data: TrainingData
    sigmas: Tensor  # float64 [L], high -> low
    networks: dict[str, LoadedNetwork]  # by label

    @property
    def grid_key(self) -> dict:
        return {"sigmas": to_dict(self.config.sigmas), "data": self.data.key}


def forward_set_key(ctx: StudyContext, fitting: bool = False) -> dict:
    """What a forward-process set depends on: the data, the grid, its size and seed."""
    evaluation = ctx.config.evaluation
    pairs = ctx.config.fitting.pairs if fitting else evaluation.forward_pairs
    return {**ctx.grid_key, "pairs": pairs, "seed": evaluation.seed + (FIT_SEED_OFFSET if fitting else 0)}


def stage_forward_set(ctx: StudyContext, fitting: bool = False) -> dict[str, Tensor]:
    """Step 1, forward process: the evaluation set, or the fitting set (other seed, `fitting.pairs` pairs)."""
    key = forward_set_key(ctx, fitting)
    return ctx.cache.run("fit_set" if fitting else "forward_set", key,
                         lambda: forward_set(ctx.data.images, ctx.sigmas, key["pairs"], key["seed"]))


def noise_key(ctx: StudyContext) -> dict:
    evaluation = ctx.config.evaluation
    return {"sigmas": to_dict(ctx.config.sigmas), "n": evaluation.reverse_trajectories, "seed": evaluation.seed,
            "shape": list(ctx.data.images.shape[1:])}


def initial_noise(ctx: StudyContext) -> Tensor:
    """The shared initial noise [R, C, H, W] of every trajectory and sampler."""
    evaluation = ctx.config.evaluation
    return shared_noise(evaluation.reverse_trajectories, tuple(ctx.data.images.shape[1:]), evaluation.seed)


def reverse_set_key(ctx: StudyContext, network: LoadedNetwork) -> dict:
    return {**noise_key(ctx), "network": network.key}


def stage_reverse_set(ctx: StudyContext, network: LoadedNetwork) -> dict[str, Tensor]:
    """Step 1, reverse process: the network's own Heun trajectory from the shared noise."""
    key = reverse_set_key(ctx, network)
    return ctx.cache.run(f"reverse_set-{network.config.name}", key,
                         lambda: reverse_set(network.module, initial_noise(ctx), ctx.sigmas, ctx.config.device))


def stage_outputs(ctx: StudyContext, set_name: str, set_key: dict, z: Tensor, label: str, method_key: dict,
                  make_denoiser: Callable) -> Tensor:
    """A denoiser's outputs [L, M, C, H, W] on one evaluation set (built lazily, only when not cached)."""
    key = {"set": set_key, "method": method_key}

    def compute() -> Tensor:
        return outputs_on(make_denoiser(), z, ctx.sigmas, ctx.config.evaluation.batch_size, ctx.config.device,
                          f"{label} on {set_name}")

    return ctx.cache.run(f"outputs-{set_name}-{label}", key, compute)


def stage_heatmaps(ctx: StudyContext, network: LoadedNetwork) -> dict:
    """Step 3: the network's heatmaps [L, H, W, H, W] (both readings), from its heatmap file or computed."""
    spec = network.config.heatmaps
    if spec is not None:
        path = heatmaps_path(spec)
        table = heatmaps_on_grid(read_heatmaps_file(path), ctx.sigmas, tuple(ctx.data.images.shape[1:]), spec)
        return {**table, "source": spec, "key": {"file": file_fingerprint(path)}}
    config = ctx.config.heatmaps
    key = {**ctx.grid_key, "network": network.key, "heatmaps": to_dict(config), "seed": ctx.config.evaluation.seed}
    computed = ctx.cache.run(f"heatmaps-{network.config.name}", key, lambda: compute_heatmaps(
        network.module, ctx.data.images, ctx.sigmas, config, ctx.config.evaluation.seed, ctx.config.device))
    return {**computed, "source": "computed", "command": "denoiserlab study", "key": key}


def stage_square_sweep(ctx: StudyContext, fit_z: Tensor) -> dict:
    """Step 4: PSPC-Square composites on the fitting set at every swept patch size (network-independent)."""
    sizes = effective_patch_sizes(ctx.config.fitting.patch_sizes, ctx.data.images.shape[-1])
    key = {**ctx.grid_key, "fit": to_dict(ctx.config.fitting), "seed": ctx.config.evaluation.seed, "sizes": sizes}
    outputs = ctx.cache.run("square_sweep", key, lambda: square_sweep_outputs(
        ctx.data.imageset.as_float(), ctx.data.xflip, fit_z, ctx.sigmas, sizes,
        ctx.config.evaluation.batch_size, ctx.config.device))
    return {"patch_sizes": sizes, "outputs": outputs}


def square_sweep_mse(sweep: dict, reference: Tensor) -> Tensor:
    """MSE per sigma of every swept patch size against reference outputs [L, M, ...]: float64 [S, L]."""
    return torch.stack([mse_per_sigma(outputs, reference) for outputs in sweep["outputs"]])


def stage_flex_sweep(ctx: StudyContext, network: LoadedNetwork, heatmaps: dict, fit_z: Tensor,
                     references: dict[str, Tensor]) -> dict[str, Tensor]:
    """Step 4: MSE [T, L] of PSPC-Flex (masks from the network's heatmaps) against each reference, per threshold."""
    reading = ctx.config.heatmaps.reading
    key = {**ctx.grid_key, "fit": to_dict(ctx.config.fitting), "seed": ctx.config.evaluation.seed,
           "network": network.key, "heatmaps": heatmaps["key"], "reading": reading}
    return ctx.cache.run(f"flex_sweep-{network.config.name}", key, lambda: flex_sweep_mse(
        ctx.data.imageset.as_float(), ctx.data.xflip, fit_z, ctx.sigmas, heatmaps[reading],
        ctx.config.fitting.thresholds, references, ctx.config.evaluation.batch_size, ctx.config.device))


def chosen_schedule(ctx: StudyContext, name: str, fitted: PatchSchedule | ThresholdSchedule
                    ) -> tuple[PatchSchedule | ThresholdSchedule, str]:
    """(schedule, source) of a PSPC denoiser: the fitted one unless its options name 'cifar10' or a file."""
    source = ctx.config.denoisers[name].get("schedule", "fitted")
    if source == "fitted":
        return fitted, "fitted"
    return load_schedule(source, SCHEDULE_KINDS[name]), source


def make_scheduled_denoiser(ctx: StudyContext, name: str, schedule, heatmaps: dict | None) -> Callable:
    """A factory of PSPC-Square (patch-size schedule) or PSPC-Flex (masks from heatmaps + threshold schedule)."""
    options = ctx.config.denoisers[name]
    if name == "pspc_square":
        return lambda: build_denoiser(name, options, ctx.data, patch_size=schedule)
    masks = GridHeatmapMasks(heatmaps[ctx.config.heatmaps.reading], ctx.sigmas, schedule)
    return lambda: build_denoiser(name, options, ctx.data, masks=masks)


def stage_samples(ctx: StudyContext, label: str, method_key: dict, make_denoiser: Callable) -> Tensor:
    """Step 6: a denoiser's Heun samples [R, C, H, W] from the shared initial noise."""
    key = {**noise_key(ctx), "method": method_key}
    return ctx.cache.run(f"samples-{label}", key, lambda: samples_from(
        make_denoiser(), initial_noise(ctx), ctx.sigmas, ctx.config.device))
