"""Checks of `load`'s options, made before any file is read so a bad option fails at once."""

from __future__ import annotations

import numbers
import os

import numpy as np

from denoiserlab.data.splits import check_split
from denoiserlab.data.transforms import RESOLUTION_POLICIES
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_flag, check_seed


def check_source(source) -> None:
    """A source is a non-empty name or path: '' would mean the current folder, searched recursively."""
    if not isinstance(source, (str, os.PathLike)):
        raise DenoiserLabError(f"source must be a dataset name or a path, got {type(source).__name__}")
    if str(source).strip() == "":
        raise DenoiserLabError("source is empty; give a built-in dataset name or a path (use '.' for this folder)")


def check_load_options(split: str, subset: int | None, classes, resolution: int | None,
                       resolution_policy: str, channels: int | None, seed: int, subset_offset: int = 0,
                       xflip: bool = False) -> None:
    """Raise DenoiserLabError naming the first bad option and its value. Ranges that depend on the data
    (subset <= N, classes present) are checked where the data is known."""
    check_split(split)
    check_flag(xflip, "xflip")
    if subset is not None and not (_is_int(subset) and subset >= 1):
        raise DenoiserLabError(f"subset must be a positive number of images or None, got {subset!r}")
    if not (_is_int(subset_offset) and subset_offset >= 0):
        raise DenoiserLabError(f"subset_offset must be a non-negative number of images, got {subset_offset!r}")
    if subset_offset and subset is None:
        raise DenoiserLabError(f"subset_offset = {subset_offset} needs a subset size (subset is None)")
    if classes is not None and not _is_int_list(classes):
        raise DenoiserLabError(f"classes must be a non-empty list of integer labels or None, got {classes!r}")
    if resolution is not None and not (_is_int(resolution) and resolution >= 1):
        raise DenoiserLabError(f"resolution must be a positive side length in pixels or None, got {resolution!r}")
    if resolution_policy not in RESOLUTION_POLICIES:
        raise DenoiserLabError(
            f"unknown resolution_policy {resolution_policy!r}; valid: {', '.join(RESOLUTION_POLICIES)}"
        )
    if channels is not None and not (_is_int(channels) and channels in (1, 3)):
        raise DenoiserLabError(f"channels must be 1, 3 or None, got {channels!r}")
    check_seed(seed, "seed")


def _is_int(value) -> bool:
    """An integer that is not a bool (numpy integers count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_int_list(values) -> bool:
    """A non-empty sequence of integers."""
    try:
        values = list(values)
    except TypeError:
        return False
    return len(values) > 0 and all(_is_int(value) for value in values)


def held_out_options(training_options: dict) -> dict:
    """data.load keyword arguments of the held-out images matching a training set's (e.g. a network's
    training_data): the test split, every image (no subset, no subset offset), other options unchanged."""
    options = {**training_options, "split": "test", "subset": None}
    options.pop("subset_offset", None)
    return options
