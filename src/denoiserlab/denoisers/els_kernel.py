"""A compiled CPU kernel for the local score machines (ELS and LS): one fused pass, vectorised and threaded.

The eager PyTorch path in `local_score.py` is the readable reference; this kernel (`kernels/els.c`, built and loaded
like the PSPC kernel by `pspc_kernel.compiled_library`: declared ctypes signature, checked allocations, compiler
timeout, a failed build remembered with a fallback to PyTorch) computes the same posterior means with the layout of
`pspc_kernel.py`: 16 training images side by side, one per SIMD lane, the training set split into shares summed by
Python threads. For each training block it first copies the block, for all queries, into a layout read through the
padding, so that every window row is a run of consecutive columns; then, per query and pair of axis offsets
(dy, dx), it
  1. forms the per-pixel squared differences e[u][v] = sum_c (q[c][u][v] - x[c][u + dy][v + dx])^2 of each padded
     row and, in the same pass, their window sums along the row (plain sums for P <= 5, else van Herk blocks: no
     cancellation, O(1) per window for any P),
  2. sums P of those rows for each output row, and
  3. folds each output pixel's candidate into its running softmax, one exp per (pixel, candidate), a whole output
     row per flat loop, relative to a reference distance near the nearest one (robust at any sigma). While the
     references allow no weight above 2^100, steps 2 and 3 are one loop and a reference is moved only when a
     candidate outweighs it by 2^8; otherwise (the first block, a small sigma) each row is first compared with
     the references, skipped when all its weights are 0 in float32, and folded with the online update.
Float32 lanes are folded into float64 sums every 1024 candidates per lane; the shares are merged in float64.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from denoiserlab.denoisers.pspc_kernel import (
    LANES,
    check_status,
    compiled_library,
    inverse_two_variance,
    run_parts,
    training_lanes,
)
from denoiserlab.denoisers.training_set import TrainingImages

_c_int, _pointer_type = ctypes.c_int, ctypes.c_void_p
# z, lanes, (B, C, H, W, N, s, circular), rows (n, offset, first, last), columns (same), inv_two_var, the three
# outputs, part, parts: as in kernels/els.c
ELS_SIGNATURES = {
    "els_part": (_c_int, [_pointer_type, _pointer_type, *[_c_int] * 7, _c_int, *[_pointer_type] * 3, _c_int,
                          *[_pointer_type] * 3, *[_pointer_type] * 4, _c_int, _c_int]),
    "els_exp2_sum": (ctypes.c_double, [_pointer_type, ctypes.c_long, _c_int]),  # the fold's exp alone (benchmarks)
}

BLOCKS_PER_SHARE = 8  # training blocks a share should hold: each share's first block folds with the slower checks


def load_library() -> ctypes.CDLL:
    """The compiled ELS / LS kernel (kernels/els.c), built on first use (see `pspc_kernel.compiled_library`)."""
    return compiled_library("els.c", "els", ELS_SIGNATURES)


def _pointer(tensor: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def n_shares(n_blocks: int, threads: int) -> int:
    """Shares of the training set, each with its own partial sums: one on one thread; else a few per thread (so that
    a thread slowed by other jobs does not hold up the others) while each share keeps about BLOCKS_PER_SHARE blocks
    to settle its references in, and at least one per thread."""
    if threads == 1:
        return 1
    return max(1, min(n_blocks, max(threads, min(4 * threads, n_blocks // BLOCKS_PER_SHARE))))


def _axis_arguments(offsets: Tensor, first: Tensor, last: Tensor) -> list:
    """ctypes arguments of one axis: its number of offsets and int32 offsets, first, last [n]."""
    return [ctypes.c_int(offsets.shape[0]), _pointer(offsets), _pointer(first), _pointer(last)]


def local_partials_compiled(queries: Tensor, lanes: Tensor, n_train: int, sigma: Tensor, size: int,
                            circular: bool, rows: tuple, cols: tuple, threads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The softmax sums over the candidates of the n_train images in `lanes`, merged over the kernel's shares:
    (reference distance [B, H, W], sum of weights [B, H, W], numerator [B, C, H, W]), float64, the weights taken
    relative to the reference (`merge_partials`).

    queries: [B, C, H, W]; lanes: `pspc_kernel.training_lanes`; sigma: [B]; size: the odd window side P; circular:
    wrap around (else zero padding); rows, cols: (offsets, first, last) int32 tensors of each axis
    (see `local_score.AxisCandidates.arrays`).
    """
    parts = n_shares(lanes.shape[0], threads)
    batch, channels, height, width = queries.shape
    nearest = torch.empty(parts, batch, height, width, dtype=torch.float64)  # reference distances
    sums = torch.empty_like(nearest)
    numerators = torch.empty(parts, batch, channels, height, width, dtype=torch.float64)
    queries = queries.float().contiguous()
    inv_two_var = inverse_two_variance(sigma)  # capped: a tiny sigma still gives the nearest candidates
    arguments = [_pointer(queries), _pointer(lanes), *[ctypes.c_int(v) for v in (batch, channels, height, width)],
                 ctypes.c_int(n_train), ctypes.c_int(size), ctypes.c_int(int(circular)), *_axis_arguments(*rows),
                 *_axis_arguments(*cols), _pointer(inv_two_var), _pointer(nearest), _pointer(sums),
                 _pointer(numerators)]
    check_status(run_parts(load_library().els_part, arguments, parts, threads), "els_part", "ELS / LS")
    return merge_partials(nearest, sums, numerators, inv_two_var.double())


