"""Sums over all s x s windows of an image (a box filter, stride 1, no padding) and its transpose.

Both are built from block-restarted prefix sums (van Herk 1992; Gil & Werman 1993): split a line into blocks of
length s; a window starting at i is (suffix of i's block from i) + (prefix of the next block up to i + s - 1).
That costs O(1) per output for any s, like an integral image, but only ever adds non-negative terms: an integral
image subtracts two large running totals, which in float32 loses the small crop distances that decide the
softmax at sigma = 0.002.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def window_sums_last_dim(values: Tensor, size: int) -> Tensor:
    """out[..., i] = sum_{j < size} values[..., i + j]: [..., L] -> [..., L - size + 1]."""
    length = values.shape[-1]
    n_out = length - size + 1
    n_blocks = -(-length // size)
    blocks = F.pad(values, (0, n_blocks * size - length)).unflatten(-1, (n_blocks, size))  # [..., n_blocks, size]
    prefix = blocks.cumsum(-1).flatten(-2)  # sum from the block start to i
    suffix = blocks.flip(-1).cumsum(-1).flip(-1).flatten(-2)  # sum from i to the block end
    starts_block = torch.arange(n_out, device=values.device) % size == 0
    head = prefix[..., size - 1 : size - 1 + n_out].masked_fill(starts_block, 0)
    return suffix[..., :n_out] + head


def box_sums(values: Tensor, size: int) -> Tensor:
    """Sums over every size x size window: [..., H, W] -> [..., H - size + 1, W - size + 1]."""
    rows = window_sums_last_dim(values, size)
    return window_sums_last_dim(rows.transpose(-1, -2), size).transpose(-1, -2)


def box_sums_transposed(crop_values: Tensor, size: int) -> Tensor:
    """Adjoint of `box_sums`: each pixel gets the sum over the windows that contain it.

    crop_values: [..., H - size + 1, W - size + 1] -> [..., H, W] (zero padding by size - 1 on every side).
    """
    pad = size - 1
    return box_sums(F.pad(crop_values, (pad, pad, pad, pad)), size)


def windows_per_pixel(height: int, width: int, size: int, device: torch.device | str = "cpu") -> Tensor:
    """How many size x size windows contain each pixel: float64 [H, W]."""
    ones = torch.ones(height - size + 1, width - size + 1, dtype=torch.float64, device=device)
    return box_sums_transposed(ones, size)
