"""PSPC-Flex crops from gradient heatmaps (Niedoba et al. 2025, section 5), and loading crops from files.

Rule for output pixel (y, x), crop k = y * W + x: take its sensitivity map heatmap[y, x] ([H, W], non-negative),
normalise it to sum 1, sort the pixels ascending, take the cumulative sum, and keep the pixels whose cumulative sum
is >= 1 - lam. The pixel where the sum crosses 1 - lam is kept, so the kept mass is >= lam; lam = 1 keeps every
pixel. Ties between equal heatmap values are broken by a stable sort on the flattened index y' * W + x' (the lower
index comes first in ascending order, so it is dropped first). The largest pixel is always kept, so that rounding
never leaves a crop empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError


def check_heatmap(heatmap: Tensor) -> Tensor:
    """A heatmap must be a finite, non-negative float tensor [H, W, H, W] whose maps each have a positive sum."""
    if not isinstance(heatmap, Tensor) or not heatmap.is_floating_point():
        raise DenoiserLabError(f"heatmap must be a float tensor [H, W, H, W], got {type(heatmap).__name__}")
    if heatmap.ndim != 4 or heatmap.shape[:2] != heatmap.shape[2:]:
        raise DenoiserLabError(f"heatmap must have shape [H, W, H, W], got {tuple(heatmap.shape)}")
    if not torch.isfinite(heatmap).all() or (heatmap < 0).any():
        raise DenoiserLabError("heatmap must be finite and non-negative")
    if (heatmap.flatten(2).sum(2) <= 0).any():
        raise DenoiserLabError("every heatmap[y, x] needs a positive sum; some are all zero")
    return heatmap


def check_threshold(lam: float) -> float:
    """lam must be a number in (0, 1]."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= 1:
        raise DenoiserLabError(f"the threshold lam must be a number in (0, 1], got {lam!r}")
    return float(lam)


def flex_masks(heatmap: Tensor, lam: float) -> Tensor:
    """Crops from a heatmap [H, W, H, W] at threshold lam (module docstring): bool [H * W, H, W], crop y * W + x."""
    check_heatmap(heatmap)
    lam = check_threshold(lam)
    height, width = heatmap.shape[:2]
    maps = heatmap.double().reshape(height * width, height * width)  # [crop, pixel]
    maps = maps / maps.sum(1, keepdim=True)
    ascending, order = maps.sort(dim=1, stable=True)
    keep = ascending.cumsum(1) >= 1 - lam
    keep[:, -1] = True
    masks = torch.zeros_like(keep).scatter_(1, order, keep)
    return masks.reshape(height * width, height, width)


class HeatmapMasks:
    """sigma -> flex_masks(heatmap, thresholds(sigma)), e.g. with a ThresholdSchedule; one tensor per threshold."""

    def __init__(self, heatmap: Tensor, thresholds: Callable[[float], float]):
        self.heatmap_ = check_heatmap(heatmap)
        self.thresholds = thresholds
        self._masks = {}  # threshold -> masks, so equal thresholds give the same tensor

    def __call__(self, sigma: float) -> Tensor:
        lam = check_threshold(self.thresholds(sigma))
        if lam not in self._masks:
            self._masks[lam] = flex_masks(self.heatmap_, lam)
        return self._masks[lam]


class GridHeatmapMasks:
    """sigma -> PSPC-Flex crops flex_masks(heatmaps[i], thresholds(sigma)), i the grid point nearest in sigma.

    heatmaps: float [L, H, W, H, W] on the grid `sigmas` [L]; thresholds: a callable sigma -> lambda (e.g. a
    ThresholdSchedule or a ConstantThreshold). Masks are made once per (grid point, lambda).
    """

    def __init__(self, heatmaps: Tensor, sigmas: Tensor, thresholds: Callable[[float], float]):
        self.heatmaps_ = heatmaps
        self.sigmas_ = sigmas.double()
        self.thresholds = thresholds
        self._masks = {}

    def __call__(self, sigma: float) -> Tensor:
        level = int((self.sigmas_ - float(sigma)).abs().argmin())
        lam = check_threshold(self.thresholds(sigma))
        if (level, lam) not in self._masks:
            self._masks[(level, lam)] = flex_masks(self.heatmaps_[level], lam)
        return self._masks[(level, lam)]


