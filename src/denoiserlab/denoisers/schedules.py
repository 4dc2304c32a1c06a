"""Schedules sigma -> patch size (PSPC-Square, ELS, LS), sigma -> threshold (PSPC-Flex lambda, DataLocality) or
sigma -> smoothing (CFDM) over an EDM grid, and the `Tunable` declaration of the option a study fits per sigma.

A schedule is a list of values, one per point of the EDM grid `edm_sigmas(len(values), sigma_min, sigma_max, rho)`
(high sigma -> low sigma); at any sigma it returns the value of the grid point nearest in sigma itself (not in
log sigma), as the reference implementation does (plai-group/pspc: argmin |t_grid - t|); on an exact tie the
higher-sigma point wins. The paper's CIFAR-10 lists (18-step grid) are built in. Files: TOML or JSON by suffix,
with the keys kind ("patch_size", "threshold" or "smoothing"), values, sigma_min, sigma_max, rho.
"""

from __future__ import annotations

import json
import math
import tomllib
from abc import ABC, abstractmethod
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar

import torch
import tomli_w
from torch import Tensor

from denoiserlab.atomic import atomic_write_text
from denoiserlab.diffusion.sigmas import edm_sigmas
from denoiserlab.errors import DenoiserLabError

CIFAR10_PATCH_SIZES = (32, 32, 32, 32, 32, 32, 32, 23, 15, 11, 7, 5, 3, 3, 3, 3, 3, 3)
CIFAR10_THRESHOLDS = (1, 1, 1, 1, 1, 1, 1, 0.7, 0.7, 0.5, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3)
FILE_KEYS = ("kind", "values", "sigma_min", "sigma_max", "rho")


@dataclass(frozen=True)
class GridSchedule(ABC):
    """Values on an EDM grid, high sigma first; calling it at sigma gives the value of the nearest grid point.

    Base of PatchSchedule and ThresholdSchedule, which say what a valid value is (`check_value`).
    """

    values: tuple  # one value per grid point, high sigma -> low sigma
    sigma_min: float = 0.002  # lowest grid sigma
    sigma_max: float = 80.0  # highest grid sigma
    rho: float = 7.0  # EDM grid exponent (Karras et al. 2022, eq. 5)
    kind: ClassVar[str] = ""

    def __post_init__(self):
        if len(self.values) == 0:
            raise DenoiserLabError(f"a {self.kind} schedule needs at least one value, got none")
        object.__setattr__(self, "values", tuple(self.check_value(value) for value in self.values))
        edm_sigmas(len(self.values), self.sigma_min, self.sigma_max, self.rho)  # checks the grid parameters

    @staticmethod
    @abstractmethod
    def check_value(value):
        """Return the value checked (and normalised), or raise DenoiserLabError."""

    def sigmas(self) -> list[float]:
        """The grid, float sigmas high -> low, one per value."""
        return edm_sigmas(len(self.values), self.sigma_min, self.sigma_max, self.rho).tolist()

    def __call__(self, sigma: float):
        """The value at the grid point nearest to sigma (in sigma, not log sigma)."""
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise DenoiserLabError(f"sigma must be > 0 and finite, got {sigma}")
        distances = [abs(grid_sigma - sigma) for grid_sigma in self.sigmas()]
        return self.values[distances.index(min(distances))]

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self), "values": list(self.values)}

    def save(self, path: str | Path) -> Path:
        """Write the schedule as TOML (.toml) or JSON (.json), atomically."""
        path = Path(path)
        if path.suffix == ".toml":
            return atomic_write_text(path, tomli_w.dumps(self.to_dict()))
        if path.suffix == ".json":
            return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        raise DenoiserLabError(f"schedule files end in .toml or .json, got {str(path)!r}")


