"""Exact softmax normalisers streamed over chunks of the training set (a running log-sum-exp)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


def merge_log_sum_exp(max_a: Tensor | None, sum_a: Tensor | None, max_b: Tensor, sum_b: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two partial (max m, sum of exp(logit - m)) states into one; `None` is the empty state."""
    if max_a is None:
        return max_b, sum_b
    new_max = torch.maximum(max_a, max_b)
    return new_max, sum_a * torch.exp(max_a - new_max) + sum_b * torch.exp(max_b - new_max)


def streaming_log_normaliser(logit_chunks: Iterable[Tensor]) -> Tensor:
    """log sum_n exp(logits[:, n]) over all chunks. Each chunk: [B, n, ...] (any float dtype); returns float64 [B, ...].

    The exponentials are taken relative to each chunk's own max, so none overflows or underflows to a zero sum.
    """
    running_max = running_sum = None
    for logits in logit_chunks:
        chunk_max = logits.amax(1)  # [B, ...]
        chunk_sum = torch.exp(logits - chunk_max.unsqueeze(1)).sum(1, dtype=torch.float64)
        running_max, running_sum = merge_log_sum_exp(running_max, running_sum, chunk_max.double(), chunk_sum)
    return running_max + running_sum.log()


def merge_nearest_sums(min_a: Tensor, sum_a: Tensor, min_b: Tensor, sum_b: Tensor,
                       inv_two_var: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two partial (smallest distance m, float64 sum of exp(-(d - m) g)) states of the same softmaxes over
    disjoint parts of the training set. inv_two_var: g = 1 / (2 sigma^2) as float64, broadcastable to the sums.
    Returns (m, s) of the union: every exponent is <= 0, so nothing overflows for any g."""
    new_min = torch.minimum(min_a, min_b)
    merged = (sum_a * torch.exp(-(min_a - new_min).double() * inv_two_var)
              + sum_b * torch.exp(-(min_b - new_min).double() * inv_two_var))
    return new_min, merged


def merged_nearest_sums(partials: Iterable[tuple[Tensor, Tensor]], inv_two_var: Tensor) -> tuple[Tensor, Tensor]:
    """Merge the (smallest distance m, float64 sum) states of successive chunks (merge_nearest_sums). inv_two_var:
    g as float64, broadcastable to the sums. Returns (m, s) over all chunks."""
    running_min = running_sum = None
    for chunk_min, chunk_sum in partials:
        if running_min is None:
            running_min, running_sum = chunk_min, chunk_sum
        else:
            running_min, running_sum = merge_nearest_sums(running_min, running_sum, chunk_min, chunk_sum, inv_two_var)
    return running_min, running_sum


def streaming_nearest_sum(distance_chunks: Iterable[Tensor], inv_two_var: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax normalisers of -distances * g in distance space, over all chunks along dim 1.

    Each chunk: float distances [B, n, ...] >= 0; inv_two_var: g = 1 / (2 sigma^2) as [B] (capped finite). Returns
    (m, s): m [B, ...] the smallest distance (chunk dtype), s [B, ...] float64 the sum of exp(-(d - m) g). Every
    exponent is <= 0, so nothing overflows for any g; the softmax weight of d is exp(-(d - m) g) / s.
    """
    running_min = running_sum = None
    for distances in distance_chunks:
        g = inv_two_var.reshape(-1, *[1] * (distances.ndim - 1)).to(distances.dtype)  # [B, 1, ...]
        chunk_min = distances.amin(1)  # [B, ...]
        chunk_sum = torch.exp(-(distances - chunk_min.unsqueeze(1)) * g).sum(1, dtype=torch.float64)
        if running_min is None:
            running_min, running_sum = chunk_min, chunk_sum
            continue
        running_min, running_sum = merge_nearest_sums(running_min, running_sum, chunk_min, chunk_sum,
                                                      g.squeeze(1).double())
    return running_min, running_sum
