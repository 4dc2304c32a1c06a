"""Configuration of the locality study (`denoiserlab study CONFIG.toml`): frozen dataclasses, one per TOML table.

A TOML file mirrors `LocalityStudyConfig` one to one (see configs/locality-*.toml); every default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from denoiserlab.denoisers import REGISTRY
from denoiserlab.denoisers.options import check_denoiser_options
from denoiserlab.diffusion.sigmas import edm_sigmas
from denoiserlab.errors import DenoiserLabError

SCHEDULED_DENOISERS = ("pspc_square", "pspc_flex")  # denoisers whose schedule the study fits per network


def require(condition: bool, key: str, value, allowed: str) -> None:
    if not condition:
        raise DenoiserLabError(f"{key} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "fashion-mnist"  # built-in name or path, as denoiserlab.data.load takes
    split: Literal["train", "test"] = "train"  # the set the optimal denoiser memorises
    subset: int | None = None  # keep N images chosen by a permutation seeded with `seed`
    classes: tuple[int, ...] | None = None  # keep only these labels
    resolution: int | None = None  # square side in pixels
    resolution_policy: Literal["pad", "crop", "resize"] = "pad"
    channels: int | None = None  # 1 or 3
    xflip: bool = False  # horizontal flips count as training images (denoisers and the forward set)
    seed: int = 0  # seed of the subset choice
    subset_offset: int = 0  # skip this many images of the subset permutation (disjoint subsets)

    def load_options(self) -> dict:
        """Keyword arguments of denoiserlab.data.load (flips are applied by the study, not the loader)."""
        options = dict(source=self.source, split=self.split, subset=self.subset,
                       classes=None if self.classes is None else list(self.classes), resolution=self.resolution,
                       resolution_policy=self.resolution_policy, channels=self.channels, seed=self.seed)
        if self.subset_offset:
            options["subset_offset"] = self.subset_offset
        return options


@dataclass(frozen=True)
class NetworkConfig:
    name: str  # label of the network in results and figures
    path: str  # checkpoint path (any format of denoiserlab.networks.loaders) or shipped:NAME
    heatmaps: str | None = None  # precomputed heatmap file (.npz/.pt, see locality_heatmaps) or shipped:FILE; None: compute
    trust_pickle: bool = False  # allow an EDM .pkl (it runs code when read)
    options: dict = field(default_factory=dict)  # extra loader options (scheduler, class_label, ...)

    def __post_init__(self):
        require(self.name != "" and "/" not in self.name and ":" not in self.name, "networks.name", self.name,
                "a non-empty label without '/' or ':'")


@dataclass(frozen=True)
class SigmaConfig:
    steps: int = 18  # EDM grid points, evaluated high -> low (also the Heun grid of the reverse process)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0  # EDM grid exponent (Karras et al. 2022, eq. 5)

    def __post_init__(self):
        require(self.steps >= 1, "sigmas.steps", self.steps, "an integer >= 1")
        self.grid()  # checks sigma_min, sigma_max, rho

    def grid(self) -> Tensor:
        """float64 [L], high -> low."""
        return edm_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


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
    products_per_pass: int = 64  # vector-Jacobian products vectorised at a time
    pixels: tuple[tuple[int, int], ...] = ((0, 0), (-1, -1))  # output pixels (y, x) drawn in the figure; -1: centre
    figure_sigmas: int = 6  # sigmas shown in the heatmap figure (spread over the grid)

    def __post_init__(self):
        for key in ("n_samples", "batch_size", "products_per_pass", "figure_sigmas"):
            require(getattr(self, key) >= 1, f"heatmaps.{key}", getattr(self, key), "an integer >= 1")


@dataclass(frozen=True)
class FittingConfig:
    pairs: int = 32  # forward-process pairs per sigma used for fitting (drawn apart from the evaluation set)
    patch_sizes: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 15, 19, 23, 28, 32)  # PSPC-Square sweep (clamped to the image)
    thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0)  # PSPC-Flex sweep of lambda

    def __post_init__(self):
        require(self.pairs >= 1, "fitting.pairs", self.pairs, "an integer >= 1")
        require(len(self.patch_sizes) > 0 and all(s >= 1 for s in self.patch_sizes), "fitting.patch_sizes",
                self.patch_sizes, "a non-empty array of integers >= 1")
        require(len(self.thresholds) > 0 and all(0 < t <= 1 for t in self.thresholds), "fitting.thresholds",
                self.thresholds, "a non-empty array of numbers in (0, 1]")


@dataclass(frozen=True)
class SimilarityConfig:
    feature_model: str | None = None  # TorchScript image encoder [B, C, H, W] in [-1, 1] -> [B, ...]; None: skipped
    ssim_window: int = 11  # SSIM window side (reduced to the largest odd side that fits small images)


@dataclass(frozen=True)
class LocalityStudyConfig:
    networks: tuple[NetworkConfig, ...]  # one or more networks, each compared with every denoiser
    data: DataConfig | None = None  # the training set; None: the one the networks record (their training_data)
    # registry name -> options; pspc_square / pspc_flex take `schedule` = "fitted" (default), "cifar10" or a file
    denoisers: dict[str, dict] = field(default_factory=lambda: {
        "optimal": {}, "gaussian": {}, "pspc_square": {}, "pspc_flex": {}})
    sigmas: SigmaConfig = field(default_factory=SigmaConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    heatmaps: HeatmapConfig = field(default_factory=HeatmapConfig)
    fitting: FittingConfig = field(default_factory=FittingConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    device: str = "cpu"  # torch device of networks and denoisers

    def __post_init__(self):
        require(len(self.networks) >= 1, "networks", self.networks, "at least one [[networks]] table")
        names = [network.name for network in self.networks]
        require(len(set(names)) == len(names), "networks.name", names, "unique labels")
        unknown = sorted(set(self.denoisers) - set(REGISTRY))
        require(not unknown, "denoisers", unknown, f"registry names (valid: {sorted(REGISTRY)})")
        require("optimal" in self.denoisers, "denoisers", sorted(self.denoisers), "a table including 'optimal'")
        for name in SCHEDULED_DENOISERS:
            schedule = self.denoisers.get(name, {}).get("schedule", "fitted")
            require(isinstance(schedule, str), f"denoisers.{name}.schedule", schedule,
                    "'fitted', 'cifar10' or a schedule file path")
        for name, options in self.denoisers.items():
            check_study_denoiser_options(name, options)


def check_study_denoiser_options(name: str, options: dict) -> None:
    """A [denoisers.NAME] table holds that denoiser's options (checked now, before any stage runs); PSPC tables
    may add `schedule`, and leave patch_size / masks to the study, which sets them from the schedule."""
    scheduled = name in SCHEDULED_DENOISERS
    supplied = {"pspc_square": ("patch_size",), "pspc_flex": ("masks",)}.get(name, ())
    try:
        check_denoiser_options(name, {k: v for k, v in options.items() if not (scheduled and k == "schedule")},
                               supplied)
    except DenoiserLabError as error:
        raise DenoiserLabError(f"denoisers.{name}: {error}") from None
