"""The optimal empirical denoiser: the exact posterior mean under the training set (PSPC eq. 3; Karras et al. 2022, eq. 57)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.distributed import check_same_queries, merge_nearest_sums_across, shard
from denoiserlab.denoisers.training_set import (
    DeviceCopies,
    TrainingImages,
    check_storage,
    resolve_storage,
    training_source,
)
from denoiserlab.distances import (
    chunk_bytes_on,
    default_chunk_size,
    row_chunks,
    squared_distances_to,
    squared_norms,
)
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_finite_output,
    check_flag,
    check_optional_count,
)


# Streamed chunks hold about this many bytes of float64 rows, so that converting a chunk and both of its GEMMs work
# in the CPU's cache (faster than 32 MiB chunks: 0.30 s against 0.85 s a call at N = 100,000 of 1x28x28, B = 10).
STREAM_CHUNK_BYTES = 1 << 21
GPU_STREAM_CHUNK_BYTES = 1 << 28  # the same on a GPU, where a call then adds about 2.5 times this (see the docstring)
RAM_CHUNK_BYTES = 1 << 25  # views of the float64 copy per step on the CPU (on a GPU: distances.GPU_CHUNK_BYTES)


@dataclass(frozen=True)
class OptimalConfig:
    xflip: bool = False  # also use the horizontal flip of every training image
    # "ram": a float64 copy of the training set (8 bytes a value), made once; "stream": every call reads the set
    # chunk by chunk from its storage (an ImageSet's uint8, memory-mapped or not); "auto": ram for a float tensor
    # and for an ImageSet whose copy fits in training_set.AUTO_RAM_BYTES (1 GiB), else stream. Same results.
    storage: str = "auto"
    # shard the training set over the processes of an initialised torch.distributed group (rank r of W holds the
    # stored images [r N // W, (r + 1) N // W)); calls are then collective and give every rank the one-process result
    distributed: bool = False

    def __post_init__(self):
        check_flag(self.xflip, "xflip")
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


class OptimalDenoiser:
    """D(x, sigma) = sum_i softmax_i(-|x - x_i|^2 / (2 sigma^2)) x_i over the training images x_i.

    One streaming pass over chunks of the training set with an exact running log-sum-exp per query; distances
    in float64 (see `denoiserlab.distances`), so it stays exact down to sigma = 0.002. Any sigma > 0 is valid: as
    sigma -> 0 it returns the nearest training image (the mean of the nearest ones on a tie), as sigma -> inf
    the training mean, and it reaches both limits without overflow (see `posterior_mean`).

    Memory (N training images, 2N with xflip, of D = C*H*W values; B queries; n = chunk_size rows): storage="ram"
    holds 8 N D + 8 N bytes for the life of the denoiser and a call adds about 24 B n + 16 B D bytes (n by default
    32 MiB of float64 rows, 1 GiB on a GPU); storage="stream" holds nothing per image (an ImageSet's uint8 storage
    stays where it is, e.g. memory-mapped, file-backed pages) and a call adds at most about 20 n D (+ n D with
    xflip) + 24 B n + 16 B D bytes: one chunk as float32, as float64 and squared, its distances and weights, and the
    numerator (n by default STREAM_CHUNK_BYTES = 2 MiB of float64 rows, 256 MiB on a GPU, at least 64). With
    distributed=True, N is this rank's shard and a call adds three all_reduces: 48 bytes (the same-queries check),
    8 B and 8 B (D + 1) bytes (the merge).
    """

    config_class = OptimalConfig
    tunable = None  # no option to fit per sigma

    def __init__(self, train: Tensor | ImageSet, xflip: bool = False, chunk_size: int | None = None,
                 storage: str = "auto", distributed: bool = False):
        self.config = OptimalConfig(xflip=xflip, storage=storage, distributed=distributed)
        check_optional_count(chunk_size, "chunk_size")
        source = training_source(train, xflip)
        if distributed:
            source = shard(source)  # this rank's images only; "auto" storage below decides on the shard
        self.image_shape_ = source.image_shape  # (C, H, W)
        self.chunk_size = chunk_size
        self.storage_ = resolve_storage(storage, train, source, bytes_per_value=8)  # "ram" or "stream"
        self.train_ = source if self.storage_ == "stream" else None  # read chunk by chunk at every call
        if self.storage_ == "ram":
            # [N, D] float64, converted once: each call streams it straight into float64 GEMMs (8 bytes per value)
            self.train_flat_ = source.read(0, len(source)).reshape(len(source), -1).double()
            self.train_norms_ = squared_norms(self.train_flat_)  # [N] float64
            self._device_copies = DeviceCopies(self.train_flat_, self.train_norms_)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns E[x0 | x] as [B, C, H, W] in x's dtype and device."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)
        mean = self.posterior_mean(x.reshape(x.shape[0], -1), sigma)
        return check_finite_output(mean.reshape(x.shape).to(x.dtype), "the optimal denoiser", sigma)

    def posterior_mean(self, queries: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x] of flat queries [M, D] at float64 sigma [M]: float64 [M, D], over the whole training set (with
        distributed=True a collective call: every rank's shard, merged)."""
        nearest, normaliser, numerator = posterior_partials(queries, sigma, self.train_rows(queries.device))
        if self.config.distributed:  # the union of every rank's shard
            _, normaliser, numerator = merge_nearest_sums_across(nearest, inverse_two_variance(sigma)[:, None],
                                                                 normaliser, numerator)
        return numerator / normaliser

    def posterior_weights(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """The softmax weights over training images, float64 [B, N] (for analyses; holds all N at once)."""
        if self.config.distributed:
            raise DenoiserLabError("posterior_weights holds all N weights in one process; build the optimal denoiser "
                                   "without distributed=True for it")
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        pieces = [distances for _, distances in squared_distances_to(x.reshape(x.shape[0], -1),
                                                                     self.train_rows(x.device))]
        return softmax_weights(torch.cat(pieces, 1), sigma)

    def train_rows(self, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """The training set on `device` in chunks, in order: (rows [n, D] float64, squared norms [n] float64)."""
        dim = math.prod(self.image_shape_)
        if self.storage_ == "ram":  # views of the resident copy: on a GPU as few as GPU_CHUNK_BYTES allows
            train_flat, train_norms = self._device_copies.on(device)
            chunk_size = self.chunk_size or default_chunk_size(dim, chunk_bytes_on(device, RAM_CHUNK_BYTES))
            return row_chunks(train_flat, train_norms, chunk_size)
        chunk_bytes = chunk_bytes_on(device, STREAM_CHUNK_BYTES, GPU_STREAM_CHUNK_BYTES)
        return streamed_rows(self.train_, self.chunk_size or default_chunk_size(dim, chunk_bytes), device)


def streamed_rows(images: TrainingImages, chunk_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Chunks of `images` read from their storage and converted as they come: (rows [n, D] float64, squared norms
    [n] float64), the values a float64 copy of the whole set would hold."""
    for chunk in images.chunks(chunk_size, device):
        rows = chunk.reshape(chunk.shape[0], -1).double()  # [n, D]
        yield rows, squared_norms(rows)


def inverse_two_variance(sigma: Tensor) -> Tensor:
    """1 / (2 sigma^2) in float64, capped at the largest float64: a sigma whose square underflows to 0 then still
    gives the sigma -> 0 limit (only distance gaps below ~1e-305 would tell the cap from the true value)."""
    return (1.0 / (2.0 * sigma.double() ** 2)).clamp(max=torch.finfo(torch.float64).max)


def softmax_weights(distances: Tensor, sigma: Tensor) -> Tensor:
    """softmax_n(-distances / (2 sigma^2)) over dim 1, taken relative to the smallest distance of each row, so the
    nearest gets exp(0) = 1 and no value overflows at any sigma. distances: [B, N] float64; sigma: [B]."""
    offsets = (distances - distances.min(1, keepdim=True).values) * inverse_two_variance(sigma)[:, None]
    weights = torch.exp(-offsets)
    return weights / weights.sum(1, keepdim=True)


def posterior_mean(queries: Tensor, sigma: Tensor, train_chunks: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """Softmax-weighted mean of training rows with a running log-sum-exp. queries: [B, D]; sigma: [B] float64;
    train_chunks: (rows [n, D], squared norms [n] float64) over the training set (`distances.row_chunks`, or chunks
    converted as they are read, as `streamed_rows`). Returns float64 [B, D]: numerator / normaliser of
    `posterior_partials`.
    """
    _, normaliser, numerator = posterior_partials(queries, sigma, train_chunks)
    return numerator / normaliser


def posterior_partials(queries: Tensor, sigma: Tensor,
                       train_chunks: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """The running log-sum-exp state of `posterior_mean` after all chunks: (m [B, 1], s [B, 1], acc [B, D]), float64.

    It runs in distance space: with m the running smallest squared distance d, the running normaliser
    s = sum exp(-(d - m) / (2 sigma^2)) and numerator acc = sum exp(-(d - m) / (2 sigma^2)) y are rescaled by
    exp(-(m_old - m_new) / (2 sigma^2)) when m shrinks. Every exponent is <= 0 and the nearest row has exactly 0, so
    no sigma > 0 gives overflow or NaN: tiny sigma gives the nearest row(s), huge sigma the mean. States over
    disjoint training sets merge exactly (`distributed.merge_nearest_sums_across`).
    """
    batch, dim = queries.shape
    inv_two_var = inverse_two_variance(sigma)[:, None]  # [B, 1]
    nearest = torch.full((batch, 1), torch.inf, dtype=torch.float64, device=queries.device)
    normaliser = torch.zeros((batch, 1), dtype=torch.float64, device=queries.device)
    numerator = torch.zeros((batch, dim), dtype=torch.float64, device=queries.device)
    for chunk, distances in squared_distances_to(queries, train_chunks):
        new_nearest = torch.minimum(nearest, distances.min(1, keepdim=True).values)
        # [B, 1]; 0 before the first chunk (nothing summed yet), also when inv_two_var = 0 (sigma^2 overflowed)
        rescale = torch.where(nearest.isinf(), 0.0, torch.exp(-(nearest - new_nearest) * inv_two_var))
        weights = torch.exp(-(distances - new_nearest) * inv_two_var)  # [B, n], in [0, 1]
        normaliser = normaliser * rescale + weights.sum(1, keepdim=True)
        numerator = numerator * rescale + weights @ chunk
        nearest = new_nearest
    return nearest, normaliser, numerator
