"""Config pieces both studies share: value checks, the training-set table and the EDM sigma grid.

Each study's config module builds its frozen dataclasses from these (STYLE section 8: defaults live only in the
dataclasses, and a TOML file mirrors them one to one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from denoiserlab.diffusion.sigmas import edm_sigmas
from denoiserlab.errors import DenoiserLabError


def require(condition: bool, key: str, value, allowed: str) -> None:
    """Raise one DenoiserLabError naming the key, what it must be and the value seen, unless condition holds."""
    if not condition:
        raise DenoiserLabError(f"{key} must be {allowed}, got {value!r}")


def require_positive(config, section: str, names: tuple[str, ...]) -> None:
    """Each named field of `config` must be an integer >= 1."""
    for name in names:
        value = getattr(config, name)
        require(value >= 1, f"{section}.{name}", value, "an integer >= 1")


def check_label(name: str, key: str = "networks.name") -> None:
    """A network label names files and results keys: non-empty, without '/' or ':'."""
    require(name != "" and "/" not in name and ":" not in name, key, name, "a non-empty label without '/' or ':'")


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
class SigmaConfig:
    steps: int = 18  # EDM grid points, evaluated high -> low (also the Heun grid of the reverse process)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0  # EDM grid exponent (Karras et al. 2022, eq. 5)

    min_steps = 1  # fewest grid points a study can use (a class constant, not a config key)

    def __post_init__(self):
        require(self.steps >= self.min_steps, "sigmas.steps", self.steps, f"an integer >= {self.min_steps}")
        self.grid()  # checks sigma_min, sigma_max, rho

    def grid(self) -> Tensor:
        """float64 [L], high -> low (a sampling grid without its final 0)."""
        return edm_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


@dataclass(frozen=True)
class NetworkConfig:
    name: str  # label of the network in results and figures
    path: str  # checkpoint path (any format of denoiserlab.networks.loaders) or shipped:NAME
    heatmaps: str | None = None  # heatmap file (.npz/.pt, see locality.heatmaps) or shipped:FILE; None: compute
    trust_pickle: bool = False  # allow an EDM .pkl (it runs code when read)
    options: dict = field(default_factory=dict)  # extra loader options (scheduler, class_label, ...)

    def __post_init__(self):
        check_label(self.name)
