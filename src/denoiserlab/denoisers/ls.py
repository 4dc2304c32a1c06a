"""LS: the local score machine (Kamb & Ganguli, "An analytic theory of creativity in convolutional diffusion
models", ICML 2025), local but not equivariant.

Output pixel (y, x) is the posterior mean of the centre pixel of the co-located zero-padded P x P windows of the
training images, given the query's window around (y, x) (all channels): weights
softmax_n(-|q_window - x_n window|^2 / (2 sigma^2)) over the N training images, one softmax per pixel. With
P >= 2 max(H, W) - 1 every window holds the whole image and LS is the optimal denoiser (larger sizes are clamped
there). Cost: B * N * H * W candidates, one exp each (`local_score.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.local_score import AxisCandidates, LocalScoreConfig, LocalScoreMachine, co_located_axis
from denoiserlab.denoisers.schedules import Tunable


@dataclass(frozen=True)
class LSConfig(LocalScoreConfig):
    """LS options: those of every local score machine."""


class LS(LocalScoreMachine):
    """Local score machine D(x, sigma); sigma may differ per sample (grouped by patch size)."""

    config_class = LSConfig
    tunable = Tunable("patch_size", "patch_size", (1, 3, 5, 7, 9, 11, 13, 15, 19, 23, 27, 31))
    name = "LS"

    def __init__(self, train: Tensor | ImageSet, patch_size: int | Callable[[float], int], xflip: bool = False,
                 kernel: str = "auto", chunk_size: int | None = None, storage: str = "auto",
                 distributed: bool = False):
        self.config = LSConfig(patch_size=patch_size, xflip=xflip, kernel=kernel, chunk_size=chunk_size,
                               storage=storage, distributed=distributed)
        super().__init__(train, xflip)

    def axes(self, size: int) -> tuple[AxisCandidates, AxisCandidates]:
        return co_located_axis(self.image_shape_[1], size // 2), co_located_axis(self.image_shape_[2], size // 2)

    def largest_useful_size(self) -> int | None:
        return 2 * max(self.image_shape_[1:]) - 1
