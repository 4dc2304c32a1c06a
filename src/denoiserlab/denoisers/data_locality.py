"""Locality from data statistics (Lukoianov, Yuan, Solomon & Sitzmann, "Locality in Image Diffusion Models Emerges
from Data Statistics", NeurIPS 2025).

The linear map of the Gaussian (Wiener) denoiser, A_sigma = U diag(lambda / (lambda + sigma^2)) U^T from the biased
covariance of the training set (`GaussianDenoiser.linear_map`), says which input coordinates each output coordinate
listens to. Thresholding each row gives the mask M[m, n] = |A[m, n]| >= threshold * max_n' |A[m, n']| (M[m, m]
always true), and output coordinate m (over C*H*W) is the posterior mean of coordinate m under the masked logits
-sum_n M[m, n] (x_n - x_{i,n})^2 / (2 sigma^2): an exact softmax over the whole training set (the authors' code
averages per-chunk softmaxes instead, so its answer depends on the chunk size). threshold = 0 is the optimal denoiser.

Fast path: with d_i = (x - x_i)^2 the per-coordinate squared differences, all masked distances of a chunk of
training images are one GEMM d @ M^T (sums of non-negative terms: no cancellation), streamed over the training set
with running softmax sums per (query, output coordinate) kept relative to the nearest masked distance (no logit that
overflows at a tiny sigma). The work is in float64 for float64 queries, else float32 (like PSPC-Flex); the sums are
float64. The dense GEMM costs D^2 per (query, training image) whatever the mask density. The chunks come from a
float32 copy of the training set or straight from its storage (`storage`), with the same results; the covariance
is accumulated from the storage either way (`GaussianDenoiser`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.distributed import check_same_queries, merge_nearest_sums_across, shard
from denoiserlab.denoisers.gaussian import GaussianDenoiser
from denoiserlab.denoisers.schedules import Tunable, estimate_by_group, value_at
from denoiserlab.denoisers.training_set import (
    DeviceCopies,
    TrainingImages,
    check_storage,
    resolve_storage,
    training_source,
)
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_finite_output,
    check_flag,
    check_optional_count,
)

MASK_CACHE_SIZE = 64  # masks kept per denoiser, keyed by (sigma, threshold); a sampler reuses one sigma grid


@dataclass(frozen=True)
class DataLocalityConfig:
    threshold: float | Callable[[float], float] = 0.05  # relative threshold on |A| per row in [0, 1], or sigma -> it
    xflip: bool = False  # also use the horizontal flip of every training image (in the covariance too)
    chunk_size: int | None = None  # training images per chunk (None: about 32 MiB of [B, n, D] logits)
    cache: bool = False  # keep the eigendecomposition in the user cache folder (the Gaussian denoiser's cache)
    # "ram": a float32 copy of the training set (4 bytes a value), made once; "stream": every call reads the set
    # chunk by chunk from its storage; "auto": ram for a float tensor and for an ImageSet whose copy fits in
    # training_set.AUTO_RAM_BYTES (1 GiB), else stream. Same results.
    storage: str = "auto"
    # shard the training set over the processes of an initialised torch.distributed group (rank r of W holds the
    # images [r N / W, (r + 1) N / W)): the covariance is merged over the ranks (as GaussianDenoiser's) and so are
    # the softmax sums; calls are collective and every rank gets the one-process result
    distributed: bool = False

    def __post_init__(self):
        if not callable(self.threshold):
            check_threshold(self.threshold)
        check_flag(self.xflip, "xflip")
        check_optional_count(self.chunk_size, "chunk_size")
        check_flag(self.cache, "cache")
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


def check_threshold(threshold: object) -> float:
    """A mask threshold must be a number in [0, 1]; returns it as a float."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise DenoiserLabError(f"threshold must be a number in [0, 1] or a schedule sigma -> number, got {threshold!r}")
    return float(threshold)


