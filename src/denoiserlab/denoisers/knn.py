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
The search reads the training set chunk by chunk and the estimate only the images it chose, from a float32 copy or
straight from the set's storage (`storage`; an ImageSet's uint8, memory-mapped or not), with the same results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.distributed import check_same_queries, shard, shard_indices
from denoiserlab.denoisers.training_set import (
    DeviceCopies,
    TrainingImages,
    check_storage,
    resolve_storage,
    training_source,
)
from denoiserlab.distances import default_chunk_size, squared_distances_to, squared_norms
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_count,
    check_finite_output,
    check_flag,
    check_optional_count,
    check_seed,
)

INDEXES = ("exact", "faiss")


@dataclass(frozen=True)
class KNNConfig:
    k: int = 256  # nearest training images kept exactly (k >= N: all of them, the optimal denoiser)
    n_random: int = 256  # images drawn uniformly from the rest, each weighted (N - k) / n_random
    seed: int = 0  # seed of the permutation the random images are taken from
    index: str = "exact"  # neighbour search: "exact" (certified, streamed) or "faiss" (flat L2 index, float32)
    xflip: bool = False  # also use the horizontal flip of every training image
    chunk_size: int | None = None  # training images per chunk of the exact search (None: about 4 MiB of float32)
    # "ram": a float32 copy of the training set (4 bytes a value), made once; "stream": every call reads the set
    # chunk by chunk from its storage, and the chosen images by index; "auto": ram for a float tensor and for an
    # ImageSet whose copy fits in training_set.AUTO_RAM_BYTES (1 GiB), else stream. Same results.
    storage: str = "auto"
    # search over the processes of an initialised torch.distributed group: rank r of W holds the images
    # [r N / W, (r + 1) N / W) for the neighbour search, the ranks' neighbours are merged into the k nearest of the
    # whole set, and every rank reads the chosen images from the training set it was given (only those rows: pages
    # of a memory-mapped file); calls are collective and give the one-process result
    distributed: bool = False

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
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


