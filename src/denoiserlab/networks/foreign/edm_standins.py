"""Our own stand-ins for the modules that NVlabs/edm network pickles import: `torch_utils`, `torch_utils.persistence`,
`torch_utils.misc`, `dnnlib` and `dnnlib.util`.

An EDM pickle stores each network class as the full source of the Python module that defined it (EDM's
`torch_utils.persistence`), and that source starts with `from torch_utils import persistence` and decorates its
classes with `@persistence.persistent_class`. To run it we only need modules under those names that provide what
the source uses; these are written here, installed in `sys.modules` only while a pickle is read
(`installed_modules`), and never require EDM's repository.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import numpy as np
import torch


class EasyDict(dict):
    """A dict whose keys are also attributes (stand-in for `dnnlib.util.EasyDict`, which EDM pickles reference)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


def persistent_class(cls: type) -> type:
    """Stand-in for EDM's class decorator: returns the class unchanged.

    EDM's decorator makes instances pickle their module source; we only read such pickles, so the classes that the
    embedded source defines can stay as they are.
    """
    return cls


def constant(value, shape=None, dtype=None, device=None, memory_format=None) -> torch.Tensor:
    """Stand-in for EDM's `misc.constant`: `value` as a tensor (broadcast to `shape`), default dtype, CPU by default."""
    tensor = torch.as_tensor(np.asarray(value), dtype=dtype or torch.get_default_dtype(), device=device or "cpu")
    if shape is not None:
        tensor = tensor.broadcast_to(tuple(shape))
    return tensor.contiguous(memory_format=memory_format or torch.contiguous_format)


def const_like(ref: torch.Tensor, value, shape=None, dtype=None, device=None, memory_format=None) -> torch.Tensor:
    """Stand-in for EDM2's `misc.const_like`: `constant` with `ref`'s dtype and device unless given."""
    return constant(value, shape, dtype or ref.dtype, device or ref.device, memory_format)


def _module(name: str, doc: str, **attributes) -> types.ModuleType:
    """A fresh module object `name` holding `attributes`."""
    module = types.ModuleType(name, doc)
    module.__dict__.update(attributes)
    return module


def standin_modules() -> dict[str, types.ModuleType]:
    """Fresh stand-in modules keyed by the names EDM's code and pickles import them under."""
    persistence = _module("torch_utils.persistence", "denoiserlab stand-in", persistent_class=persistent_class)
    misc = _module("torch_utils.misc", "denoiserlab stand-in", constant=constant, const_like=const_like)
    util = _module("dnnlib.util", "denoiserlab stand-in", EasyDict=EasyDict)
    return {
        "torch_utils": _module("torch_utils", "denoiserlab stand-in", persistence=persistence, misc=misc),
        "torch_utils.persistence": persistence,
        "torch_utils.misc": misc,
        "dnnlib": _module("dnnlib", "denoiserlab stand-in", util=util, EasyDict=EasyDict),
        "dnnlib.util": util,
    }


@contextlib.contextmanager
def installed_modules(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """Put `modules` into `sys.modules` for the duration of the block, then restore what was there before."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
