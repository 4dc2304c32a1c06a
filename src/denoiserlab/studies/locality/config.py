"""Configuration of the locality study (`denoiserlab study CONFIG.toml`): frozen dataclasses, one per TOML table.

A TOML file mirrors `LocalityStudyConfig` one to one (see configs/locality-*.toml); every default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from denoiserlab.denoisers import REGISTRY
from denoiserlab.studies.common.config import DataConfig, NetworkConfig, SigmaConfig, require  # noqa: F401
from denoiserlab.studies.common.methods import check_method_options, configured_denoisers
from denoiserlab.validation import DEVICE_NAMES, is_device_name


@dataclass(frozen=True)
class EvaluationConfig:
    forward_pairs: int = 64  # M: (training image, noise) pairs per sigma, forward process
    reverse_trajectories: int = 16  # R: network Heun trajectories from shared noise (also the shared-noise samples)
    batch_size: int = 64  # images per denoiser call
    seed: int = 0  # seed of the evaluation sets and the shared initial noise

    def __post_init__(self):
        for key in ("forward_pairs", "reverse_trajectories", "batch_size"):
            require(getattr(self, key) >= 1, f"evaluation.{key}", getattr(self, key), "an integer >= 1")


@dataclass(frozen=True)
class HeatmapConfig:
    n_samples: int = 1000  # noisy inputs z per sigma (paper: 1000)
    reading: Literal["same_channel", "all_channels"] = "same_channel"  # which reading builds the PSPC-Flex masks
    batch_size: int = 8  # z per forward pass
    products_per_pass: int | None = None  # vector-Jacobian products vectorised at a time; None: 32 / batch_size on
    # a CPU (the pass then stays in the caches), 64 on a GPU (analysis.heatmaps.default_products_per_pass)
    pixels: tuple[tuple[int, int], ...] = ((0, 0), (-1, -1))  # output pixels (y, x) drawn in the figure; -1: centre
    figure_sigmas: int = 6  # sigmas shown in the heatmap figure (spread over the grid)

    def __post_init__(self):
        for key in ("n_samples", "batch_size", "figure_sigmas"):
            require(getattr(self, key) >= 1, f"heatmaps.{key}", getattr(self, key), "an integer >= 1")
        require(self.products_per_pass is None or self.products_per_pass >= 1, "heatmaps.products_per_pass",
                self.products_per_pass, "an integer >= 1 (or absent: chosen by the device)")


@dataclass(frozen=True)
class FittingConfig:
    pairs: int = 32  # forward-process fitting set: pairs per sigma (drawn apart from the evaluation set)
    trajectories: int = 8  # reverse-process fitting set: the network's own Heun trajectories (noise apart too)
    process: Literal["reverse", "forward"] = "reverse"  # whose fit `schedule = "fitted"` uses (both are reported)
    # Sweeps of the two PSPC methods as configs before per-method candidates named them (the methods' Tunable
    # legacy_names); None: [denoisers] NAME.candidates, else the method's declared candidates.
    patch_sizes: tuple[int, ...] | None = None
    thresholds: tuple[float, ...] | None = None

    def __post_init__(self):
        require(self.pairs >= 1, "fitting.pairs", self.pairs, "an integer >= 1")
        require(self.trajectories >= 1, "fitting.trajectories", self.trajectories, "an integer >= 1")
        require(self.patch_sizes is None or (len(self.patch_sizes) > 0 and all(s >= 1 for s in self.patch_sizes)),
                "fitting.patch_sizes", self.patch_sizes, "a non-empty array of integers >= 1")
        require(self.thresholds is None or (len(self.thresholds) > 0 and all(0 < t <= 1 for t in self.thresholds)),
                "fitting.thresholds", self.thresholds, "a non-empty array of numbers in (0, 1]")


@dataclass(frozen=True)
class SimilarityConfig:
    feature_model: str | None = None  # TorchScript image encoder [B, C, H, W] in [-1, 1] -> [B, ...]; None: skipped
    ssim_window: int = 11  # SSIM window side (reduced to the largest odd side that fits small images)


@dataclass(frozen=True)
class LocalityStudyConfig:
    networks: tuple[NetworkConfig, ...]  # one or more networks, each compared with every denoiser
    data: DataConfig | None = None  # the training set; None: the one the networks record (their training_data)
    # registry name -> options and study keys (studies.common.methods): tunable methods take `schedule` =
    # "fitted" (default), "calibrated", "cifar10" or a file, and `candidates`; any method `train_subset`
    denoisers: dict[str, dict] = field(default_factory=lambda: {
        "optimal": {}, "gaussian": {}, "pspc_square": {}, "pspc_flex": {}})
    all_denoisers: bool = False  # also run every registered denoiser [denoisers] leaves out, with its defaults
    sigmas: SigmaConfig = field(default_factory=SigmaConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    heatmaps: HeatmapConfig = field(default_factory=HeatmapConfig)
    fitting: FittingConfig = field(default_factory=FittingConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    device: str = "cpu"  # torch device of networks and denoisers: 'cpu', 'cuda' or 'cuda:N'

    def __post_init__(self):
        require(is_device_name(self.device), "device", self.device, DEVICE_NAMES)
        require(len(self.networks) >= 1, "networks", self.networks, "at least one [[networks]] table")
        names = [network.name for network in self.networks]
        require(len(set(names)) == len(names), "networks.name", names, "unique labels")
        unknown = sorted(set(self.denoisers) - set(REGISTRY))
        require(not unknown, "denoisers", unknown, f"registry names (valid: {sorted(REGISTRY)})")
        methods = configured_denoisers(self.denoisers, self.all_denoisers)
        require("optimal" in methods, "denoisers", sorted(self.denoisers), "a table including 'optimal'")
        for name, options in methods.items():
            check_method_options(name, options)

    def methods(self) -> dict[str, dict]:
        """Every denoiser the study runs: registry name -> its [denoisers] table (empty for defaults)."""
        return configured_denoisers(self.denoisers, self.all_denoisers)
