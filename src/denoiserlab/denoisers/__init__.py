"""Analytical denoisers, each a callable den(x, sigma), and a registry to build them by name."""

from __future__ import annotations

import inspect

from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.cfdm import CFDM
from denoiserlab.denoisers.data_locality import DataLocality
from denoiserlab.denoisers.els import ELS
from denoiserlab.denoisers.gaussian import GaussianDenoiser
from denoiserlab.denoisers.gaussian_mixture import GaussianMixture
from denoiserlab.denoisers.knn import KNNDenoiser
from denoiserlab.denoisers.ls import LS
from denoiserlab.denoisers.optimal import OptimalDenoiser
from denoiserlab.denoisers.flex_masks import HeatmapMasks, flex_masks, load_masks
from denoiserlab.denoisers.patch_posterior import patch_posterior, square_crop
from denoiserlab.denoisers.pspc_flex import PSPCFlex
from denoiserlab.denoisers.pspc_square import PSPCSquare
from denoiserlab.denoisers.schedules import (
    PatchSchedule,
    SmoothingSchedule,
    ThresholdSchedule,
    Tunable,
    load_schedule,
)
from denoiserlab.errors import DenoiserLabError

REGISTRY = {
    "optimal": OptimalDenoiser,
    "gaussian": GaussianDenoiser,
    "pspc_square": PSPCSquare,
    "pspc_flex": PSPCFlex,
    "cfdm": CFDM,
    "els": ELS,
    "ls": LS,
    "data_locality": DataLocality,
    "knn": KNNDenoiser,
    "gaussian_mixture": GaussianMixture,
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


def tunable(name: str) -> Tunable | None:
    """The option the denoiser registered as `name` declares for fitting per sigma, with its candidates, or None."""
    if name not in REGISTRY:
        raise DenoiserLabError(f"unknown denoiser {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name].tunable


__all__ = ["REGISTRY", "create", "tunable", "OptimalDenoiser", "GaussianDenoiser", "PSPCSquare", "PSPCFlex", "CFDM",
           "ELS", "LS", "DataLocality", "KNNDenoiser", "GaussianMixture", "PatchSchedule", "ThresholdSchedule",
           "SmoothingSchedule", "Tunable", "load_schedule", "flex_masks", "load_masks", "HeatmapMasks",
           "patch_posterior", "square_crop"]
