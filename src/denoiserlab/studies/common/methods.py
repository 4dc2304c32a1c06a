"""The analytical denoisers of a study, read from the registry: which run, with which options, and how a tuned
value (a number or a schedule sigma -> value) becomes constructor options. Nothing here names a method: what is
method-specific lives in the method's `Tunable` declaration (denoisers.schedules.Tunable).

A study's `[denoisers]` table maps registry names to constructor options, plus these study keys:
  schedule = "fitted" | "calibrated" | "cifar10" | FILE  where a tunable method's value comes from (the locality
      study fits it per network: "fitted" by the MSE rule, "calibrated" by Kamb & Ganguli's score cosine);
  candidates = [...]  the values swept when fitting (default: the method's declared candidates);
  train_subset = N  build the method on a seeded subset of N training images (for methods whose cost grows with
      N, such as ELS); results name the method as usual and record the subset.
Giving the tuned quantity itself (e.g. `els = { patch_size = 5 }`, `pspc_flex = { threshold = 0.5 }`) fixes it.
With `all_denoisers = true` every registered denoiser runs, the table then only adding options.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch

from denoiserlab.data import ImageSet
from denoiserlab.denoisers import REGISTRY, create, load_schedule, tunable
from denoiserlab.denoisers.options import check_denoiser_options
from denoiserlab.denoisers.schedules import Tunable
from denoiserlab.errors import DenoiserLabError
from denoiserlab.process_group import in_process_group
from denoiserlab.studies.common.inputs import TrainingData

STUDY_KEYS = ("schedule", "candidates", "train_subset")  # keys of a [denoisers.NAME] table the study reads itself
FITTED_SOURCES = ("fitted", "calibrated")  # schedule sources a study fits itself
SUBSET_SEED = 0  # seed of the permutation that picks a method's train_subset


@dataclass(frozen=True)
class MethodSpec:
    """One configured analytical denoiser."""

    name: str  # registry name, also its label in results
    options: dict  # constructor options (study keys and the tuned value removed)
    tunable: Tunable | None  # what the study may tune (None: nothing)
    fixed: object = None  # the tuned value given in the config (then nothing is fitted)
    schedule: str = "fitted"  # where a tunable value comes from when not fixed (see the module docstring)
    candidates: tuple = ()  # values swept when fitting
    train_subset: int | None = None  # build on this many training images (seeded subset); None: all
    study_options: dict = field(default_factory=dict)  # the study keys as configured (part of cache keys)

    @property
    def fits(self) -> bool:
        """True when the study fits a value per network (a tunable method without a fixed value)."""
        return self.tunable is not None and self.fixed is None

    @property
    def per_network(self) -> bool:
        """True when the method differs per network: fitted to it, or built from its heatmaps."""
        return self.tunable is not None and (self.fixed is None or bool(self.tunable.needs))

    @property
    def key(self) -> dict:
        """Cache key of everything configured about the method."""
        return {"name": self.name, "options": self.options, "fixed": self.fixed, "study": self.study_options}


def configured_denoisers(table: dict[str, dict], all_denoisers: bool) -> dict[str, dict]:
    """name -> options as configured: the table, plus (all_denoisers) every registered denoiser it leaves out."""
    names = list(table) + ([name for name in REGISTRY if name not in table] if all_denoisers else [])
    return {name: dict(table.get(name, {})) for name in names}


def check_method_options(name: str, options: dict) -> None:
    """A [denoisers.NAME] table, checked before any data is loaded: constructor options (checked by the method's
    config dataclass), the study keys, and the tuned value if given."""
    try:
        method_spec(name, options)
    except DenoiserLabError as error:
        raise DenoiserLabError(f"denoisers.{name}: {error}") from None


def method_spec(name: str, options: dict) -> MethodSpec:
    """Split a [denoisers.NAME] table into constructor options, study keys and a fixed tuned value; checks all."""
    if name not in REGISTRY:
        raise DenoiserLabError(f"unknown denoiser {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    declared = tunable(name)
    study = {key: options[key] for key in STUDY_KEYS if key in options}
    if declared is None and set(study) & {"schedule", "candidates"}:
        raise DenoiserLabError(f"{sorted(set(study) & {'schedule', 'candidates'})} only apply to denoisers with a"
                               f" tunable option; {name!r} has none")
    constructor = {key: value for key, value in options.items() if key not in STUDY_KEYS}
    fixed = None if declared is None else constructor.pop(declared.name, None)
    if declared is not None and declared.option_name != declared.name and declared.option_name in constructor:
        raise DenoiserLabError(f"give {declared.name!r}; the study builds {declared.option_name!r} from it")
    if fixed is not None and ("schedule" in study or "candidates" in study):
        raise DenoiserLabError(f"{declared.name} = {fixed!r} fixes the value; 'schedule' and 'candidates' do not"
                               " apply then")
    if fixed is not None and declared.realise is None:
        check_denoiser_options(name, {**constructor, declared.name: fixed})  # the method checks its own value
    else:
        fixed = None if fixed is None else declared.check_value(fixed)
        check_denoiser_options(name, constructor, (declared.option_name,) if declared is not None else ())
    candidates = check_candidates(declared, study.get("candidates"))
    if declared is not None and declared.realise is None and "candidates" in study:
        for value in candidates:  # each swept value must be one the method takes (e.g. odd ELS patch sizes)
            check_denoiser_options(name, {**constructor, declared.name: value})
    return MethodSpec(name, constructor, declared, fixed, check_schedule_source(study.get("schedule", "fitted")),
                      candidates, check_subset(study.get("train_subset")), study)


def check_schedule_source(source: object) -> str:
    if not isinstance(source, str) or source == "":
        raise DenoiserLabError(f"schedule must be 'fitted', 'calibrated', 'cifar10' or a schedule file, got {source!r}")
    return source


def check_candidates(declared: Tunable | None, candidates: object) -> tuple:
    """The swept values: the configured list (each checked as the tuned quantity) or the declared candidates."""
    if declared is None:
        return ()
    if candidates is None:
        return declared.candidates
    if not isinstance(candidates, (list, tuple)) or len(candidates) == 0:
        raise DenoiserLabError(f"candidates must be a non-empty array, got {candidates!r}")
    return tuple(dict.fromkeys(declared.check_value(value) for value in candidates))  # repeats dropped, order kept


def check_subset(count: object) -> int | None:
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise DenoiserLabError(f"train_subset must be an integer >= 1, got {count!r}")
    return count


def named_schedule(spec: MethodSpec):
    """The schedule a `schedule` key names when the study does not fit it ('cifar10' or a file)."""
    return load_schedule(spec.schedule, spec.tunable.kind)


def method_images(data: TrainingData, spec: MethodSpec) -> ImageSet:
    """The (unflipped) training images a method is built on, with their labels: all of them, or a seeded subset of
    train_subset (the same images for every method with that count)."""
    images = data.imageset
    if spec.train_subset is None or spec.train_subset >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SUBSET_SEED))
    keep = order[: spec.train_subset].sort().values
    return replace(images, uint8=images.uint8[keep], labels=None if images.labels is None else images.labels[keep],
                   name=f"{images.name} (subset of {spec.train_subset})", load_options={})


def method_data_key(data: TrainingData, spec: MethodSpec) -> dict:
    """Cache key of the training images a method is built on."""
    return {**data.key, "train_subset": spec.train_subset, "subset_seed": SUBSET_SEED}


def build_method(spec: MethodSpec, data: TrainingData, value: object = None, inputs: dict | None = None):
    """The configured denoiser on its training images (flips as the study's unless its options say otherwise);
    `value` is the tuned value or schedule (None: the fixed one, else the method's default), `inputs` what the
    tunable needs (e.g. heatmaps)."""
    options = sharded_over_ranks(spec.name, with_disk_cache(spec.name, spec.options))
    if "xflip" not in options and "xflip" in inspect.signature(REGISTRY[spec.name]).parameters:
        options["xflip"] = data.xflip
    if spec.tunable is not None:
        if value is None:
            value = spec.fixed if spec.fixed is not None else default_value(spec)
        options.update(spec.tunable.options(value, inputs))
    return create(spec.name, method_images(data, spec), **options)


def with_disk_cache(name: str, options: dict) -> dict:
    """A copy of the options of denoiser `name` with cache=True when it takes a `cache` option and the options do
    not set one: studies and demos keep eigendecompositions in the user cache folder (a rerun, or another study on
    the same set, skips the covariance and eigh), while the denoisers write nothing to disk by default."""
    options = dict(options)
    if "cache" not in options and "cache" in inspect.signature(REGISTRY[name]).parameters:
        options["cache"] = True
    return options


def sharded_over_ranks(name: str, options: dict) -> dict:
    """A copy of the options of denoiser `name` with distributed=True when a torch.distributed process group is
    initialised (a study under torchrun), the denoiser takes that option and the options do not set it: each rank
    then holds one shard of the training set (`studies.common.ranks`)."""
    options = dict(options)
    if (in_process_group() and "distributed" not in options
            and "distributed" in inspect.signature(REGISTRY[name]).parameters):
        options["distributed"] = True
    return options


def default_value(spec: MethodSpec) -> object:
    """The tuned value used where the study fits nothing (Tunable.default_value)."""
    return spec.tunable.default_value(getattr(REGISTRY[spec.name], "config_class", None))