class KNNDenoiser:
    """Nearest-neighbour importance-sampling estimate of E[x0 | x] over the training set.

    Memory (N training images, 2N with xflip, of D = C*H*W values; B queries; M = k + n_random; n = chunk_size):
    16 N bytes for the squared norms and the permutation, plus storage="ram": 4 N D of float32 images for the
    denoiser's life (storage="stream": nothing per image; an ImageSet's uint8 storage stays where it is). A call adds
    about 4 n D + 16 B (n + 2 k) for the search, B N for the flags of the neighbours and 12 B (2 k + M) D for the
    chosen images (float32 and float64).
    index="faiss" holds faiss's own float32 copy, 4 N D, whatever the storage. With distributed=True each rank holds
    these for its shard of N / W images (the permutation and the neighbour flags stay N), and a call adds
    16 W B k for the gathered candidates.
    """

    config_class = KNNConfig
    tunable = None  # k and n_random trade cost for accuracy; they are not fitted per sigma

    def __init__(self, train: Tensor | ImageSet, k: int = 256, n_random: int = 256, seed: int = 0,
                 index: str = "exact", xflip: bool = False, chunk_size: int | None = None, storage: str = "auto",
                 distributed: bool = False):
        self.config = KNNConfig(k=k, n_random=n_random, seed=seed, index=index, xflip=xflip, chunk_size=chunk_size,
                                storage=storage, distributed=distributed)
        source = training_source(train, xflip)
        n_images = len(source)
        self.image_shape_ = source.image_shape  # (C, H, W)
        self.n_nearest_ = min(k, n_images)  # neighbours kept exactly
        self.n_random_ = min(n_random, n_images - self.n_nearest_)  # random others (all of the rest if fewer)
        self.source_ = source  # the whole set, read only at the chosen images when distributed
        searched = source
        if distributed:  # this rank searches its shard; global_index_ maps its images to the whole set's
            searched = shard(source)
            self.global_index_ = shard_indices(source.storage.shape[0], xflip, dist.get_rank(), dist.get_world_size())
        self.storage_ = resolve_storage(storage, train, searched, bytes_per_value=4)  # "ram" or "stream"
        # [n, C, H, W] float32 (half the memory of float64 at N = 10^6), or the storage read on demand
        self.train_ = searched if self.storage_ == "stream" else TrainingImages(
            searched.read(0, len(searched)).contiguous(), xflip=False)
        rows = search_chunk_size(math.prod(self.image_shape_), chunk_size)
        self.train_norms_ = torch.cat([squared_norms(chunk.flatten(1)) for chunk in self.train_.chunks(rows)])  # [n]
        self.order_ = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))  # [N]
        self.index_ = faiss_flat_index(self.train_, rows) if index == "faiss" else None
        in_ram = (self.train_.storage,) if self.storage_ == "ram" else ()
        self._device_copies = DeviceCopies(self.train_norms_, self.order_, *in_ram)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the estimate of E[x0 | x], shape/dtype/device of x."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)
        queries = x.reshape(x.shape[0], -1).double()  # [B, D]
        chosen, log_weights = self.chosen_images(queries)
        whole = self.source_ if self.config.distributed else self.training_images_on(x.device)
        rows = whole.gather(chosen, x.device).flatten(2).double()  # [B, M, D]
        distances = (queries[:, None] - rows).square().sum(2)  # [B, M]
        offsets = distances - distances.amin(1, keepdim=True)  # relative to the nearest: no overflow at a tiny sigma
        inv_two_var = (1.0 / (2.0 * sigma[:, None] ** 2)).clamp(max=torch.finfo(torch.float64).max)  # no 0 * inf
        logits = -offsets * inv_two_var + log_weights
        mean = torch.einsum("bm,bmd->bd", logits.softmax(1), rows)
        return check_finite_output(mean.reshape(x.shape).to(x.dtype), "the kNN denoiser", sigma)

    def training_images_on(self, device: torch.device) -> TrainingImages:
        """The training images read on `device`: the in-RAM copy there (copied once), or the storage."""
        if self.storage_ == "stream":
            return self.train_
        return TrainingImages(self._device_copies.on(device)[2], xflip=False)

    def chosen_images(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Indices [B, k + n_random] of the neighbours then the random others, and their log importance weights
        float64 [k + n_random] (0 for neighbours, log((N - k) / n_random) for the others). queries: float64 [B, D]."""
        train_norms, order = self._device_copies.on(queries.device)[:2]
        n_searched = min(self.n_nearest_, train_norms.shape[0])  # a rank's shard may hold fewer than k images
        if self.n_nearest_ == 0:
            neighbours = torch.zeros(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
        elif self.index_ is not None:
            neighbours = faiss_search(self.index_, queries, n_searched)
        else:
            neighbours = nearest_indices(queries, self.training_images_on(queries.device), train_norms, n_searched,
                                         self.config.chunk_size)
        if self.config.distributed and self.n_nearest_:
            neighbours = nearest_over_ranks(queries, self.training_images_on(queries.device), neighbours,
                                            self.global_index_, self.n_nearest_)
        others = random_others(order, neighbours, self.n_random_)
        n_rest = order.shape[0] - self.n_nearest_
        log_weights = torch.zeros(self.n_nearest_ + self.n_random_, dtype=torch.float64, device=queries.device)
        if self.n_random_:
            log_weights[self.n_nearest_ :] = math.log(n_rest / self.n_random_)
        return torch.cat([neighbours, others], 1), log_weights


def nearest_over_ranks(queries: Tensor, images: TrainingImages, neighbours: Tensor, global_index: Tensor,
                       k: int) -> Tensor:
    """The k nearest of the whole set, indices int64 [B, k] in it, from each rank's nearest of its shard.

    queries: float64 [B, D]; images: this rank's shard; neighbours: int64 [B, k_r] (k_r <= k) into it; global_index:
    int64 [n_r], each shard image's index in the whole set. Each rank sends its candidates' float64 distances and
    whole-set indices (padded to k with +inf); every rank keeps the same k smallest. One all_gather of each.
    """
    rows = images.gather(neighbours, queries.device).flatten(2).double()  # [B, k_r, D]
    distances = F.pad((queries[:, None] - rows).square().sum(2), (0, k - neighbours.shape[1]), value=math.inf)
    indices = F.pad(global_index.to(queries.device)[neighbours], (0, k - neighbours.shape[1]), value=-1)
    world_size = dist.get_world_size()
    all_distances = [torch.empty_like(distances) for _ in range(world_size)]
    all_indices = [torch.empty_like(indices) for _ in range(world_size)]
    dist.all_gather(all_distances, distances)
    dist.all_gather(all_indices, indices)
    _, order = torch.cat(all_distances, 1).topk(k, dim=1, largest=False)
    return torch.cat(all_indices, 1).gather(1, order)


def search_chunk_size(dim: int, chunk_size: int | None = None) -> int:
    """Training images per chunk of the search: chunk_size, or about 4 MiB of float32 rows of D values."""
    return chunk_size or default_chunk_size(dim, 1 << 23)


def row_chunks_of(images: TrainingImages, train_norms: Tensor, chunk_size: int,
                  device: torch.device) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(start, rows float32 [n, D] on `device`, their squared norms float64 [n]) over the training images, in order."""
    for start in range(0, len(images), chunk_size):
        rows = images.read(start, start + chunk_size, device).flatten(1)
        yield start, rows, train_norms[start : start + rows.shape[0]]


def nearest_indices(queries: Tensor, images: TrainingImages, train_norms: Tensor, k: int,
                    chunk_size: int | None = None) -> Tensor:
    """Indices int64 [B, k] of the k nearest training images of each query (exact; in no particular order).

    A float32 screen keeps the 2k images of smallest approximate distance, their float64 distances pick the k
    nearest, and a rounding-error bound certifies that no image outside the screen is nearer (`screen_bound`); a
    query without the certificate is searched again with float64 distances. queries: float64 [B, D]; train_norms:
    [N] float64 (`squared_norms`).
    """
    n_keep = min(2 * k, len(images))
    chunk_size = search_chunk_size(queries.shape[1], chunk_size)
    screened, candidates = screen(queries, images, train_norms, n_keep, chunk_size)  # [B, n_keep]
    rows = images.gather(candidates, queries.device).flatten(2).double()  # [B, n_keep, D]
    distances = (queries[:, None] - rows).square().sum(2)  # [B, n_keep], float64
    kth, order = distances.topk(k, dim=1, largest=False)
    nearest = candidates.gather(1, order)
    if n_keep == len(images):
        return nearest  # the screen kept every image
    bound = screen_bound(queries, train_norms)  # [B]
    uncertain = kth[:, -1] > screened[:, -1] - bound  # an image outside the screen might be nearer
    for b in uncertain.nonzero().flatten().tolist():
        nearest[b] = nearest_indices_float64(queries[b : b + 1], images, train_norms, k, chunk_size)[0]
    return nearest


def screen(queries: Tensor, images: TrainingImages, train_norms: Tensor, n_keep: int,
           chunk_size: int) -> tuple[Tensor, Tensor]:
    """The n_keep images of smallest approximate squared distance |q|^2 - 2 fl32(q . x) + |x|^2 per query, streamed:
    (approximate distances float64 [B, n_keep] ascending, indices int64 [B, n_keep]). Half the memory traffic and
    twice the GEMM speed of float64, at an error below `screen_bound`."""
    query_norms = queries.square().sum(1, keepdim=True)  # [B, 1] float64
    queries32 = queries.float()
    best = torch.empty(queries.shape[0], 0, dtype=torch.float64, device=queries.device)
    best_indices = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
    for start, rows, norms in row_chunks_of(images, train_norms, chunk_size, queries.device):
        distances = query_norms - 2 * (queries32 @ rows.T).double() + norms  # [B, n]
        indices = torch.arange(start, start + rows.shape[0], device=queries.device).expand_as(distances)
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


def nearest_indices_float64(queries: Tensor, images: TrainingImages, train_norms: Tensor, k: int,
                            chunk_size: int) -> Tensor:
    """Indices int64 [B, k] of the k nearest training images by float64 distances, streamed over the training set."""
    best = torch.empty(queries.shape[0], 0, dtype=torch.float64, device=queries.device)
    best_indices = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
    chunks = ((rows, norms) for _, rows, norms in row_chunks_of(images, train_norms, chunk_size, queries.device))
    start = 0
    for _, distances in squared_distances_to(queries, chunks):
        indices = torch.arange(start, start + distances.shape[1], device=queries.device).expand_as(distances)
        best, best_indices = smallest(torch.cat([best, distances], 1), torch.cat([best_indices, indices], 1), k)
        start += distances.shape[1]
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


def faiss_flat_index(images: TrainingImages, chunk_size: int):
    """A faiss IndexFlatL2 over the training images (float32, CPU), added chunk by chunk; needs the optional package
    faiss-cpu."""
    try:
        import faiss
    except ImportError:
        raise DenoiserLabError("index='faiss' needs the optional package faiss-cpu, which is not installed "
                               "(pip install faiss-cpu, or the extra denoiserlab[faiss]); use index='exact'") from None
    index = faiss.IndexFlatL2(math.prod(images.image_shape))
    for chunk in images.chunks(chunk_size):
        index.add(chunk.flatten(1).contiguous().numpy())
    return index


def faiss_search(index, queries: Tensor, k: int) -> Tensor:
    """Indices int64 [B, k] of the k nearest rows in a faiss index, on the queries' device."""
    _, found = index.search(queries.float().cpu().contiguous().numpy(), k)
    return torch.from_numpy(found).to(device=queries.device, dtype=torch.int64)
