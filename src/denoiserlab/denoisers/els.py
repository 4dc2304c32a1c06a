"""ELS: the equivariant local score machine (Kamb & Ganguli, "An analytic theory of creativity in convolutional
diffusion models", ICML 2025).

Output pixel (y, x) is the posterior mean of the centre pixel of candidate P x P patches, given the query's P x P
window around (y, x) (all channels); weights softmax(-|q_window - c_window|^2 / (2 sigma^2)) over the candidates.
  padding="circular": query and training images are padded circularly; the candidates are the patches at all H * W
    positions of every training image (translation equivariant on the torus).
  padding="zeros" (the boundary-broken machine that matches zero-padded networks): query and training images are
    zero-padded by r = P // 2; along each axis an output coordinate within r of an edge takes only candidates at
    its own coordinate, an interior one candidates at every interior coordinate (r .. size - r - 1). Interior pixels
    see every fully inside patch of every image, edge pixels the patches of their edge row or column, corners the
    co-located patches. With P >= H + 1 and P >= W + 1 every pixel is an edge pixel: ELS is then LS, and with
    P >= 2 max(H, W) - 1 (where sizes are clamped) the optimal denoiser.
Cost: B * N * (H W)^2 candidates with circular padding (fewer with zeros), one exp each, the floor of the method;
the window distances come from window sums (`local_score.py`), so P enters only through them (plain sums up to
P = 5, van Herk blocks beyond), never as P^2. The C kernel runs at 3-5x that floor for P <= 5 on one core
(benchmarks/bench_peers.py prints the floor, the time per call and the ratio to a naive per-pixel loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.local_score import (
    AxisCandidates,
    LocalScoreConfig,
    LocalScoreMachine,
    circular_axis,
    zero_padded_axis,
)
from denoiserlab.denoisers.schedules import Tunable
from denoiserlab.errors import DenoiserLabError

PADDINGS = ("zeros", "circular")


@dataclass(frozen=True)
class ELSConfig(LocalScoreConfig):
    """ELS options: those of every local score machine, and the padding."""

    padding: str = "zeros"  # "zeros" (boundary-broken, like zero-padded networks) or "circular" (equivariant)

    def __post_init__(self):
        super().__post_init__()
        if self.padding not in PADDINGS:
            raise DenoiserLabError(f"padding must be one of {PADDINGS}, got {self.padding!r}")


class ELS(LocalScoreMachine):
    """Equivariant local score machine D(x, sigma); sigma may differ per sample (grouped by patch size)."""

    config_class = ELSConfig
    tunable = Tunable("patch_size", "patch_size", (1, 3, 5, 7, 9, 11, 13, 15, 19, 23, 27, 31))
    name = "ELS"

    def __init__(self, train: Tensor | ImageSet, patch_size: int | Callable[[float], int], padding: str = "zeros",
                 xflip: bool = False, kernel: str = "auto", chunk_size: int | None = None, storage: str = "auto",
                 distributed: bool = False):
        self.config = ELSConfig(patch_size=patch_size, padding=padding, xflip=xflip, kernel=kernel,
                                chunk_size=chunk_size, storage=storage, distributed=distributed)
        super().__init__(train, xflip)

    def axes(self, size: int) -> tuple[AxisCandidates, AxisCandidates]:
        make_axis = circular_axis if self.config.padding == "circular" else zero_padded_axis
        return make_axis(self.image_shape_[1], size // 2), make_axis(self.image_shape_[2], size // 2)

    def largest_useful_size(self) -> int | None:
        # zero padding: from 2 max(H, W) - 1 on, every window holds the whole image (the optimal denoiser)
        return None if self.config.padding == "circular" else 2 * max(self.image_shape_[1:]) - 1
