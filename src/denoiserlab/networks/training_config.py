"""TrainConfig: every option of `denoiserlab train`, its defaults, and the TOML file that mirrors it."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.build import resolve_preset
from denoiserlab.networks.loss import P_MEAN, P_STD, SigmaDistribution
from denoiserlab.validation import DEVICE_NAMES, SEED_LIMIT, is_device_name

TARGETS = ("sample", "posterior")  # regression target of the loss (networks.loss.edm_loss)
PRECISIONS = ("auto", "float32", "bfloat16")  # compute precision of a training step (TrainConfig.precision)


def _option(default, help_text: str):
    """A TrainConfig field with its `denoiserlab train --help` text; a type as default means a fresh one per run."""
    if isinstance(default, type):
        return field(default_factory=default, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (EDM recipe: Karras et al. 2022, Appendix F)."""

    out: str | None = _option(None, "run folder (checkpoints, logs, samples); required")
    # Dataset: keyword arguments of denoiserlab.data.load (split is always 'train').
    data: str = _option("fashion-mnist", "data.load source: built-in name or a path")
    subset: int | None = _option(None, "train on this many images chosen with data_seed (default: all)")
    classes: list[int] | None = _option(None, "keep only these labels (default: all)")
    resolution: int | None = _option(None, "square side in pixels (default: as stored)")
    resolution_policy: str = _option("pad", "'pad', 'crop' or 'resize' when resolution changes the side")
    channels: int | None = _option(None, "1 or 3 (default: as stored)")
    data_seed: int = _option(0, "seed of the subset choice")
    subset_offset: int = _option(0, "skip this many images of the subset permutation (disjoint subsets: 0, N, 2N)")
    xflip: bool = _option(False, "x-flip augmentation: train on the images and their mirror images")
    # Network.
    arch: str = _option("unet-small", "preset name (networks.presets) or bare architecture name")
    network: dict = _option(dict, "overrides of the preset's network config fields")
    init: str | None = _option(None, "start from this checkpoint's weights (a folder or shipped:NAME; same arch "
                                     "and network)")
    # Optimisation.
    kimg: float = _option(200.0, "training length, thousands of images shown")
    batch_size: int = _option(128, "images per optimiser step")
    micro_batch_size: int | None = _option(
        None, "images per forward/backward pass, whose gradients add up to the step's (default: at most "
              "networks.training.CPU_MICRO_BATCH on a CPU, the whole batch elsewhere); the same step up to float "
              "summation order, so a run may change it when it resumes")
    lr: float = _option(1e-3, "Adam learning rate after the warm-up")
    lr_rampup_kimg: float = _option(10.0, "linear learning-rate warm-up, kimg")
    lr_decay_kimg: float = _option(0.0, "after this many kimg, lr / sqrt(kimg / lr_decay_kimg) (EDM2); 0: constant")
    adam_beta1: float = _option(0.9, "Adam's first-moment decay")
    adam_beta2: float = _option(0.999, "Adam's second-moment decay")
    adam_eps: float = _option(1e-8, "Adam's epsilon")
    grad_clip_norm: float = _option(1.0, "clip the global gradient norm to this (0: no clipping)")
    ema_halflife_kimg: float = _option(50.0, "half-life of the EMA of the weights (the network saved), kimg")
    ema_rampup_ratio: float = _option(
        0.05, "the EMA half-life is at most this fraction of the images seen (0: off); with init the count starts "
              "at 0 too, so a fine-tune reaches its full half-life after ema_halflife_kimg / ema_rampup_ratio kimg")
    p_mean: float = _option(P_MEAN, "mean of ln(sigma) of the log-normal training noise levels (EDM)")
    p_std: float = _option(P_STD, "standard deviation of ln(sigma) of the log-normal training noise levels")
    target: str = _option("sample", "regression target: 'sample' (x0, EDM) or 'posterior' (E[x0 | x_t] under the "
                                    "training set: the same minimiser, less variance)")
    sigma_loguniform_fraction: float = _option(
        0.0, "share of the training sigmas drawn log-uniform over [sigma_min, sigma_max] instead of log-normal "
             "(networks.loss.SigmaDistribution says why)")
    sigma_min: float = _option(0.002, "lower end of the log-uniform training sigmas")
    sigma_max: float = _option(80.0, "upper end of the log-uniform training sigmas")
    seed: int = _option(0, "seed of weights, batches, noise and dropout")
    # Outputs.
    checkpoint_kimg: float = _option(20.0, "save the state, EMA network, sample grid and loss plot every this many "
                                           "kimg")
    log_kimg: float = _option(1.0, "one loss.csv row per this many kimg")
    sample_count: int = _option(64, "images in each sample grid")
    sample_steps: int = _option(18, "Heun steps of the sample grid")
    sample_seed: int = _option(0, "seed of the sample grid's initial noise (the same over the run)")
    device: str = _option("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    precision: str = _option(
        "auto", "the network's forward and backward passes: 'float32', 'bfloat16' (autocast; weights, optimiser, "
                "loss and targets stay float32 or float64) or 'auto' (bfloat16 on CUDA, float32 elsewhere); on a CPU "
                "with AVX-512 BF16 bfloat16 trains unet-small about 1.8x faster (benchmarks/bench_training.py)")

    def __post_init__(self):
        check_field_types(self)
        if self.out is None:
            raise DenoiserLabError("TrainConfig.out is required: the run folder, e.g. runs/NAME")
        for name in ("kimg", "batch_size", "lr", "checkpoint_kimg", "log_kimg", "sample_count", "sample_steps"):
            _require(getattr(self, name) > 0, name, getattr(self, name), "a number > 0")
        for name in ("lr_rampup_kimg", "lr_decay_kimg", "grad_clip_norm", "ema_halflife_kimg", "ema_rampup_ratio", "adam_eps"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "a number >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            _require(0 <= getattr(self, name) < 1, name, getattr(self, name), "a number in [0, 1)")
        _require(math.isfinite(self.kimg), "kimg", self.kimg, "a finite number > 0")
        for name in ("lr", "lr_rampup_kimg", "lr_decay_kimg", "adam_eps", "grad_clip_norm", "ema_halflife_kimg",
                     "ema_rampup_ratio", "p_mean", "p_std", "checkpoint_kimg", "log_kimg"):
            _require(math.isfinite(getattr(self, name)), name, getattr(self, name), "a finite number")
        for name in ("seed", "data_seed", "sample_seed"):  # torch and numpy generators take [0, 2**63)
            _require(0 <= getattr(self, name) < SEED_LIMIT, name, getattr(self, name), "an integer in [0, 2**63 - 1]")
        _require(self.micro_batch_size is None or self.micro_batch_size > 0, "micro_batch_size",
                 self.micro_batch_size, "an integer > 0 or None")
        _require(self.p_std > 0, "p_std", self.p_std, "a number > 0")
        _require(0 <= self.sigma_loguniform_fraction <= 1, "sigma_loguniform_fraction",
                 self.sigma_loguniform_fraction, "a number in [0, 1]")
        _require(0 < self.sigma_min < self.sigma_max < math.inf, "sigma_min, sigma_max",
                 (self.sigma_min, self.sigma_max), "finite numbers with 0 < sigma_min < sigma_max")
        _require(self.target in TARGETS, "target", self.target, f"one of {list(TARGETS)}")
        _require(self.precision in PRECISIONS, "precision", self.precision, f"one of {list(PRECISIONS)}")
        _require(self.device == "auto" or is_device_name(self.device), "device", self.device,
                 f"'auto', {DEVICE_NAMES}")
        resolve_preset(self.arch, self.network)  # fails early on an unknown preset or network option

    def uses_bfloat16(self, device_type: str) -> bool:
        """Whether a training step on a device of this type ('cpu', 'cuda') runs the network under bfloat16
        autocast."""
        return self.precision == "bfloat16" or (self.precision == "auto" and device_type == "cuda")

    def sigma_distribution(self) -> SigmaDistribution:
        """The training noise-level distribution of this run."""
        return SigmaDistribution(self.p_mean, self.p_std, self.sigma_loguniform_fraction, self.sigma_min,
                                 self.sigma_max)

    def data_options(self) -> dict:
        """Keyword arguments of denoiserlab.data.load for the training set."""
        options = dict(source=self.data, split="train", subset=self.subset, classes=self.classes,
                       resolution=self.resolution, resolution_policy=self.resolution_policy, xflip=self.xflip,
                       channels=self.channels, seed=self.data_seed)
        if self.subset_offset:  # as data.load records it: only when used
            options["subset_offset"] = self.subset_offset
        return options


def _require(condition: bool, name: str, value, allowed: str) -> None:
    if not condition:
        raise DenoiserLabError(f"TrainConfig.{name} = {value!r} is invalid; expected {allowed}")


def _matches(value, expected) -> bool:
    """Whether `value` fits the type hint `expected` (int, float, bool, str, dict, list[int] and unions of them)."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(expected)[0]) for v in value)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_field_types(config: TrainConfig) -> None:
    """Fail naming the field when a value has the wrong type; ints given for float fields become floats."""
    hints = typing.get_type_hints(TrainConfig)
    for config_field in dataclasses.fields(config):
        value, expected = getattr(config, config_field.name), hints[config_field.name]
        if not _matches(value, expected):
            raise DenoiserLabError(f"TrainConfig.{config_field.name} = {value!r} has the wrong type; "
                                   f"expected {expected}")
        if expected is float:
            object.__setattr__(config, config_field.name, float(value))


def train_config_from_dict(options: dict, origin: str = "options") -> TrainConfig:
    """Build a TrainConfig from a flat dict (TOML or resolved JSON); unknown keys fail naming the key and origin."""
    allowed = [config_field.name for config_field in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DenoiserLabError(f"{origin}: unknown key(s) {unknown}; allowed keys: {allowed}")
    return TrainConfig(**options)


def read_train_toml(path: str | Path) -> dict:
    """The options of a TOML training config: top-level keys are TrainConfig fields, [network] the overrides."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise DenoiserLabError(f"training config {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise DenoiserLabError(f"training config {path} is not valid TOML: {error}") from None
