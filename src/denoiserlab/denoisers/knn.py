"""Nearest-neighbour estimator of the optimal denoiser (Niedoba et al., "Nearest Neighbour Score Estimators for
Diffusion Generative Models", ICML 2024): importance sampling over the nearest training images plus random others.

The posterior weights over the N training images are softmax_i(-|x - x_i|^2 / (2 sigma^2)). The estimator keeps the
k nearest images with weight 1 and represents the other N - k by n_random of them drawn uniformly without
replacement, each weighted (N - k) / n_random (their inverse inclusion probability): a self-normalised
importance-sampling estimate of the posterior mean. With k + n_random >= N every image enters with weight 1, and
the estimate is the optimal denoiser exactly.

The random images of a query are the first n_random entries of one seeded permutation of the training set (drawn at
construction) that are not among its neighbours: a uniform draw from the rest, and D stays a deterministic function
of (x, sigma), the same for a sample alone or in a batch. Neighbours come from an exact search streamed over the
training set (`index="exact"`: a float32 screen, a float64 rerank and a certificate that the screen missed no
nearer image, `nearest_indices`) or a faiss flat L2 index (`index="faiss"`, float32; optional package faiss-cpu).
The weights use float64 distances recomputed as sums of squared differences, so they stay exact at sigma = 0.002.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.training_set import DeviceCopies, training_images
from denoiserlab.distances import chunked_squared_distances, default_chunk_size, squared_norms
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_count,
    check_finite_output,
    check_flag,
    check_images,
    check_optional_count,
    check_same_image_shape,
    check_seed,
    sigma_per_sample,
)

INDEXES = ("exact", "faiss")


@dataclass(frozen=True)
class KNNConfig:
    k: int = 256  # nearest training images kept exactly (k >= N: all of them, the optimal denoiser)
    n_random: int = 256  # images drawn uniformly from the rest, each weighted (N - k) / n_random
    seed: int = 0  # seed of the permutation the random images are taken from
    index: str = "exact"  # neighbour search: "exact" (certified, streamed) or "faiss" (flat L2 index, float32)
    xflip: bool = False  # also use the horizontal flip of every training image
    chunk_size: int | None = None  # training images per chunk of the exact search (None: about 32 MiB)

    def __post_init__(self):
        check_count(self.k, "k", minimum=0)
        check_count(self.n_random, "n_random", minimum=0)
        if self.k + self.n_random < 1:
            raise DenoiserLabError(f"k + n_random must be >= 1, got k={self.k}, n_random={self.n_random}")
        check_seed(self.seed)
        if self.index not in INDEXES:
            raise DenoiserLabError(f"index must be one of {INDEXES}, got {self.index!r}")
        check_flag(self.xflip, "xflip")
        check_optional_count(self.chunk_size, "chunk_size")


class KNNDenoiser:
    """Nearest-neighbour importance-sampling estimate of E[x0 | x] over the training set."""

    config_class = KNNConfig
    tunable = None  # k and n_random trade cost for accuracy; they are not fitted per sigma

    def __init__(self, train: Tensor | ImageSet, k: int = 256, n_random: int = 256, seed: int = 0,
                 index: str = "exact", xflip: bool = False, chunk_size: int | None = None):
        self.config = KNNConfig(k=k, n_random=n_random, seed=seed, index=index, xflip=xflip, chunk_size=chunk_size)
        images = training_images(train, xflip)
        n_images = images.shape[0]
        self.image_shape_ = tuple(images.shape[1:])  # (C, H, W)
        self.n_nearest_ = min(k, n_images)  # neighbours kept exactly
        self.n_random_ = min(n_random, n_images - self.n_nearest_)  # random others (all of the rest if fewer)
        self.train_flat_ = images.reshape(n_images, -1)  # [N, D] float32 (half the memory of float64 at N = 10^6)
        self.train_norms_ = squared_norms(self.train_flat_)  # [N] float64
        self.order_ = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))  # [N]
        self.index_ = faiss_flat_index(self.train_flat_) if index == "faiss" else None
        self._device_copies = DeviceCopies(self.train_flat_, self.train_norms_, self.order_)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the estimate of E[x0 | x], shape/dtype/device of x."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        train_flat, _, _ = self._device_copies.on(x.device)
        queries = x.reshape(x.shape[0], -1).double()  # [B, D]
        chosen, log_weights = self.chosen_images(queries)
        rows = train_flat[chosen].double()  # [B, M, D]
        distances = (queries[:, None] - rows).square().sum(2)  # [B, M]
        offsets = distances - distances.amin(1, keepdim=True)  # relative to the nearest: no overflow at a tiny sigma
        inv_two_var = (1.0 / (2.0 * sigma[:, None] ** 2)).clamp(max=torch.finfo(torch.float64).max)  # no 0 * inf
        logits = -offsets * inv_two_var + log_weights
        mean = torch.einsum("bm,bmd->bd", logits.softmax(1), rows)
        return check_finite_output(mean.reshape(x.shape).to(x.dtype), "the kNN denoiser", sigma)

    def chosen_images(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Indices [B, k + n_random] of the neighbours then the random others, and their log importance weights
        float64 [k + n_random] (0 for neighbours, log((N - k) / n_random) for the others). queries: float64 [B, D]."""
        train_flat, train_norms, order = self._device_copies.on(queries.device)
        if self.n_nearest_ == 0:
            neighbours = torch.zeros(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
        elif self.index_ is not None:
            neighbours = faiss_search(self.index_, queries, self.n_nearest_)
        else:
            neighbours = nearest_indices(queries, train_flat, train_norms, self.n_nearest_, self.config.chunk_size)
        others = random_others(order, neighbours, self.n_random_)
        n_rest = train_flat.shape[0] - self.n_nearest_
        log_weights = torch.zeros(self.n_nearest_ + self.n_random_, dtype=torch.float64, device=queries.device)
        if self.n_random_:
            log_weights[self.n_nearest_ :] = math.log(n_rest / self.n_random_)
        return torch.cat([neighbours, others], 1), log_weights


def nearest_indices(queries: Tensor, train_flat: Tensor, train_norms: Tensor, k: int,
                    chunk_size: int | None = None) -> Tensor:
    """Indices int64 [B, k] of the k nearest training rows of each query (exact; in no particular order).

    A float32 screen keeps the 2k rows of smallest approximate distance, their float64 distances pick the k
    nearest, and a rounding-error bound certifies that no row outside the screen is nearer (`screen_bound`); a query
    without the certificate is searched again with float64 distances. queries: float64 [B, D]; train_flat: [N, D];
    train_norms: [N] float64 (`squared_norms`).
    """
    n_keep = min(2 * k, train_flat.shape[0])
    screened, candidates = screen(queries, train_flat, train_norms, n_keep, chunk_size)  # [B, n_keep]
    distances = (queries[:, None] - train_flat[candidates].double()).square().sum(2)  # [B, n_keep], float64
    kth, order = distances.topk(k, dim=1, largest=False)
    nearest = candidates.gather(1, order)
    if n_keep == train_flat.shape[0]:
        return nearest  # the screen kept every row
    bound = screen_bound(queries, train_norms)  # [B]
    uncertain = kth[:, -1] > screened[:, -1] - bound  # a row outside the screen might be nearer
    for b in uncertain.nonzero().flatten().tolist():
        nearest[b] = nearest_indices_float64(queries[b : b + 1], train_flat, train_norms, k, chunk_size)[0]
    return nearest


def screen(queries: Tensor, train_flat: Tensor, train_norms: Tensor, n_keep: int,
           chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """The n_keep rows of smallest approximate squared distance |q|^2 - 2 fl32(q . x) + |x|^2 per query, streamed:
    (approximate distances float64 [B, n_keep] ascending, indices int64 [B, n_keep]). Half the memory traffic and
    twice the GEMM speed of float64, at an error below `screen_bound`."""
    query_norms = queries.square().sum(1, keepdim=True)  # [B, 1] float64
    queries32 = queries.float()
    chunk_size = chunk_size or default_chunk_size(queries.shape[1], 1 << 23)
    best = torch.empty(queries.shape[0], 0, dtype=torch.float64, device=queries.device)
    best_indices = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
    for start in range(0, train_flat.shape[0], chunk_size):
        chunk = train_flat[start : start + chunk_size].float()  # [n, D]
        distances = query_norms - 2 * (queries32 @ chunk.T).double() + train_norms[start : start + chunk.shape[0]]
        indices = torch.arange(start, start + chunk.shape[0], device=queries.device).expand_as(distances)
        best, best_indices = smallest(torch.cat([best, distances], 1), torch.cat([best_indices, indices], 1), n_keep)
    return best, best_indices


def screen_bound(queries: Tensor, train_norms: Tensor) -> Tensor:
    """Bound on |screened - exact| squared distance per query, float64 [B]: rounding q to float32 and a float32 dot
    product of length D err by at most (2u + gamma_D) |q| |x| with u = 2^-24, gamma_D = D u / (1 - D u) (Higham,
    Accuracy and Stability of Numerical Algorithms, eq. 3.5, any summation order), doubled in -2 q.x, plus slack
    for the float64 sums."""
    dim, unit = queries.shape[1], 2.0**-24
    gamma = dim * unit / (1 - dim * unit)
    query_norms = queries.square().sum(1)
    largest_norm = train_norms.max()
    return 2 * (gamma + 2 * unit) * query_norms.sqrt() * largest_norm.sqrt() + 1e-12 * (query_norms + largest_norm)


def smallest(values: Tensor, indices: Tensor, n_keep: int) -> tuple[Tensor, Tensor]:
    """The n_keep smallest values per row, ascending, with their indices: [B, M] x2 -> [B, min(n_keep, M)] x2."""
    kept, order = values.topk(min(n_keep, values.shape[1]), dim=1, largest=False)
    return kept, indices.gather(1, order)


def nearest_indices_float64(queries: Tensor, train_flat: Tensor, train_norms: Tensor, k: int,
                            chunk_size: int | None = None) -> Tensor:
    """Indices int64 [B, k] of the k nearest training rows by float64 distances, streamed over the training set."""
    best = torch.empty(queries.shape[0], 0, dtype=torch.float64, device=queries.device)
    best_indices = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
    for start, chunk, distances in chunked_squared_distances(queries, train_flat, train_norms, chunk_size):
        indices = torch.arange(start, start + chunk.shape[0], device=queries.device).expand_as(distances)
        best, best_indices = smallest(torch.cat([best, distances], 1), torch.cat([best_indices, indices], 1), k)
    return best_indices


def random_others(order: Tensor, neighbours: Tensor, n_random: int) -> Tensor:
    """Per query, the first n_random entries of `order` ([N], a permutation) not among its neighbours [B, k]: [B, r].

    The first n_random + k entries always hold n_random non-neighbours, so only those are looked at.
    """
    batch = neighbours.shape[0]
    if n_random == 0:
        return torch.zeros(batch, 0, dtype=torch.int64, device=order.device)
    candidates = order[: n_random + neighbours.shape[1]]  # [M]
    is_neighbour = torch.zeros(batch, order.shape[0], dtype=torch.bool, device=order.device)
    is_neighbour.scatter_(1, neighbours, True)
    free = ~is_neighbour[:, candidates]  # [B, M]
    keep = free & (free.cumsum(1) <= n_random)  # exactly n_random per row
    return candidates.expand(batch, -1)[keep].reshape(batch, n_random)


def faiss_flat_index(train_flat: Tensor):
    """A faiss IndexFlatL2 over the training rows [N, D] (float32, CPU); needs the optional package faiss-cpu."""
    try:
        import faiss
    except ImportError:
        raise DenoiserLabError("index='faiss' needs the optional package faiss-cpu, which is not installed "
                               "(pip install faiss-cpu, or the extra denoiserlab[faiss]); use index='exact'") from None
    index = faiss.IndexFlatL2(train_flat.shape[1])
    index.add(train_flat.float().contiguous().numpy())
    return index


def faiss_search(index, queries: Tensor, k: int) -> Tensor:
    """Indices int64 [B, k] of the k nearest rows in a faiss index, on the queries' device."""
    _, found = index.search(queries.float().cpu().contiguous().numpy(), k)
    return torch.from_numpy(found).to(device=queries.device, dtype=torch.int64)
