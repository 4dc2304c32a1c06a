"""The cached stages of the Gaussian-structure study: each runs one measurement of gaussian_structure_measures
through the shared StageCache, keyed by the resolved config section, the grid and the network / data fingerprints
it depends on (a rerun loads finished stages, a changed setting recomputes only what it touches)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from torch import Tensor

from denoiserlab.config import to_dict
from denoiserlab.diffusion import standard_noise
from denoiserlab.studies.common.cache import StageCache, key_hash
from denoiserlab.studies.gaussian_structure.config import GaussianStudyConfig, GeneralizationConfig, LinearityConfig
from denoiserlab.studies.gaussian_structure.inputs import StudyData, StudyNetwork
from denoiserlab.studies.gaussian_structure.measures import (
    distill_at_sigma,
    generalization_table,
    generate_samples,
    heldout_generalization_score,
    linearity_per_sigma,
    score_errors_per_sigma,
    trajectory_comparison,
)


@dataclass
class GaussianStudyContext:
    config: GaussianStudyConfig
    out: Path  # output folder
    cache: StageCache
    sigmas: Tensor  # float64 [L], high -> low
    progress: bool  # show progress bars

    def key(self, section: str, *parts: dict) -> dict:
        """A stage key: the grid, one config section and the given parts (network, data, ...)."""
        return {"sigmas": to_dict(self.config.sigmas), section: to_dict(getattr(self.config, section)),
                "parts": list(parts)}


def stage_linearity(ctx: GaussianStudyContext, label: str, den_key: dict, data: StudyData,
                    make_denoiser: Callable, config: LinearityConfig | None = None) -> dict:
    """Linearity scores [L] (and the alpha sweep [A, L]) of one network or analytical denoiser (under `config`,
    default the study's linearity section)."""
    config = config or ctx.config.linearity
    key = ctx.key("linearity", den_key, data.key)
    if config != ctx.config.linearity:
        key["effective"] = to_dict(config)
    return ctx.cache.run(f"linearity-{label}", key, lambda: linearity_per_sigma(
        make_denoiser(), data.images, ctx.sigmas, config, ctx.progress, label))


def denoiser_linearity_config(config: LinearityConfig) -> LinearityConfig:
    """The linearity settings of the analytical denoisers: denoiser_pairs pairs, the alpha sweep unless off."""
    return replace(config, n_pairs=config.denoiser_pairs or config.n_pairs,
                   alphas=config.alphas if config.denoiser_sweep else ())


def stage_distillation(ctx: GaussianStudyContext, network: StudyNetwork, level: int) -> dict:
    """Linear distillation of a network at grid point `level`, compared with the Gaussian denoiser."""
    key = {**ctx.key("distillation", network.key, network.data.key), "level": level,
           "score_error": to_dict(ctx.config.score_error),
           "split_half": 1}  # the stage's output gained weight_nmse_split_half: older cached outputs lack it
    return ctx.cache.run(f"distillation-{network.name}-{level}", key, lambda: distill_at_sigma(
        network.module, network.data.denoiser("gaussian"), network.data.images, float(ctx.sigmas[level]),
        ctx.config.distillation, ctx.config.score_error, ctx.progress and ctx.config.distillation.method == "gd"))


def stage_score_errors(ctx: GaussianStudyContext, name: str, network_key: dict, module, data: StudyData,
                       levels: list[int] | None = None) -> dict[str, Tensor]:
    """RMSE of a network vs the Gaussian and the optimal denoiser of its training set at grid points `levels`
    (all when None): {"gaussian", "optimal": float64 [len(levels)]}."""
    levels = list(range(len(ctx.sigmas))) if levels is None else levels
    key = {**ctx.key("score_error", network_key, data.key), "levels": levels}
    return ctx.cache.run(f"score_errors-{name}", key, lambda: score_errors_per_sigma(
        module, {"gaussian": data.denoiser("gaussian"), "optimal": data.denoiser("optimal")}, data.images,
        ctx.sigmas[levels], ctx.config.score_error))


def stage_trajectory(ctx: GaussianStudyContext, network: StudyNetwork) -> dict:
    """The network's Euler trajectory vs the closed-form Gaussian one from the same initial noise."""
    key = ctx.key("sampling", network.key, network.data.key)
    sampling = ctx.config.sampling
    noise = standard_noise((sampling.n_samples, *network.data.images.shape[1:]), sampling.seed)
    return ctx.cache.run(f"trajectory-{network.name}", key, lambda: trajectory_comparison(
        network.module, network.data.denoiser("gaussian"), noise.to(ctx.config.device), ctx.sigmas))


def stage_samples(ctx: GaussianStudyContext, name: str, network_key: dict, module,
                  image_shape: tuple[int, int, int], config: GeneralizationConfig | None = None) -> Tensor:
    """config.k samples [K, C, H, W] of a network from the shared seeded noise (config: the study's
    generalization section unless given, e.g. with the sweeps' own k)."""
    config = config or ctx.config.generalization
    key = {**ctx.key("generalization", network_key, {"shape": list(image_shape)}), **effective(ctx, config)}
    return ctx.cache.run(f"samples-{name}", key, lambda: generate_samples(
        module, image_shape, config, ctx.config.device, ctx.progress, name))


def effective(ctx: GaussianStudyContext, config: GeneralizationConfig) -> dict:
    """The key part of generalization settings that differ from the study's section (none when equal)."""
    return {} if config == ctx.config.generalization else {"effective": to_dict(config)}


def stage_generalization(ctx: GaussianStudyContext, name: str, network_key: dict, module,
                         data: StudyData, config: GeneralizationConfig | None = None) -> dict:
    """{"samples" [K, ...], "score" (eq. 14), "nearest_distance" [K], "nearest_index" [K], "nearest_ratio" [K],
    "heldout_score" (the score of held-out images against the same training set)} of one network."""
    config = config or ctx.config.generalization
    samples = stage_samples(ctx, name, network_key, module, tuple(data.images.shape[1:]), config)
    key = {**ctx.key("generalization", network_key, data.key), "measures": "with-nearest-ratio",
           **effective(ctx, config)}
    table = ctx.cache.run(f"generalization-{name}", key, lambda: generalization_table(samples, data.images))
    return {"samples": samples, **table, "heldout_score": stage_heldout_score(ctx, data)}


def stage_heldout_score(ctx: GaussianStudyContext, data: StudyData) -> float:
    """The generalization score of held-out images of a training set's dataset (the calibrated scale's 1)."""
    k = ctx.config.generalization.k
    key = {"data": data.key, "k": k, "load_options": data.load_options}
    return ctx.cache.run(f"heldout_score-{key_hash(key)}", key, lambda: heldout_generalization_score(
        data.load_options, data.images, k))["score"]
