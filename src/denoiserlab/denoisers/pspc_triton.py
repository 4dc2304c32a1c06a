"""A fused GPU path for PSPC-Square, written in Triton (which ships with CUDA builds of PyTorch).

The eager path (`pspc_square.square_composite`) materialises [B, n, H, W] per-pixel distance maps, their crop sums
and the crop weights in GPU memory for every chunk of training images, so it is bound by memory traffic. Here one
program takes one query and a block of training images and keeps everything per image on chip: the per-pixel
squared differences d = sum_c (z - x_n)^2, the crop distances D (window sums of d, as s row shifts then s column
shifts through a small per-program scratch tile, so only non-negative terms are added: no cancellation, as in
`box_filter.py`), and

- pass 1: each crop's running smallest distance m and sum of exp(-(D - m) g), g = 1 / (2 sigma^2);
- pass 2: the crop weights exp(-(D - m) g) / s, their transposed box sum (the weight of every pixel) and the
  weighted sum of the block's images.

Each program writes one partial per query (pass 1: m and the sum per crop; pass 2: a numerator image), and PyTorch
merges the partials in float64 (`streaming_softmax.merge_nearest_sums`, then a sum), so the answer is the eager
path's up to float32 summation order. Work per call: O(B N C H W + B N H W s) (the window sums cost s per pixel and
axis); memory: 8 B G P1 P2 + 4 B G C H W bytes of partials (G programs per query) plus 8 B G H' W' of scratch
(H', W' = H, W rounded up to powers of two).

Triton is imported on first use. `TRITON_INTERPRET=1` runs the same kernels on CPU tensors through Triton's
interpreter (slow; the tests use it to check the kernels against the eager path where no GPU is present).
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

from denoiserlab.denoisers import pspc_kernel
from denoiserlab.denoisers.box_filter import windows_per_pixel
from denoiserlab.denoisers.distributed import merge_nearest_sums_across, sum_across
from denoiserlab.denoisers.streaming_softmax import merged_nearest_sums
from denoiserlab.denoisers.training_set import TrainingImages
from denoiserlab.errors import DenoiserLabError

PROGRAMS_PER_CALL = 4096  # blocks of training images per chunk: B * G about this many, to fill a large GPU
DEFAULT_CHUNK_IMAGES = 1 << 16  # training images read to the device at a time


class TritonUnavailable(DenoiserLabError):
    """Triton cannot run here (not installed, or a CPU tensor without TRITON_INTERPRET=1)."""


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_available(device: torch.device) -> None:
    """Raise TritonUnavailable unless the Triton kernels can run on `device`."""
    if device.type != "cuda" and not interpreter_enabled():
        raise TritonUnavailable(f"the Triton kernel runs on CUDA devices (or on CPU with TRITON_INTERPRET=1), "
                                f"got a tensor on {device}")
    try:
        kernels()
    except ImportError as error:
        raise TritonUnavailable(f"the Triton kernel needs the triton package ({error})") from error


@functools.lru_cache(maxsize=1)
def kernels():
    """(pass 1, pass 2) as Triton kernels, imported on first use (importing triton is slow and optional)."""
    from denoiserlab.denoisers import pspc_triton_kernels

    return pspc_triton_kernels.normaliser_pass, pspc_triton_kernels.numerator_pass


def tile_sizes(channels: int, height: int, width: int) -> dict:
    """The kernels' block shapes (each side rounded up to a power of two) and warps per program: about 512 tile
    values per warp (16 per thread for each of the two image-sized tiles a pass-2 program holds), 4 to 16 warps."""
    tiles = {"CB": power_of_two(channels), "HB": power_of_two(height), "WB": power_of_two(width)}
    return {**tiles, "num_warps": max(4, min(16, tiles["CB"] * tiles["HB"] * tiles["WB"] // 512))}


def power_of_two(value: int) -> int:
    """The smallest power of two >= value (>= 1)."""
    return 1 << max(0, math.ceil(math.log2(value)))


def blocks(n_train: int, batch: int) -> tuple[int, int]:
    """(images per program P, programs per query G) for n_train images and `batch` queries."""
    per_program = max(8, math.ceil(n_train * batch / PROGRAMS_PER_CALL))
    return per_program, math.ceil(n_train / per_program)


def chunk_normalisers(queries: Tensor, chunk: Tensor, g: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pass 1 on one chunk: per query and crop, the smallest distance (float32 [B, P1, P2]) and the float64 sum of
    exp(-(D - m) g) over the chunk. queries [B, C, H, W] and chunk [n, C, H, W]: float32, contiguous, one device."""
    batch, channels, height, width = queries.shape
    per_program, n_programs = blocks(chunk.shape[0], batch)
    crop_shape = (batch, n_programs, height - size + 1, width - size + 1)
    minima = torch.empty(crop_shape, dtype=torch.float32, device=queries.device)
    sums = torch.empty(crop_shape, dtype=torch.float32, device=queries.device)
    tiles = tile_sizes(channels, height, width)
    scratch = torch.empty(batch * n_programs * 2 * tiles["HB"] * tiles["WB"], device=queries.device)
    kernels()[0][(batch, n_programs)](queries, chunk, g, minima, sums, scratch, chunk.shape[0], per_program,
                                      channels, height, width, size, **tiles)
    chunk_min = minima.amin(1)
    g64 = g.double()[:, None, None, None]
    chunk_sum = (sums.double() * torch.exp(-(minima - chunk_min[:, None]).double() * g64)).sum(1)
    return chunk_min, chunk_sum