def merge_partials(nearest: Tensor, sums: Tensor, numerators: Tensor,
                   inv_two_var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge P partial softmax states over disjoint candidates into one: nearest, sums [P, B, H, W] and numerators
    [P, B, C, H, W] float64, each part's weights relative to its own reference distance; inv_two_var: g float64 [B].
    Each part is brought to the smallest reference m, exp(-(m_p - m) g) <= 1. Returns ([B, H, W], [B, H, W],
    [B, C, H, W])."""
    smallest = nearest.amin(0)
    scale = torch.exp(-(nearest - smallest) * inv_two_var[None, :, None, None])  # [P, B, H, W], 1 for the smallest
    return smallest, (sums * scale).sum(0), (numerators * scale[:, :, None]).sum(0)


def local_partials_compiled_streamed(queries: Tensor, images: TrainingImages, sigma: Tensor, size: int,
                                     circular: bool, rows: tuple, cols: tuple, threads: int,
                                     chunk_images: int) -> tuple[Tensor, Tensor, Tensor]:
    """As `local_partials_compiled` over a training set read chunk by chunk from its storage: each chunk of
    chunk_images (a multiple of LANES) is laid out (`training_lanes`, converting uint8 on the way) into one reused
    buffer, and the chunks' partial sums are merged exactly in float64 (`merge_partials`). Same blocks of 16 images
    and float32 values as the whole-set call, so the result differs from it only in the order of float32 partial
    sums (~1e-7 relative). Extra memory: 4 n D bytes for the buffer of n images of D values (+ n D stored values for
    a chunk with flips)."""
    inv_two_var = inverse_two_variance(sigma).double()
    buffer = torch.empty((-(-min(chunk_images, len(images)) // LANES), *images.image_shape, LANES))
    state = None
    for start in range(0, len(images), chunk_images):
        lanes = training_lanes(images.read_stored(start, start + chunk_images), out=buffer)
        n_images = min(chunk_images, len(images) - start)
        partial = local_partials_compiled(queries, lanes, n_images, sigma, size, circular, rows, cols, threads)
        state = partial if state is None else merge_partials(
            *(torch.stack(pair) for pair in zip(state, partial)), inv_two_var)
    return state

