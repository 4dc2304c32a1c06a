"""Gaussian-mixture score approximation (Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score
Approximation for Diffusion Models and its Applications", TMLR 2024): one Gaussian per class or per k-means cluster.

Component k has the mean mu_k, biased covariance S_k = U_k diag(lambda_k) U_k^T (optionally its top `rank`
eigenpairs) and weight pi_k = n_k / N of its n_k training images. Under x = x0 + sigma eps the posterior mean is
    D(x, sigma) = sum_k w_k(x) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)],
    w_k(x) proportional to pi_k N(x; mu_k, S_k + sigma^2 I),
computed in float64 from each component's eigendecomposition, fitted as the Gaussian denoiser's
(`gaussian.fit_gaussians`; with cache=True kept in its cache: safetensors in the user cache folder, keyed by the
component's images, read back as untrusted and written atomically). In the eigenbasis, with p = U_k^T (x - mu_k),
the Mahalanobis term is sum_j p_j^2 / (lambda_j + sigma^2) + |residual|^2 / sigma^2 and
log det(S_k + sigma^2 I) = D log sigma^2 + sum_j log(1 + lambda_j / sigma^2), whose first term all components
share. The weights are formed relative to the smallest Mahalanobis term (`mixture_weights`), so any sigma in
(0, inf) gives a finite answer: as sigma -> 0 the component nearest to x (outside its span) takes all the weight, as
sigma -> inf the weights are the pi_k. One component is the Gaussian denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.distributed import gather_shards, shard, shard_indices, sum_across
from denoiserlab.denoisers.gaussian import check_rank, fit_gaussians, wiener_gains
from denoiserlab.denoisers.training_set import TrainingImages, training_source
from denoiserlab.distances import nearest_neighbours
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_finite_output,
    check_flag,
    check_optional_count,
    check_seed,
)

KMEANS_MAX_ITERATIONS = 100
CHUNK_IMAGES = 4096  # training images converted at a time by the k-means and fitting passes


@dataclass(frozen=True)
class GaussianMixtureConfig:
    components: str | int = "labels"  # "labels": one Gaussian per class; an int K: K seeded k-means clusters
    rank: int | None = None  # keep the top `rank` eigenpairs of each covariance (None: all C*H*W)
    seed: int = 0  # seed of the k-means initialisation
    xflip: bool = False  # also use the horizontal flip of every training image (same label)
    cache: bool = False  # keep each component's eigendecomposition in the user cache folder (as the Gaussian denoiser)
    # split the fitting passes (k-means, moments, covariances) over the processes of an initialised torch.distributed
    # group, each rank reading one contiguous shard; construction is collective, calls are local
    distributed: bool = False

    def __post_init__(self):
        if self.components != "labels" and (isinstance(self.components, bool) or not isinstance(self.components, int)
                                             or self.components < 1):
            raise DenoiserLabError(f"components must be 'labels' or an int >= 1, got {self.components!r}")
        check_optional_count(self.rank, "rank")  # the upper bound C*H*W is checked once the data is known
        check_seed(self.seed)
        check_flag(self.xflip, "xflip")
        check_flag(self.cache, "cache")
        check_flag(self.distributed, "distributed")


@dataclass(frozen=True)
class Component:
    """One Gaussian of the mixture, float64: mean [D], eigenvalues [r] (descending, >= 0), eigenvectors [D, r]."""

    log_weight: float  # log(n_k / N)
    mean: Tensor
    eigvals: Tensor
    eigvecs: Tensor

    def to(self, device: torch.device) -> "Component":
        return Component(self.log_weight, self.mean.to(device), self.eigvals.to(device), self.eigvecs.to(device))


class GaussianMixture:
    """Mixture-of-Gaussians denoiser D(x, sigma); components from class labels or seeded k-means.

    The components are fitted over chunks of the training set read from its storage (an ImageSet's uint8, memory-
    mapped or not, converted chunk by chunk; `gaussian.fit_gaussians`: per-component float64 sums, then centred
    outer products), and k-means reads it once per step (`kmeans_labels`), so no float copy of the set is made.
    Memory while fitting: 8 D^2 (K + 2) bytes (D = C*H*W, K components) plus about 24 n D for a chunk of
    n = CHUNK_IMAGES images and 24 N for k-means' labels and distances (N images, 2N with xflip); the denoiser then
    holds its labels (8 N bytes) and about 8 K D (r + 1) (r = rank or D).
    """

    config_class = GaussianMixtureConfig
    tunable = None  # the components come from the data, not fitted per sigma

    def __init__(self, train: Tensor | ImageSet, components: str | int = "labels", labels: Tensor | None = None,
                 rank: int | None = None, seed: int = 0, xflip: bool = False, cache: bool = False,
                 distributed: bool = False):
        self.config = GaussianMixtureConfig(components=components, rank=rank, seed=seed, xflip=xflip, cache=cache,
                                            distributed=distributed)
        images = training_source(train, xflip)
        own = Shard.of(images) if distributed else Shard.whole(images)  # the images this process reads
        check_rank(rank, math.prod(images.image_shape))
        self.image_shape_ = images.image_shape
        if components == "labels":
            self.labels_ = component_labels(train, labels, xflip)  # [N] int64, 0 .. K - 1
        elif labels is not None:
            raise DenoiserLabError("labels= is used with components='labels' only, got components="
                                   f"{components!r}")
        else:
            self.labels_ = kmeans_labels(images, components, seed, CHUNK_IMAGES, own)
        fitted = fit_gaussians(own.images, self.labels_[own.indices], int(self.labels_.max()) + 1, cache, CHUNK_IMAGES,
                               distributed)
        keep = slice(None) if rank is None else slice(0, rank)
        self.components_ = [Component(math.log(part.n_images / len(images)), part.mean, part.eigvals[keep].contiguous(),
                                      part.eigvecs[:, keep].contiguous()) for part in fitted]
        self._device_components = {torch.device("cpu"): self.components_}

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the mixture posterior mean, shape/dtype/device of x."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        queries = x.reshape(x.shape[0], -1).double()  # [B, D]
        pieces = [component_posterior(component, queries, sigma) for component in self.components_on(x.device)]
        offsets, spreads, means = (torch.stack(part, 1) for part in zip(*pieces))  # [B, K], [B, K], [B, K, D]
        mean = torch.einsum("bk,bkd->bd", mixture_weights(offsets, spreads, sigma), means)
        return check_finite_output(mean.reshape(x.shape).to(x.dtype), "the Gaussian mixture", sigma)

    def components_on(self, device: torch.device) -> list[Component]:
        """The components with their tensors on `device` (copied once per device)."""
        if device not in self._device_components:
            self._device_components[device] = [component.to(device) for component in self.components_]
        return self._device_components[device]


def component_labels(train: Tensor | ImageSet, labels: Tensor | None, xflip: bool) -> Tensor:
    """Class labels [N] (or [2N] with xflip) renumbered 0 .. K - 1 in ascending order, from labels= or the ImageSet."""
    n_images = len(train) if isinstance(train, ImageSet) else train.shape[0]
    if labels is None:
        labels = train.labels if isinstance(train, ImageSet) else None
        if labels is None:
            raise DenoiserLabError("components='labels' needs class labels: pass an ImageSet with labels or labels= "
                                   "(or use components=K for k-means)")
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or tuple(labels.shape) != (n_images,):
        seen = f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}"
        raise DenoiserLabError(f"labels must be an integer tensor [N] with N = {n_images}, got {seen}")
    _, renumbered = torch.unique(labels.cpu().long(), return_inverse=True)
    return torch.cat([renumbered, renumbered]) if xflip else renumbered


@dataclass(frozen=True)
class Shard:
    """The training images one process reads (all of them, or its torch.distributed shard) and their indices in the
    whole set; `whole_of` turns per-image values of these images into values for the whole set on every process."""

    images: TrainingImages
    indices: Tensor  # int64 [n]: index in the whole set of each of `images`
    distributed: bool
    n_stored: int  # stored images of the whole set (its length is n_stored, or 2 n_stored with xflip)

    @classmethod
    def whole(cls, images: TrainingImages) -> "Shard":
        return cls(images, torch.arange(len(images)), False, images.storage.shape[0])

    @classmethod
    def of(cls, images: TrainingImages) -> "Shard":
        """This rank's contiguous shard (refused without a process group)."""
        own = shard(images)
        indices = shard_indices(images.storage.shape[0], images.xflip, dist.get_rank(), dist.get_world_size())
        return cls(own, indices, True, images.storage.shape[0])

    def whole_of(self, values: Tensor) -> Tensor:
        """Per-image values [n, ...] of `images` -> [N, ...] for the whole set (gathered over the ranks)."""
        return gather_shards(values, self.n_stored, self.images.xflip) if self.distributed else values

    def summed(self, values: Tensor) -> Tensor:
        """Sums over `images` -> sums over the whole set."""
        return sum_across(values) if self.distributed else values