def chunk_numerators(queries: Tensor, chunk: Tensor, g: Tensor, crop_min: Tensor, inverse_sum: Tensor,
                     size: int) -> Tensor:
    """Pass 2 on one chunk: float64 [B, C, H, W] sum over its images of x_n times their pixel weights."""
    batch, channels, height, width = queries.shape
    per_program, n_programs = blocks(chunk.shape[0], batch)
    parts = torch.empty(batch, n_programs, channels, height, width, device=queries.device)
    tiles = tile_sizes(channels, height, width)
    scratch = torch.empty(batch * n_programs * 2 * tiles["HB"] * tiles["WB"], device=queries.device)
    kernels()[1][(batch, n_programs)](queries, chunk, g, crop_min, inverse_sum, parts, scratch, chunk.shape[0],
                                      per_program, channels, height, width, size, **tiles)
    return parts.sum(1, dtype=torch.float64)


def square_composite_triton(x: Tensor, sigma: Tensor, train: TrainingImages, size: int,
                            chunk_size: int | None = None, distributed: bool = False) -> Tensor:
    """PSPC-Square composite by the fused kernels; the same contract as `pspc_square.square_composite`.
    x: [B, C, H, W]; sigma: [B]; train read a chunk at a time on x's device. Returns float64 [B, C, H, W]."""
    check_available(x.device)
    queries = x.float().contiguous()
    g = pspc_kernel.inverse_two_variance(sigma).to(x.device)
    chunk_size = min(chunk_size or DEFAULT_CHUNK_IMAGES, (2**31 - 1) // x[0].numel())  # int32 offsets in a chunk

    def chunks():
        for start in range(0, len(train), chunk_size):
            yield train.read(start, start + chunk_size, x.device).float().contiguous()

    crop_min, crop_sum = merged_nearest_sums((chunk_normalisers(queries, chunk, g, size) for chunk in chunks()),
                                             g.double()[:, None, None])
    if distributed:
        crop_min, crop_sum = merge_nearest_sums_across(crop_min, g.double()[:, None, None], crop_sum)
    crop_min, inverse_sum = crop_min.contiguous(), (1.0 / crop_sum).float().contiguous()
    numerators = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for chunk in chunks():
        numerators += chunk_numerators(queries, chunk, g, crop_min, inverse_sum, size)
    if distributed:
        numerators = sum_across(numerators)
    return numerators / windows_per_pixel(*x.shape[2:], size, device=x.device)