class ConstantThreshold:
    """The threshold schedule sigma -> lam for every sigma (a named class, so it shows in reprs and keys)."""

    def __init__(self, lam: float):
        self.lam = lam

    def __call__(self, sigma: float) -> float:
        return self.lam


def masks_from_heatmaps(thresholds: float | Callable[[float], float], inputs: dict) -> GridHeatmapMasks:
    """PSPC-Flex's `masks` option from a threshold (or schedule sigma -> threshold) and a network's heatmaps:
    inputs {"heatmaps": float [L, H, W, H, W], "heatmap_sigmas": float64 [L]} (PSPCFlex.tunable.realise)."""
    schedule = thresholds if callable(thresholds) else ConstantThreshold(check_threshold(thresholds))
    return GridHeatmapMasks(inputs["heatmaps"], inputs["heatmap_sigmas"], schedule)


def read_array(path: str | Path) -> Tensor:
    """The one array in a .npy, .npz (a single array, or the key 'masks' or 'heatmap') or .pt file, as a tensor."""
    path = Path(path)
    if not path.exists():
        raise DenoiserLabError(f"mask file {str(path)!r} does not exist")
    if not path.is_file():
        raise DenoiserLabError(f"mask file {str(path)!r} is not a regular file")
    if path.suffix not in (".npy", ".npz", ".pt"):
        raise DenoiserLabError(f"mask files end in .npy, .npz or .pt, got {str(path)!r}")
    try:
        value = _read_array_file(path)
    except DenoiserLabError:
        raise
    except Exception as error:  # numpy, zip and torch raise many types for a damaged file; all mean "unreadable"
        raise DenoiserLabError(f"cannot read mask file {str(path)!r} ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else 'no details'})") from None
    if not isinstance(value, Tensor):
        raise DenoiserLabError(f"{str(path)!r} must hold a single tensor, got {type(value).__name__}")
    return value


def _read_array_file(path: Path) -> Tensor | object:
    """The array of a .npy, .npz or .pt file, read without unpickling anything but tensors (may raise anything)."""
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = [key for key in ("masks", "heatmap") if key in archive.files] or archive.files
            if len(keys) != 1:
                raise DenoiserLabError(f"{str(path)!r} must hold one array, or one named 'masks' or 'heatmap'; "
                                       f"has {archive.files}")
            return torch.from_numpy(archive[keys[0]])
    return torch.load(path, map_location="cpu", weights_only=True)


def load_masks(path: str | Path, lam: float | Callable[[float], float] | None = None) -> Tensor | HeatmapMasks:
    """PSPC-Flex crops from a file: a bool array [K, H, W] as is, or a float heatmap [H, W, H, W] with `lam`
    (a threshold, giving a tensor; or a schedule such as ThresholdSchedule, giving a HeatmapMasks)."""
    array = read_array(path)
    if array.dtype == torch.bool:
        if array.ndim != 3:
            raise DenoiserLabError(f"bool masks in {str(path)!r} must have shape [K, H, W], got {tuple(array.shape)}")
        if lam is not None:
            raise DenoiserLabError(f"{str(path)!r} holds bool masks already; a threshold lam does not apply")
        return array
    if not array.is_floating_point():
        raise DenoiserLabError(f"{str(path)!r} must hold bool masks [K, H, W] or a float heatmap [H, W, H, W], "
                               f"got dtype {array.dtype}")
    if lam is None:
        raise DenoiserLabError(f"{str(path)!r} holds a heatmap; give a threshold lam (or a threshold schedule) "
                               "to make masks")
    heatmap = check_heatmap(array)
    return HeatmapMasks(heatmap, lam) if callable(lam) else flex_masks(heatmap, lam)
