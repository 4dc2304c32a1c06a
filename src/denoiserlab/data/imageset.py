"""ImageSet: a named set of uint8 images [N, C, H, W] with optional labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from denoiserlab.validation import check_memory


@dataclass(frozen=True)
class ImageSet:
    """Images kept as uint8 [N, C, H, W] (values 0..255); `as_float()` maps them to float32 in [-1, 1]."""

    uint8: Tensor  # [N, C, H, W], dtype uint8; may be a view of a memory-mapped .npy (a cache entry or a .npy source,
    # strided when the file is NHWC), so the set need not fit in memory: read it with as_float(start, stop) or chunks
    labels: Tensor | None  # [N] int64 class labels, or None when the source has none
    name: str  # short description, e.g. "fashion-mnist/train"
    load_options: dict = field(default_factory=dict)  # keyword arguments of data.load that rebuild this set

    def __len__(self) -> int:
        return int(self.uint8.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        return tuple(self.uint8.shape[1:])

    def as_float(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Images [start:stop] as float32 [n, C, H, W] in [-1, 1] (x / 127.5 - 1)."""
        return uint8_to_float(self.uint8[start:stop])

    def chunks(self, chunk_size: int = 4096):
        """Yield float32 chunks [<=chunk_size, C, H, W] in [-1, 1], so large sets never sit in memory as floats."""
        for start in range(0, len(self), chunk_size):
            yield self.as_float(start, start + chunk_size)


def uint8_to_float(images: Tensor) -> Tensor:
    """uint8 [..] in 0..255 -> contiguous float32 [..] in [-1, 1] (x / 127.5 - 1, whatever the input's strides)."""
    images = torch.as_tensor(images)
    check_memory(4 * images.numel(), f"{tuple(images.shape)} images as float32")
    return scale_to_unit_range_(images.to(torch.float32, memory_format=torch.contiguous_format))


def scale_to_unit_range_(values: Tensor) -> Tensor:
    """In place: float32 pixel values 0..255 -> [-1, 1] as x / 127.5 - 1 (the conversion of `uint8_to_float`, for
    callers that lay pixels out in their own buffer first); returns `values`."""
    return values.div_(127.5).sub_(1.0)


def float_to_uint8(images: Tensor) -> Tensor:
    """float [..] in [-1, 1] -> uint8 [..] in 0..255 (clamped, rounded)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
