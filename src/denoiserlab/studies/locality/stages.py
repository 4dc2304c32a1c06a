"""The cached stages of the locality study: each a small function (context, ...) -> tensors, run through StageCache.

Every stage's key holds the resolved config parts and input fingerprints it depends on (never results of other
stages except fitted schedule values, which are part of what a fitted method is), so a rerun with the same settings
loads every finished stage and computes only the missing ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from denoiserlab.config import to_dict
from denoiserlab.studies.common.cache import StageCache, file_fingerprint
from denoiserlab.studies.common.inputs import LoadedNetwork, TrainingData, heatmaps_path
from denoiserlab.studies.common.ranks import unwrapped
from denoiserlab.studies.locality.config import LocalityStudyConfig
from denoiserlab.studies.locality.heatmaps import (check_heatmaps_network, compute_heatmaps, heatmaps_on_grid,
                                                   read_heatmaps_file)
from denoiserlab.studies.locality.sets import forward_set, outputs_on, reverse_set, samples_from, shared_noise

FIT_SEED_OFFSET = 1_000_003  # the fitting sets' seed = evaluation seed + this, so fitting and evaluation differ


@dataclass
class StudyContext:
    config: LocalityStudyConfig
    out: Path  # output folder
    cache: StageCache
    data: TrainingData
    sigmas: Tensor  # float64 [L], high -> low
    networks: dict[str, LoadedNetwork]  # by label
    progress: bool = True  # show progress bars

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


def noise_key(ctx: StudyContext, fitting: bool = False) -> dict:
    """What the shared initial noise depends on (the fitting trajectories' noise has its own count and seed)."""
    evaluation = ctx.config.evaluation
    count = ctx.config.fitting.trajectories if fitting else evaluation.reverse_trajectories
    key = {"sigmas": to_dict(ctx.config.sigmas), "n": count, "seed": evaluation.seed,
           "shape": list(ctx.data.images.shape[1:])}
    return {**key, "seed": evaluation.seed + FIT_SEED_OFFSET} if fitting else key


def initial_noise(ctx: StudyContext, fitting: bool = False) -> Tensor:
    """The shared initial noise [R, C, H, W] of every trajectory and sampler (or of the fitting trajectories)."""
    key = noise_key(ctx, fitting)
    return shared_noise(key["n"], tuple(key["shape"]), key["seed"])


def reverse_set_key(ctx: StudyContext, network: LoadedNetwork, fitting: bool = False) -> dict:
    return {**noise_key(ctx, fitting), "network": network.key}


def stage_reverse_set(ctx: StudyContext, network: LoadedNetwork, fitting: bool = False) -> dict[str, Tensor]:
    """Step 1, reverse process: the network's own Heun trajectory from the shared noise (or, for fitting, from
    `fitting.trajectories` other noises)."""
    key = reverse_set_key(ctx, network, fitting)
    name = f"{'fit_reverse_set' if fitting else 'reverse_set'}-{network.config.name}"
    return ctx.cache.run(name, key, lambda: reverse_set(network.module, initial_noise(ctx, fitting), ctx.sigmas,
                                                        ctx.config.device, ctx.progress))


def stage_outputs(ctx: StudyContext, set_name: str, set_key: dict, z: Tensor, label: str, method_key: dict,
                  make_denoiser: Callable) -> Tensor:
    """A denoiser's outputs [L, M, C, H, W] on one set (built lazily, only when not cached)."""
    key = {"set": set_key, "method": method_key}

    def compute() -> Tensor:
        return outputs_on(make_denoiser(), z, ctx.sigmas, ctx.config.evaluation.batch_size, ctx.config.device,
                          f"{label} on {set_name}", ctx.progress)

    return ctx.cache.run(f"outputs-{set_name}-{label}", key, compute)


def stage_heatmaps(ctx: StudyContext, network: LoadedNetwork) -> dict:
    """Step 3: the network's heatmaps [L, H, W, H, W] (both readings), from its heatmap file or computed."""
    spec = network.config.heatmaps
    if spec is not None:
        path = heatmaps_path(spec)
        file = read_heatmaps_file(path)
        matches = check_heatmaps_network(file, network.key["fingerprint"], spec, network.config.name)
        table = heatmaps_on_grid(file, ctx.sigmas, tuple(ctx.data.images.shape[1:]), spec)
        return {**table, "source": spec, "key": {"file": file_fingerprint(path)}, "matches_network": matches}
    config = ctx.config.heatmaps
    key = {**ctx.grid_key, "network": network.key, "heatmaps": to_dict(config), "seed": ctx.config.evaluation.seed}
    computed = ctx.cache.run(f"heatmaps-{network.config.name}", key, lambda: compute_heatmaps(
        unwrapped(network.module), ctx.data.images, ctx.sigmas, config, ctx.config.evaluation.seed, ctx.config.device,
        ctx.progress))
    return {**computed, "source": "computed", "command": "denoiserlab study", "key": key, "matches_network": True}


def stage_samples(ctx: StudyContext, label: str, method_key: dict, make_denoiser: Callable) -> Tensor:
    """Step 6: a denoiser's Heun samples [R, C, H, W] from the shared initial noise."""
    key = {**noise_key(ctx), "method": method_key}
    return ctx.cache.run(f"samples-{label}", key, lambda: samples_from(
        make_denoiser(), initial_noise(ctx), ctx.sigmas, ctx.config.device, ctx.progress))