def kmeans_labels(images: TrainingImages, n_clusters: int, seed: int, chunk_images: int,
                  own: Shard | None = None) -> Tensor:
    """Lloyd's k-means (k-means++ start from a seeded generator) on the N images: cluster labels int64 [N].

    Each step is one pass over chunks of the storage: float64 distances to the centres, the nearest centre of each
    image, and the float64 sums of each cluster's new members (the next centres). Stops when no label changes (at
    most KMEANS_MAX_ITERATIONS); an emptied cluster restarts at the image farthest from its centre. own: the images
    this process passes over (a torch.distributed shard: its distances and labels are gathered and its sums summed
    over the ranks, so every rank takes the same steps as one process would); None: all of them.
    """
    if n_clusters > len(images):
        raise DenoiserLabError(f"components={n_clusters} needs at least as many training images, got {len(images)}")
    own = own or Shard.whole(images)
    centres = kmeans_plus_plus(images, own, n_clusters, torch.Generator().manual_seed(seed), chunk_images)
    labels = None
    for _ in range(KMEANS_MAX_ITERATIONS):
        distances, new_labels, counts, sums = assign_to_centres(own.images, centres, chunk_images)
        distances, new_labels = own.whole_of(distances), own.whole_of(new_labels)
        counts, sums = own.summed(counts), own.summed(sums)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(n_clusters):
            if counts[k] == 0:  # restart an empty cluster at the worst-served image
                farthest = int(distances.argmax())
                row = image_row(images, farthest)
                counts[labels[farthest]] -= 1
                sums[labels[farthest]] -= row
                labels[farthest], distances[farthest], counts[k], sums[k] = k, 0, 1, row
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return labels