@dataclass(frozen=True)
class PatchSchedule(GridSchedule):
    """sigma -> PSPC-Square patch size (an int >= 1; PSPCSquare clamps it to the image size)."""

    kind: ClassVar[str] = "patch_size"

    @staticmethod
    def check_value(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DenoiserLabError(f"patch sizes must be ints >= 1, got {value!r}")
        return value

    @classmethod
    def cifar10(cls) -> "PatchSchedule":
        """The paper's CIFAR-10 patch sizes on the 18-step EDM grid."""
        return cls(CIFAR10_PATCH_SIZES)


@dataclass(frozen=True)
class ThresholdSchedule(GridSchedule):
    """sigma -> PSPC-Flex heatmap threshold lambda in (0, 1] (see `flex_masks`)."""

    kind: ClassVar[str] = "threshold"

    @staticmethod
    def check_value(value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise DenoiserLabError(f"thresholds must be numbers in (0, 1], got {value!r}")
        return float(value)

    @classmethod
    def cifar10(cls) -> "ThresholdSchedule":
        """The paper's CIFAR-10 thresholds on the 18-step EDM grid."""
        return cls(CIFAR10_THRESHOLDS)


@dataclass(frozen=True)
class SmoothingSchedule(GridSchedule):
    """sigma -> CFDM smoothing scale (a number >= 0, in the units of x)."""

    kind: ClassVar[str] = "smoothing"

    @staticmethod
    def check_value(value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise DenoiserLabError(f"smoothing values must be finite numbers >= 0, got {value!r}")
        return float(value)


SCHEDULE_KINDS = {cls.kind: cls for cls in (PatchSchedule, ThresholdSchedule, SmoothingSchedule)}


@dataclass(frozen=True)
class Tunable:
    """The option of a denoiser that a study fits per sigma (a class attribute `tunable` of the denoiser).

    The option takes one value or a schedule sigma -> value; fitted values are stored as a schedule of `kind`.
    Everything a study needs to fit, build and report the method lives here, so studies never name a method.
    """

    name: str  # the tuned quantity; also the constructor option unless `option` names another
    kind: str  # key of SCHEDULE_KINDS: the schedule class that holds fitted values
    candidates: tuple  # default sweep, in sweep order
    option: str | None = None  # constructor option that takes the value or schedule (None: `name`)
    needs: tuple[str, ...] = ()  # study inputs `realise` turns the value into the option with ("heatmaps")
    realise: Callable[[object, dict], object] | None = None  # (value or schedule, inputs) -> option; None: as is
    default: object = None  # value used where nothing is fitted (None: the config's default, else the middle candidate)
    legacy_names: tuple[str, str] | None = None  # ([fitting] key of the sweep, results.json prefix) of older versions

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise DenoiserLabError(f"kind must be one of {list(SCHEDULE_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "candidates", tuple(SCHEDULE_KINDS[self.kind].check_value(v) for v in self.candidates))
        if len(self.candidates) == 0:
            raise DenoiserLabError(f"a tunable needs at least one candidate value, got none for {self.name!r}")

    @property
    def option_name(self) -> str:
        """The constructor option set from the tuned value."""
        return self.option or self.name

    def check_value(self, value: object) -> object:
        """A single value of the tuned quantity, checked as its schedule kind does."""
        return SCHEDULE_KINDS[self.kind].check_value(value)

    def default_value(self, config_class: type | None = None) -> object:
        """The value a study uses where it fits nothing: `default`, else the default of the option in the method's
        config dataclass, else the middle candidate."""
        if self.default is not None:
            return self.check_value(self.default)
        defaults = {field.name: field.default for field in fields(config_class)} if config_class else {}
        if self.name in defaults and defaults[self.name] is not MISSING and not callable(defaults[self.name]):
            return self.check_value(defaults[self.name])
        return self.candidates[len(self.candidates) // 2]

    def options(self, value: object, inputs: dict | None = None) -> dict:
        """Constructor options that give the method the value (or schedule) `value`; `inputs` holds what `needs`
        names (e.g. {"heatmaps": float [L, H, W, H, W], "heatmap_sigmas": float64 [L]})."""
        missing = [need for need in self.needs if need not in (inputs or {})]
        if missing:
            raise DenoiserLabError(f"the tuned {self.name!r} needs {missing} to build its {self.option_name!r} option")
        return {self.option_name: self.realise(value, inputs or {}) if self.realise else value}


def value_at(option: object | Callable[[float], object], sigma: float) -> object:
    """An option's value at noise level sigma: option(sigma) for a schedule, else the option itself."""
    return option(sigma) if callable(option) else option


def samples_by_value(values: list, device: torch.device | str = "cpu") -> list[tuple[object, Tensor]]:
    """Group per-sample values: [(value, int64 indices of the samples with it)] in order of first appearance."""
    groups: dict = {}
    for index, value in enumerate(values):
        groups.setdefault(value, []).append(index)
    return [(value, torch.tensor(indices, device=device)) for value, indices in groups.items()]


def estimate_by_group(x: Tensor, values: list, estimate: Callable[[object, Tensor | slice], Tensor]) -> Tensor:
    """A denoiser's output for a batch x [B, ...] whose samples take different settings: values[b] is sample b's
    setting, estimate(value, group) the estimate for the samples x[group] (shape x[group].shape). Returns x's shape
    and dtype. When every sample shares one setting (the usual case), group is slice(None) and nothing is gathered
    or scattered: indexed copies are parallel torch ops whose OpenMP threads then spin on the cores that the
    compiled kernels run on next."""
    groups = samples_by_value(values, x.device)
    if len(groups) == 1:
        return estimate(groups[0][0], slice(None)).to(x.dtype)
    out = torch.empty_like(x)
    for value, group in groups:
        out[group] = estimate(value, group).to(x.dtype)
    return out


def read_schedule_file(path: str | Path) -> dict:
    """The raw key/value table of a .toml or .json schedule file, keys checked."""
    path = Path(path)
    if not path.exists():
        raise DenoiserLabError(f"schedule file {str(path)!r} does not exist")
    if not path.is_file():
        raise DenoiserLabError(f"schedule file {str(path)!r} is not a regular file")
    if path.suffix not in (".toml", ".json"):
        raise DenoiserLabError(f"schedule files end in .toml or .json, got {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
        table = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise DenoiserLabError(f"cannot parse schedule file {str(path)!r}: {error}") from None
    if not isinstance(table, dict):
        raise DenoiserLabError(f"schedule file {str(path)!r} must hold a table of keys {FILE_KEYS}")
    unknown = sorted(set(table) - set(FILE_KEYS))
    if unknown:
        raise DenoiserLabError(f"unknown key(s) {unknown} in schedule file {str(path)!r}; allowed keys: {list(FILE_KEYS)}")
    for key in ("kind", "values"):
        if key not in table:
            raise DenoiserLabError(f"schedule file {str(path)!r} lacks the key {key!r}")
    if table["kind"] not in SCHEDULE_KINDS:
        raise DenoiserLabError(f"kind in schedule file {str(path)!r} must be one of {list(SCHEDULE_KINDS)}, "
                               f"got {table['kind']!r}")
    if not isinstance(table["values"], list):
        raise DenoiserLabError(f"values in schedule file {str(path)!r} must be a list, got {table['values']!r}")
    return table


def load_schedule(name_or_path: str | Path, kind: str = "patch_size") -> GridSchedule:
    """A built-in schedule ('cifar10') of the given kind, or a schedule file (whose kind must match `kind`)."""
    if kind not in SCHEDULE_KINDS:
        raise DenoiserLabError(f"kind must be one of {list(SCHEDULE_KINDS)}, got {kind!r}")
    if str(name_or_path) == "cifar10":
        if not hasattr(SCHEDULE_KINDS[kind], "cifar10"):
            raise DenoiserLabError(f"there is no built-in cifar10 schedule of kind {kind!r}")
        return SCHEDULE_KINDS[kind].cifar10()
    table = read_schedule_file(name_or_path)
    if table["kind"] != kind:
        raise DenoiserLabError(f"schedule file {str(name_or_path)!r} holds a {table['kind']!r} schedule, expected {kind!r}")
    options = {key: table[key] for key in ("sigma_min", "sigma_max", "rho") if key in table}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DenoiserLabError(f"{key} in schedule file {str(name_or_path)!r} must be a number, got {value!r}")
    try:
        return SCHEDULE_KINDS[kind](tuple(table["values"]), **{key: float(value) for key, value in options.items()})
    except DenoiserLabError as error:
        raise DenoiserLabError(f"schedule file {str(name_or_path)!r}: {error}") from None