class DataLocality:
    """Data-statistics locality denoiser D(x, sigma); sigma may differ per sample (grouped by sigma).

    Memory (N training images, 2N with xflip, of D = C*H*W values; B queries; n images per chunk): storage="ram"
    holds 4 N D bytes for the denoiser's life, storage="stream" nothing per image; both hold the Gaussian
    denoiser's 16 D^2 and up to MASK_CACHE_SIZE masks of D^2 bytes. A call adds about 4 n D for a streamed chunk,
    4 B n D w for its [B, n, D] intermediates (w = 4 or 8 bytes; n by default about 32 MiB of each) and 4 D^2 (8 D^2
    for float64 queries) for the mask as a matrix.
    """

    config_class = DataLocalityConfig
    tunable = Tunable("threshold", "threshold", (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5))

    def __init__(self, train: Tensor | ImageSet, threshold: float | Callable[[float], float] = 0.05,
                 xflip: bool = False, chunk_size: int | None = None, cache: bool = False, storage: str = "auto",
                 distributed: bool = False):
        self.config = DataLocalityConfig(threshold=threshold, xflip=xflip, chunk_size=chunk_size, cache=cache,
                                         storage=storage, distributed=distributed)
        source = training_source(train, xflip)
        if distributed:
            source = shard(source)  # this rank's images only; "auto" storage below decides on the shard
        self.image_shape_ = source.image_shape  # (C, H, W)
        # its linear map A_sigma gives the masks; with cache=True its eigendecomposition comes from (or goes to) the
        # user cache folder as checked safetensors, written atomically (gaussian.fit_gaussians)
        self.gaussian_ = GaussianDenoiser(train, xflip=xflip, cache=cache, distributed=distributed)
        self.storage_ = resolve_storage(storage, train, source, bytes_per_value=4)  # "ram" or "stream"
        self.train_ = source if self.storage_ == "stream" else None  # read chunk by chunk at every call
        if self.storage_ == "ram":
            self.images_ = source.read(0, len(source)).contiguous()  # [N, C, H, W] float32
            self._device_copies = DeviceCopies(self.images_)
        self.masks_ = {}  # (sigma, threshold) -> bool [D, D], filled on use

    def threshold_at(self, sigma: float) -> float:
        """The mask threshold used at noise level sigma."""
        return check_threshold(value_at(self.config.threshold, sigma))

    def mask(self, sigma: float) -> Tensor:
        """M[m, n] = |A[m, n]| >= threshold * max_n' |A[m, n']|, diagonal true: bool [D, D] on CPU (cached)."""
        key = (float(sigma), self.threshold_at(sigma))
        if key not in self.masks_:
            if len(self.masks_) >= MASK_CACHE_SIZE:
                self.masks_.pop(next(iter(self.masks_)))
            self.masks_[key] = threshold_mask(self.gaussian_.linear_map(key[0]), key[1])
        return self.masks_[key]

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the estimate of x0 with x's shape, dtype and device."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)
        images = self.train_ if self.storage_ == "stream" else TrainingImages(self._device_copies.on(x.device)[0],
                                                                               xflip=False)

        def estimate(value: float, group: Tensor | slice) -> Tensor:
            nearest, normaliser, numerator, inv_two_var = masked_posterior_partials(
                x[group].flatten(1), sigma[group], images, self.mask(value).to(x.device), self.config.chunk_size)
            if self.config.distributed:  # the union of every rank's shard
                _, normaliser, numerator = merge_nearest_sums_across(nearest, inv_two_var, normaliser, numerator)
            return (numerator / normaliser).reshape(x[group].shape)

        return check_finite_output(estimate_by_group(x, sigma.tolist(), estimate), "DataLocality", sigma)


def threshold_mask(linear_map: Tensor, threshold: float) -> Tensor:
    """Rows of |A| kept where they reach threshold * their row max, with the diagonal: [D, D] float -> bool [D, D]."""
    magnitude = linear_map.abs()
    mask = magnitude >= threshold * magnitude.amax(1, keepdim=True)
    return mask.fill_diagonal_(True)


def default_chunk(batch: int, dim: int, itemsize: int, bytes_per_chunk: int = 1 << 25) -> int:
    """Training images per chunk so that a [B, n, D] intermediate is about `bytes_per_chunk`."""
    return max(1, bytes_per_chunk // (itemsize * batch * dim))


def masked_posterior_partials(queries: Tensor, sigma: Tensor, images: TrainingImages, mask: Tensor,
                              chunk_size: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The softmax sums of: per output coordinate m, sum_i softmax_i(-sum_n M[m, n] (q_n - x_{i,n})^2 / (2 sigma^2))
    x_{i,m} (the mean is numerator / normaliser).

    queries: [B, D]; sigma: float64 [B]; images: the N training images, read in chunks on the queries' device;
    mask: bool [D, D]. Returns float64 (smallest masked distance [B, D], normaliser [B, D], numerator [B, D], the
    g = 1 / (2 sigma^2) [B, 1] used): the sums are relative to the smallest masked distance, so no logit that
    overflows at a tiny sigma is formed, and states over disjoint training sets merge exactly.
    """
    work = torch.float64 if queries.dtype == torch.float64 else torch.float32
    queries, mask_t = queries.to(work), mask.to(work).T  # mask_t[n, m] = M[m, n]
    inv_two_var = (1.0 / (2.0 * sigma.double() ** 2)).clamp(max=torch.finfo(work).max)[:, None]  # [B, 1], no 0 * inf
    chunk_size = chunk_size or default_chunk(*queries.shape, queries.element_size())
    nearest = torch.full(queries.shape, torch.inf, dtype=torch.float64, device=queries.device)  # [B, D]
    normaliser = torch.zeros_like(nearest)
    numerator = torch.zeros_like(nearest)
    for chunk in images.chunks(chunk_size, queries.device):
        chunk = chunk.flatten(1).to(work)  # [n, D]
        distances = (queries[:, None] - chunk).square() @ mask_t  # [B, n, D], masked squared distances
        new = torch.minimum(nearest, distances.amin(1).double())
        rescale = torch.where(nearest.isinf(), 0.0, torch.exp(-(nearest - new) * inv_two_var))  # [B, D]
        weights = torch.exp(-(distances - new[:, None].to(work)) * inv_two_var[:, None].to(work))  # [B, n, D]
        normaliser = normaliser * rescale + weights.sum(1, dtype=torch.float64)
        numerator = numerator * rescale + (weights * chunk).sum(1, dtype=torch.float64)
        nearest = new
    return nearest, normaliser, numerator, inv_two_var