def image_row(images: TrainingImages, index: int) -> Tensor:
    """Training image `index` as a float64 row [D]."""
    return images.read(index, index + 1).reshape(-1).double()


def assign_to_centres(images: TrainingImages, centres: Tensor,
                      chunk_images: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One k-means pass: (distance to the nearest centre float64 [N], its index int64 [N], members per centre int64
    [K], float64 sums of the members [K, D]). centres: float64 [K, D]."""
    distances, labels = [], []
    counts = torch.zeros(centres.shape[0], dtype=torch.int64)
    sums = torch.zeros_like(centres)
    for chunk in images.chunks(chunk_images):
        rows = chunk.reshape(chunk.shape[0], -1).double()  # [n, D]
        chunk_distances, chunk_labels = nearest_neighbours(rows, centres)
        counts += torch.bincount(chunk_labels, minlength=centres.shape[0])
        sums.index_add_(0, chunk_labels, rows)
        distances.append(chunk_distances)
        labels.append(chunk_labels)
    return torch.cat(distances), torch.cat(labels), counts, sums


def kmeans_plus_plus(images: TrainingImages, own: Shard, n_clusters: int, generator: torch.Generator,
                     chunk_images: int) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): images drawn with probability proportional to the squared
    distance to the nearest centre so far, one pass over `own`'s images per centre (their distances gathered for
    the whole set). Returns float64 [K, D]."""
    first = int(torch.randint(len(images), (1,), generator=generator))
    centres = [image_row(images, first)]
    nearest = own.whole_of(squared_distances_to_row(own.images, centres[0], chunk_images))  # [N]
    for _ in range(1, n_clusters):
        total = nearest.sum()
        probabilities = nearest / total if total > 0 else torch.full_like(nearest, 1 / len(nearest))
        chosen = int(torch.multinomial(probabilities, 1, generator=generator))
        centres.append(image_row(images, chosen))
        nearest = torch.minimum(nearest, own.whole_of(squared_distances_to_row(own.images, centres[-1], chunk_images)))
    return torch.stack(centres)


def squared_distances_to_row(images: TrainingImages, row: Tensor, chunk_images: int) -> Tensor:
    """|x_i - row|^2 in float64 for every image, as sums of squared differences: [N]. row: float64 [D]."""
    return torch.cat([(chunk.reshape(chunk.shape[0], -1).double() - row).square().sum(1)
                      for chunk in images.chunks(chunk_images)])


def component_posterior(component: Component, queries: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One component's share of the posterior, in a form finite at any sigma in (0, inf). Returns
      offset [B]: log pi_k - 1/2 log det(S_k + sigma^2 I) + D/2 log sigma^2 (the last term is shared by all components),
      spread [B]: sigma^2 (x - mu_k)^T (S_k + sigma^2 I)^-1 (x - mu_k), so that log pi_k N(x; mu_k, S_k + sigma^2 I)
        = offset - spread / (2 sigma^2) + (terms every component shares), and
      mean [B, D]: the posterior mean mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k).
    In the eigenbasis, with p = U_k^T (x - mu_k), r the part of x - mu_k outside the kept eigenvectors and
    ratio_j = lambda_j / sigma^2: spread = sum_j p_j^2 / (1 + ratio_j) + |r|^2 and the log-determinant is
    sum_j log(1 + ratio_j). Each term stays finite where sigma^2 underflows or overflows in float64 (ratio_j is then
    formed from logarithms), and as sigma -> 0 the component nearest to x, outside its span, takes all the weight.
    queries: float64 [B, D]; sigma: float64 [B]."""
    log_variance = 2 * sigma.log()[:, None]  # [B, 1], finite for any sigma > 0
    variance = sigma[:, None] ** 2  # may underflow to 0 or overflow to inf
    plain = (variance > 0) & torch.isfinite(variance)
    log_eigvals = component.eigvals.log()  # [r], -inf for a zero eigenvalue
    ratio = torch.where(plain, component.eigvals / torch.where(plain, variance, 1.0),
                        torch.exp(log_eigvals - log_variance))  # [B, r], lambda_j / sigma^2
    offset = queries - component.mean  # [B, D]
    projections = offset @ component.eigvecs  # [B, r]
    spread = (projections.square() / (1 + ratio)).sum(1)  # [B]
    if component.eigvals.shape[0] < offset.shape[1]:  # directions outside the kept subspace (variance sigma^2)
        residual = offset - projections @ component.eigvecs.T  # [B, D]
        spread = spread + residual.square().sum(1)
    log_det = (torch.logaddexp(log_eigvals, log_variance) - log_variance).sum(1)  # [B], sum_j log(1 + ratio_j)
    gains = wiener_gains(component.eigvals, variance)  # [B, r], lambda_j / (lambda_j + sigma^2), 0 where lambda_j = 0
    mean = component.mean + (projections * gains) @ component.eigvecs.T
    return component.log_weight - 0.5 * log_det, spread, mean


def mixture_weights(offsets: Tensor, spreads: Tensor, sigma: Tensor) -> Tensor:
    """softmax_k(offset_k - spread_k / (2 sigma^2)) relative to the smallest spread, so that no term overflows at a
    tiny sigma (1 / (2 sigma^2) capped: exact ties keep sharing the weight). offsets, spreads: [B, K]; sigma: [B]."""
    inv_two_var = (1.0 / (2.0 * sigma[:, None] ** 2)).clamp(max=torch.finfo(torch.float64).max)  # [B, 1]
    gaps = spreads - spreads.amin(1, keepdim=True)  # [B, K], >= 0
    return (offsets - gaps * inv_two_var).softmax(1)
