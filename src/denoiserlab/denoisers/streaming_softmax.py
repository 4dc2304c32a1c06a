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

