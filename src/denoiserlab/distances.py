"""Exact squared Euclidean distances between query and training images, in chunks over the training set.

Distances are formed in float64 as |q|^2 - 2 q.y + |y|^2: the float32 form of that expansion loses the
small-sigma logits -|q - y|^2 / (2 sigma^2) entirely (an error of ~1e-4 in a distance is a logit error of
~10 at sigma = 0.002), while in float64 the error stays ~1e-12.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError


# On a GPU every chunk costs the same dozen kernel launches whatever its size, so chunks there are as large as memory
# allows: in 32 MiB chunks (73 a call) the optimal denoiser took 29 ms a call at N = 100,000 of 3x32x32, B = 10, on an
# H200 (benchmarks/measured/), where reading its 2.4 GB float64 copy of the training set takes about 0.6 ms.
GPU_CHUNK_BYTES = 1 << 30


def chunk_bytes_on(device: torch.device | str, cpu_bytes: int, gpu_bytes: int = GPU_CHUNK_BYTES) -> int:
    """Bytes per chunk of work on `device`: cpu_bytes on the CPU (chunks that stay in its caches), the larger of the
    two on any other device (few kernel launches)."""
    return cpu_bytes if torch.device(device).type == "cpu" else max(cpu_bytes, gpu_bytes)


def default_chunk_size(dim: int, bytes_per_chunk: int = 1 << 25) -> int:
    """Rows of a float64 [rows, dim] chunk of about `bytes_per_chunk` bytes (large GEMMs; few Python steps)."""
    return max(64, bytes_per_chunk // (8 * dim))


def squared_norms(flat: Tensor) -> Tensor:
    """Row squared norms in float64: [N, D] -> [N]."""
    return flat.double().pow(2).sum(1)


def row_chunks(train_flat: Tensor, train_norms: Tensor,
               chunk_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (train_flat[s : s + n], train_norms[s : s + n]) over the rows, n = chunk_size or default_chunk_size(D).

    train_flat: [N, D]; train_norms: [N] float64 (`squared_norms`). Views: nothing is copied.
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise DenoiserLabError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    chunk_size = chunk_size or default_chunk_size(train_flat.shape[1])
    for start in range(0, train_flat.shape[0], chunk_size):
        yield train_flat[start : start + chunk_size], train_norms[start : start + chunk_size]


def squared_distances_to(queries: Tensor, chunks: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (train chunk [n, D] float64, distances [B, n] float64) for each (train chunk [n, D], its squared norms
    [n] float64) of `chunks`, e.g. `row_chunks` or chunks converted from uint8 as they are read. queries: [B, D]."""
    queries = queries.double()
    query_norms = queries.pow(2).sum(1, keepdim=True)  # [B, 1]
    for chunk, norms in chunks:
        chunk = chunk.double()  # [n, D]
        distances = query_norms - 2 * queries @ chunk.T + norms  # [B, n]
        yield chunk, distances.clamp_(min=0)


def chunked_squared_distances(queries: Tensor, train_flat: Tensor, train_norms: Tensor,
                              chunk_size: int | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield (start, train chunk [n, D] float64, distances [B, n] float64) over the training set.

    queries: [B, D] (any float dtype); train_flat: [N, D]; train_norms: [N] float64 (`squared_norms`).
    """
    start = 0
    for chunk, distances in squared_distances_to(queries, row_chunks(train_flat, train_norms, chunk_size)):
        yield start, chunk, distances
        start += chunk.shape[0]


def nearest_neighbours(queries: Tensor, train_flat: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact nearest training image of each query: (distances [B] float64, indices [B] int64).

    queries: [B, D]; train_flat: [N, D]. Euclidean (not squared) distance.
    """
    train_flat = train_flat.to(queries.device)
    norms = squared_norms(train_flat)
    best = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64, device=queries.device)
    best_index = torch.zeros(queries.shape[0], dtype=torch.int64, device=queries.device)
    for start, _, distances in chunked_squared_distances(queries, train_flat, norms, chunk_size):
        values, index = distances.min(1)
        better = values < best
        best = torch.where(better, values, best)
        best_index = torch.where(better, index + start, best_index)
    return best.sqrt(), best_index


def two_nearest_neighbours(queries: Tensor, train_flat: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact distances to the nearest and second-nearest training images: (distances [B, 2] float64 ascending,
    indices [B, 2] int64). queries: [B, D]; train_flat: [N, D] with N >= 2. Euclidean distance."""
    if train_flat.shape[0] < 2:
        raise DenoiserLabError(f"two nearest neighbours need at least 2 training images, got {train_flat.shape[0]}")
    train_flat = train_flat.to(queries.device)
    norms = squared_norms(train_flat)
    best = torch.full((queries.shape[0], 2), float("inf"), dtype=torch.float64, device=queries.device)
    best_index = torch.zeros(queries.shape[0], 2, dtype=torch.int64, device=queries.device)
    for start, _, distances in chunked_squared_distances(queries, train_flat, norms, chunk_size):
        values, index = distances.topk(min(2, distances.shape[1]), dim=1, largest=False)
        merged_values = torch.cat([best, values], 1)
        merged_index = torch.cat([best_index, index + start], 1)
        order = merged_values.argsort(dim=1)[:, :2]
        best, best_index = merged_values.gather(1, order), merged_index.gather(1, order)
    return best.sqrt(), best_index
