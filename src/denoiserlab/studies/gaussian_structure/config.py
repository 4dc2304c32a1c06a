"""Configuration of the hidden-Gaussian-structure study (`denoiserlab gaussian-study CONFIG.toml`).

Frozen dataclasses, one per TOML table; a TOML file mirrors `GaussianStudyConfig` one to one (see
configs/gaussian-*.toml) and every default lives here. Defaults follow Li et al. 2024 where the paper gives them
(10-step EDM grid, 100 pairs, alpha = beta = 1/sqrt(2)) and are sized for a 2-core CPU elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from denoiserlab.studies.common import config as common
from denoiserlab.studies.common.config import DataConfig, check_label, require, require_positive  # noqa: F401
from denoiserlab.studies.common.methods import check_method_options, configured_denoisers
from denoiserlab.validation import DEVICE_NAMES, is_device_name

SWEEP_KINDS = ("n_train", "width", "kimg")  # what a sweep entry varies: training-set size, base width, length


@dataclass(frozen=True)
class NetworkEntry:
    name: str  # label in results and figures
    path: str  # checkpoint (any format of denoiserlab.networks.loaders.load) or shipped:NAME
    trust_pickle: bool = False  # allow an EDM .pkl (it runs code when read)
    options: dict = field(default_factory=dict)  # extra loader options (scheduler, class_label, training_data)
    heatmaps: str | None = None  # heatmap file (or shipped:FILE) for denoisers built from heatmaps (PSPC-Flex
    # masks, nearest sigma of the file); only the first network's is used, for the analytical denoisers' linearity

    def __post_init__(self):
        check_label(self.name)


@dataclass(frozen=True)
class SigmaConfig(common.SigmaConfig):
    steps: int = 10  # EDM grid points; 10: the paper's list 80, 42.4, 21.1, 9.72, 4.07, 1.50, 0.47, 0.117, 0.02, 0.002

    min_steps = 2


@dataclass(frozen=True)
class LinearityConfig:
    n_pairs: int = 100  # pairs (x1, x2) per sigma (paper: 100)
    alpha: float = 2**-0.5  # default mixing weight; beta = sqrt(1 - alpha^2)
    alphas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.9)  # the sweep of alpha (paper fig. 10), each with its beta
    batch_size: int = 64  # images per denoiser call
    seed: int = 0  # seed of the pairs and their noise
    denoiser_pairs: int | None = None  # pairs per sigma for the analytical denoisers (None: n_pairs; fewer keeps
    # slow methods such as ELS or DataLocality cheap, as their linearity is known to be lower than the networks')
    denoiser_sweep: bool = True  # also sweep alpha for the analytical denoisers (False: only the default alpha)

    def __post_init__(self):
        require_positive(self, "linearity", ("n_pairs", "batch_size"))
        require(self.denoiser_pairs is None or self.denoiser_pairs >= 1, "linearity.denoiser_pairs",
                self.denoiser_pairs, "an integer >= 1")
        for alpha in (self.alpha, *self.alphas):
            require(0 < alpha < 1, "linearity.alpha(s)", alpha, "a number in (0, 1)")


@dataclass(frozen=True)
class DistillationConfig:
    method: Literal["lstsq", "gd"] = "lstsq"  # exact least squares (fast) or Adam as in the paper (loss curve)
    n_samples: int = 4096  # noisy training images per sigma (lstsq needs >= C*H*W + 1)
    batch_size: int = 256  # images per network call (and the Adam mini-batch)
    steps: int = 2000  # Adam steps ("gd")
    learning_rate: float = 1e-3  # Adam learning rate ("gd") at unit input scale; divided by sqrt(1 + sigma^2)
    top_k: int = 8  # leading singular vectors compared (and drawn) per sigma
    seed: int = 0  # seed of the noisy images

    def __post_init__(self):
        require_positive(self, "distillation", ("n_samples", "batch_size", "steps", "top_k"))
        require(self.learning_rate > 0, "distillation.learning_rate", self.learning_rate, "a number > 0")


@dataclass(frozen=True)
class ScoreErrorConfig:
    n_samples: int = 1000  # noisy training images per sigma for the RMSE (Li et al. eq. 10)
    batch_size: int = 128  # images per denoiser call
    seed: int = 0  # seed of the noisy images

    def __post_init__(self):
        require_positive(self, "score_error", ("n_samples", "batch_size"))


@dataclass(frozen=True)
class SamplingConfig:
    n_samples: int = 16  # trajectories from shared noise: network Euler on the grid vs closed-form Gaussian (eq. 7)
    seed: int = 0  # seed of the shared initial noise

    def __post_init__(self):
        require_positive(self, "sampling", ("n_samples",))


@dataclass(frozen=True)
class GeneralizationConfig:
    k: int = 1000  # generated samples per network for the generalization score (paper: 10 000)
    sampler: Literal["euler", "heun"] = "heun"  # PF-ODE sampler of these samples
    steps: int = 18  # EDM grid points of that sampler
    batch_size: int = 250  # samples generated at a time
    seed: int = 1  # seed of their initial noise (shared by all networks: strong generalization compares them)

    def __post_init__(self):
        require_positive(self, "generalization", ("k", "steps", "batch_size"))


@dataclass(frozen=True)
class StrongGeneralizationConfig:
    pairs: tuple[tuple[str, str], ...] = ()  # pairs of [[networks]] names or sweep entry labels (e.g. disjoint
    # halves; small-N pairs); sweep entries only need their generalization samples, so pairs of them are cheap
    # TorchScript encoder [B, C, H, W] in [-1, 1] -> [B, ...], a path or shipped:NAME (1x28x28 images:
    # shipped:fashion-mnist-classifier.pt); None: skipped
    feature_model: str | None = None


@dataclass(frozen=True)
class SweepEntry:
    path: str  # checkpoint (or shipped:NAME) of one run of the sweep
    kind: Literal["n_train", "width", "kimg"]  # what this entry varies
    value: float  # its value: training-set size, base width (channels) or kimg trained
    label: str | None = None  # legend label (default: kind=value)
    trust_pickle: bool = False
    options: dict = field(default_factory=dict)  # extra loader options

    def name(self) -> str:
        """The label in results, figures and strong-generalization pairs."""
        return self.label or f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class SweepConfig:
    entries: tuple[SweepEntry, ...] = ()  # checkpoints of the memorization -> generalization sweeps
    sigma_indices: tuple[int, ...] | None = None  # grid indices of the score errors (None: the middle index)
    n_samples_shown: int = 8  # samples per entry kept for the figure
    k: int | None = None  # samples per sweep checkpoint for its generalization score (None: generalization.k)

    def __post_init__(self):
        require_positive(self, "sweeps", ("n_samples_shown",))
        require(self.k is None or self.k >= 1, "sweeps.k", self.k, "an integer >= 1")


@dataclass(frozen=True)
class GaussianStudyConfig:
    networks: tuple[NetworkEntry, ...] = ()  # networks analysed in full (at least one, or sweep entries)
    data: DataConfig | None = None  # training set for every network; None: each network's recorded training_data
    denoisers: dict[str, dict] = field(default_factory=lambda: {"gaussian": {}, "optimal": {}})  # registry name ->
    # options and study keys (studies.common.methods); their linearity is measured on the first network's training
    # set, a tunable method at its fixed value, its named schedule (`schedule` = "cifar10" or a file), else its default
    all_denoisers: bool = False  # also measure every registered denoiser [denoisers] leaves out, with its defaults
    sigmas: SigmaConfig = field(default_factory=SigmaConfig)
    linearity: LinearityConfig = field(default_factory=LinearityConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    score_error: ScoreErrorConfig = field(default_factory=ScoreErrorConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generalization: GeneralizationConfig = field(default_factory=GeneralizationConfig)
    strong_generalization: StrongGeneralizationConfig = field(default_factory=StrongGeneralizationConfig)
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    device: str = "cpu"  # torch device of networks, denoisers and images: 'cpu', 'cuda' or 'cuda:N'

    def __post_init__(self):
        require(is_device_name(self.device), "device", self.device, DEVICE_NAMES)
        require(len(self.networks) + len(self.sweeps.entries) >= 1, "networks", self.networks,
                "at least one [[networks]] or [[sweeps.entries]] table")
        names = [network.name for network in self.networks]
        require(len(set(names)) == len(names), "networks.name", names, "unique labels")
        labels = [entry.name() for entry in self.sweeps.entries]
        require(len(set(labels)) == len(labels), "sweeps.entries labels", labels, "unique labels")
        for name, options in self.methods().items():  # checked now, not after minutes of other stages
            check_method_options(name, options)
        for pair in self.strong_generalization.pairs:
            require(all(name in names + labels for name in pair) and pair[0] != pair[1],
                    "strong_generalization.pairs", list(pair),
                    f"two different names among the [[networks]] {names} and sweep entries {labels}")
        for index in self.sweeps.sigma_indices or ():
            require(-self.sigmas.steps <= index < self.sigmas.steps, "sweeps.sigma_indices", index,
                    f"an index into the {self.sigmas.steps}-point sigma grid")

    def methods(self) -> dict[str, dict]:
        """Every analytical denoiser whose linearity is measured: registry name -> its [denoisers] table."""
        return configured_denoisers(self.denoisers, self.all_denoisers)

    def sweep_sigma_indices(self) -> tuple[int, ...]:
        """Grid indices (non-negative) of the sweeps' score errors."""
        indices = self.sweeps.sigma_indices or (self.sigmas.steps // 2,)
        return tuple(index % self.sigmas.steps for index in indices)
