"""Analytical denoisers, each a callable den(x, sigma), and a registry to build them by name."""

from __future__ import annotations

import inspect

from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.gaussian import GaussianDenoiser
from denoiserlab.denoisers.optimal import OptimalDenoiser
from denoiserlab.denoisers.flex_masks import HeatmapMasks, flex_masks, load_masks
from denoiserlab.denoisers.patch_posterior import patch_posterior, square_crop
from denoiserlab.denoisers.pspc_flex import PSPCFlex
from denoiserlab.denoisers.pspc_square import PSPCSquare
from denoiserlab.denoisers.schedules import PatchSchedule, ThresholdSchedule, load_schedule
from denoiserlab.errors import DenoiserLabError

REGISTRY = {
    "optimal": OptimalDenoiser,
    "gaussian": GaussianDenoiser,
    "pspc_square": PSPCSquare,
    "pspc_flex": PSPCFlex,
}


def create(name: str, train: Tensor | ImageSet, **options):
    """Build the denoiser registered as `name` on the training images `train` with its `options`."""
    if name not in REGISTRY:
        raise DenoiserLabError(f"unknown denoiser {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    allowed = [p for p in inspect.signature(cls).parameters if p != "train"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DenoiserLabError(f"unknown option(s) {unknown} for denoiser {name!r}; valid options: {allowed}")
    return cls(train, **options)


__all__ = ["REGISTRY", "create", "OptimalDenoiser", "GaussianDenoiser", "PSPCSquare", "PSPCFlex", "PatchSchedule",
           "ThresholdSchedule", "load_schedule", "flex_masks", "load_masks", "HeatmapMasks", "patch_posterior",
           "square_crop"]
