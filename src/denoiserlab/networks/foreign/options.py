"""Checks for the options shared by the foreign-network loaders: `training_data` and `class_label`."""

from __future__ import annotations

import inspect

from denoiserlab.errors import DenoiserLabError


def check_training_data(training_data: dict | None) -> dict | None:
    """Check that `training_data` is None or keyword arguments of `denoiserlab.data.load`; returns a copy."""
    if training_data is None:
        return None
    from denoiserlab.data import load as load_data

    if not isinstance(training_data, dict):
        raise DenoiserLabError(
            f"training_data must be a dict of denoiserlab.data.load arguments, got {type(training_data).__name__}"
        )
    allowed = set(inspect.signature(load_data).parameters)
    unknown = sorted(set(training_data) - allowed)
    if unknown:
        raise DenoiserLabError(
            f"training_data has unknown keys {unknown}; denoiserlab.data.load accepts {sorted(allowed)}"
        )
    return dict(training_data)


def check_class_label(class_label: int | None, n_classes: int, network: str) -> int | None:
    """Check `class_label` against a network with `n_classes` classes (0: unconditional); returns it."""
    if n_classes == 0 and class_label is not None:
        raise DenoiserLabError(f"{network} is unconditional, so class_label must be None, got {class_label!r}")
    if n_classes > 0 and class_label is None:
        raise DenoiserLabError(
            f"{network} is class-conditional ({n_classes} classes): pass class_label=<0..{n_classes - 1}>"
        )
    if class_label is not None and not (type(class_label) is int and 0 <= class_label < n_classes):
        raise DenoiserLabError(f"class_label must be an int in [0, {n_classes - 1}], got {class_label!r}")
    return class_label
