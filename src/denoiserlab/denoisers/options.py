"""Check a registered denoiser's options before any data is loaded (e.g. when a study config loads), so that a bad
option fails at once rather than after minutes of other stages."""

from __future__ import annotations

import dataclasses
import inspect

import torch

from denoiserlab.errors import DenoiserLabError

# Valid stand-ins for required config fields that a caller (a study) supplies itself, so the remaining options can
# be checked by the method's config dataclass before that value exists.
STAND_INS = {"masks": lambda: torch.ones(1, 1, 1, dtype=torch.bool), "patch_size": lambda: 1}


def check_denoiser_options(name: str, options: dict, supplied: tuple[str, ...] = ()) -> None:
    """Every key of `options` must be a constructor option of denoiser `name` (other than `supplied`, which the
    caller sets), and the method's config dataclass (its `config_class`) must accept the values: types and ranges
    are checked there (STYLE section 8). Checks that need the data (e.g. rank <= C*H*W) come when it is loaded."""
    from denoiserlab.denoisers import REGISTRY

    if name not in REGISTRY:
        raise DenoiserLabError(f"unknown denoiser {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    allowed = [key for key in inspect.signature(cls).parameters if key != "train" and key not in supplied]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DenoiserLabError(f"unknown option(s) {unknown} for denoiser {name!r}; valid options: {allowed}")
    config_class = getattr(cls, "config_class", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):
        return
    fields = {field.name: field for field in dataclasses.fields(config_class) if field.init}
    values = {key: value for key, value in options.items() if key in fields}
    for field in fields.values():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and field.name not in values:
            if field.name not in STAND_INS:
                return  # a required value we cannot stand in for: the constructor checks it later
            values[field.name] = STAND_INS[field.name]()
    config_class(**values)
