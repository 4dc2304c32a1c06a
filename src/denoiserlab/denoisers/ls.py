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
from denoiserlab.denoisers.local_score import AxisCandidates, LocalScoreMachine, check_local_options, co_located_axis
from denoiserlab.denoisers.schedules import Tunable
from denoiserlab.validation import check_flag


@dataclass(frozen=True)
class LSConfig:
    patch_size: int | Callable[[float], int] = 3  # odd window side P, or a schedule sigma -> P (PatchSchedule)
    xflip: bool = False  # also use the horizontal flip of every training image
    kernel: str = "auto"  # "compiled" (C kernel, CPU), "eager" (PyTorch, any device), "auto": compiled for CPU float32
    # training images per chunk (None: about 32 MiB of intermediates on the eager path, of float32 lanes on the
    # compiled path when streaming; streamed compiled chunks are rounded up to a multiple of 16)
    chunk_size: int | None = None
    # "ram": a float32 copy of the training set (and the C kernel's layout of it: 8 bytes a value), made once;
    # "stream": every call reads the set chunk by chunk from its storage (an ImageSet's uint8, memory-mapped or
    # not); "auto": ram for a float tensor and for an ImageSet whose copies fit in training_set.AUTO_RAM_BYTES
    # (1 GiB), else stream. Same results up to float32 summation order.
    storage: str = "auto"
    # shard the training set over the processes of an initialised torch.distributed group (rank r of W holds the
    # images [r N / W, (r + 1) N / W)); calls are collective and every rank gets the one-process result
    distributed: bool = False

    def __post_init__(self):
        check_local_options(self.patch_size, self.xflip, self.kernel, self.chunk_size, self.storage)
        check_flag(self.distributed, "distributed")


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
