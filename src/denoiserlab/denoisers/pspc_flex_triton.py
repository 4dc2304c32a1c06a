"""A fused GPU path for PSPC-Flex, written in Triton (which ships with CUDA builds of PyTorch).

The eager path (`pspc_flex.flex_composite`) materialises [B, n, H W] pixel differences, [B, n, U] crop distances
and their weights in GPU memory for every chunk of training images. Here a program takes one query and a block of
training images and keeps, per tile of BN images, the pixel differences d = sum_c (z - x_n)^2 of a tile of pixels
and the crop distances D = d M^T (M: the U distinct crops as 0/1 rows; an IEEE float32 tl.dot, a sum of
non-negative terms as in the eager path) on chip:

- pass 1 (programs over query, image block and crop tile): each crop's running smallest distance m and sum of
  exp(-(D - m) g), g = 1 / (2 sigma^2);
- pass 2 (programs over query and image block): the crop weights exp(-(D - m) g) / s, the pixel weights
  (weights times the crops' multiplicities and rows, a second tl.dot) and the weighted sum of the block's images.

PyTorch merges the per-program partials in float64 (`streaming_softmax.merge_nearest_sums`, then a sum), so the
answer is the eager path's up to float32 summation order; pixels covered by no crop keep the noisy input. Work per
call: O(B N U H W) multiply-adds in each pass (pass 2 recomputes the distances rather than storing B N U of them);
memory: 8 B G U + 4 B G C H W bytes of partials (G programs per query).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from denoiserlab.denoisers import pspc_kernel
from denoiserlab.denoisers.distributed import merge_nearest_sums_across, sum_across
from denoiserlab.denoisers.pspc_triton import DEFAULT_CHUNK_IMAGES, PROGRAMS_PER_CALL, check_available
from denoiserlab.denoisers.streaming_softmax import merged_nearest_sums
from denoiserlab.denoisers.training_set import TrainingImages

TILES = {"BN": 32, "BP": 64, "BU": 64}  # training images, pixels and crops per tile of a program


@functools.lru_cache(maxsize=1)
def kernels():
    """(pass 1, pass 2) as Triton kernels, imported on first use (importing triton is slow and optional)."""
    from denoiserlab.denoisers import pspc_flex_triton_kernels

    return pspc_flex_triton_kernels.flex_normaliser_pass, pspc_flex_triton_kernels.flex_numerator_pass


def flex_blocks(n_train: int, batch: int) -> tuple[int, int]:
    """(images per program P, a multiple of the image tile; programs per query G) for n_train images and `batch`
    queries."""
    tile = TILES["BN"]
    per_program = tile * max(1, math.ceil(n_train * batch / PROGRAMS_PER_CALL / tile))
    return per_program, math.ceil(n_train / per_program)


def chunk_normalisers(queries: Tensor, chunk: Tensor, masks_t: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Pass 1 on one chunk: per query and crop, the smallest distance (float32 [B, U]) and the float64 sum of
    exp(-(D - m) g) over the chunk. queries [B, C, P], chunk [n, C, P], masks_t [P, U]: float32, contiguous."""
    batch, channels, n_pixels = queries.shape
    n_crops = masks_t.shape[1]
    per_program, n_programs = flex_blocks(chunk.shape[0], batch)
    minima = torch.empty(batch, n_programs, n_crops, dtype=torch.float32, device=queries.device)
    sums = torch.empty_like(minima)
    grid = (batch, n_programs, math.ceil(n_crops / TILES["BU"]))
    kernels()[0][grid](queries, chunk, masks_t, g, minima, sums, chunk.shape[0], per_program, channels, n_pixels,
                       n_crops, **TILES)
    chunk_min = minima.amin(1)
    chunk_sum = (sums.double() * torch.exp(-(minima - chunk_min[:, None]).double() * g.double()[:, None, None])).sum(1)
    return chunk_min, chunk_sum


def chunk_numerators(queries: Tensor, chunk: Tensor, masks_t: Tensor, crop_weights: Tensor, g: Tensor,
                     crop_min: Tensor, inverse_sum: Tensor) -> Tensor:
    """Pass 2 on one chunk: float64 [B, C, P] sum over its images of x_n times their pixel weights."""
    batch, channels, n_pixels = queries.shape
    per_program, n_programs = flex_blocks(chunk.shape[0], batch)
    parts = torch.zeros(batch, n_programs, channels, n_pixels, device=queries.device)
    kernels()[1][(batch, n_programs)](queries, chunk, masks_t, crop_weights, g, crop_min, inverse_sum, parts,
                                      chunk.shape[0], per_program, channels, n_pixels, masks_t.shape[1], **TILES)
    return parts.sum(1, dtype=torch.float64)


def flex_composite_triton(x: Tensor, sigma: Tensor, train: TrainingImages, masks: Tensor, counts: Tensor,
                          chunk_size: int | None = None, distributed: bool = False) -> Tensor:
    """PSPC-Flex composite by the fused kernels; the contract of `pspc_flex.flex_composite` with the crop set as
    masks (0/1 float32 [U, H W]) and counts (float32 [U], multiplicities) on x's device. x: [B, C, H, W]; sigma: [B];
    train read a chunk at a time on x's device. Returns float64 [B, C, H, W]."""
    check_available(x.device)
    queries = x.float().flatten(2).contiguous()
    g = pspc_kernel.inverse_two_variance(sigma).to(x.device)
    masks_t = masks.float().T.contiguous()
    crop_weights = (masks.float() * counts.float()[:, None]).contiguous()
    chunk_size = min(chunk_size or DEFAULT_CHUNK_IMAGES, (2**31 - 1) // x[0].numel())  # int32 offsets in a chunk

    def chunks():
        for start in range(0, len(train), chunk_size):
            yield train.read(start, start + chunk_size, x.device).float().flatten(2).contiguous()

    crop_min, crop_sum = merged_nearest_sums((chunk_normalisers(queries, chunk, masks_t, g) for chunk in chunks()),
                                             g.double()[:, None])
    if distributed:
        crop_min, crop_sum = merge_nearest_sums_across(crop_min, g.double()[:, None], crop_sum)
    crop_min, inverse_sum = crop_min.contiguous(), (1.0 / crop_sum).float().contiguous()
    numerators = torch.zeros(queries.shape, dtype=torch.float64, device=x.device)
    for chunk in chunks():
        numerators += chunk_numerators(queries, chunk, masks_t, crop_weights, g, crop_min, inverse_sum)
    if distributed:
        numerators = sum_across(numerators)  # before the uncovered pixels take x, which no rank must add twice
    coverage = counts.double() @ masks.double()
    composite = torch.where(coverage > 0, numerators / coverage.clamp(min=1), x.double().flatten(2))
    return composite.reshape(x.shape)
