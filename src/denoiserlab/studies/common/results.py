"""Results plumbing both studies share: strict-JSON values (NaN and infinities as null) and package versions."""

from __future__ import annotations

import math
import platform

import numpy as np
import torch
from torch import Tensor

from denoiserlab import __version__


def plain(value):
    """Tensors, arrays and nested containers as JSON-able lists / numbers; non-finite floats as None."""
    if isinstance(value, (Tensor, np.ndarray)):
        value = value.tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def versions() -> dict:
    """Versions of the packages (and Python) that made a result."""
    return {"denoiserlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
