"""Gaussian-mixture score approximation (Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score
Approximation for Diffusion Models and its Applications", TMLR 2024): one Gaussian per class or per k-means cluster.

Component k has the mean mu_k, biased covariance S_k = U_k diag(lambda_k) U_k^T (optionally its top `rank`
eigenpairs) and weight pi_k = n_k / N of its n_k training images. Under x = x0 + sigma eps the posterior mean is
    D(x, sigma) = sum_k w_k(x) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)],
    w_k(x) proportional to pi_k N(x; mu_k, S_k + sigma^2 I),
computed in float64 from each component's cached eigendecomposition (`gaussian.py`): in the eigenbasis the
Mahalanobis term is sum_j p_j^2 / (lambda_j + sigma^2) + |residual|^2 / sigma^2 with p = U_k^T (x - mu_k), and
log det(S_k + sigma^2 I) = D log sigma^2 + sum_j log(1 + lambda_j / sigma^2), whose first term all components share.
One component is the Gaussian denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.gaussian import _cached_eigendecomposition
from denoiserlab.denoisers.training_set import training_images
from denoiserlab.distances import nearest_neighbours
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample

KMEANS_MAX_ITERATIONS = 100


@dataclass(frozen=True)
class GaussianMixtureConfig:
    components: str | int = "labels"  # "labels": one Gaussian per class; an int K: K seeded k-means clusters
    rank: int | None = None  # keep the top `rank` eigenpairs of each covariance (None: all C*H*W)
    seed: int = 0  # seed of the k-means initialisation
    xflip: bool = False  # also use the horizontal flip of every training image (same label)
    cache: bool = True  # cache the eigendecompositions on disk (see gaussian.cache_dir)

    def __post_init__(self):
        if self.components != "labels" and (isinstance(self.components, bool) or not isinstance(self.components, int)
                                             or self.components < 1):
            raise DenoiserLabError(f"components must be 'labels' or an int >= 1, got {self.components!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DenoiserLabError(f"seed must be an int, got {self.seed!r}")


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
    """Mixture-of-Gaussians denoiser D(x, sigma); components from class labels or seeded k-means."""

    config_class = GaussianMixtureConfig
    tunable = None  # the components come from the data, not fitted per sigma

    def __init__(self, train: Tensor | ImageSet, components: str | int = "labels", labels: Tensor | None = None,
                 rank: int | None = None, seed: int = 0, xflip: bool = False, cache: bool = True):
        self.config = GaussianMixtureConfig(components=components, rank=rank, seed=seed, xflip=xflip, cache=cache)
        images = training_images(train, xflip)
        dim = images[0].numel()
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= dim):
            raise DenoiserLabError(f"rank must be an int between 1 and C*H*W = {dim}, got {rank!r}")
        self.image_shape_ = tuple(images.shape[1:])
        if components == "labels":
            self.labels_ = component_labels(train, labels, xflip)  # [N] int64, 0 .. K - 1
        elif labels is not None:
            raise DenoiserLabError("labels= is used with components='labels' only, got components="
                                   f"{components!r}")
        else:
            self.labels_ = kmeans_labels(images.reshape(images.shape[0], -1), components, seed)
        self.components_ = [fit_component(images[self.labels_ == k], images.shape[0], rank, cache)
                            for k in range(int(self.labels_.max()) + 1)]
        self._device_components = {torch.device("cpu"): self.components_}

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the mixture posterior mean, shape/dtype/device of x."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        queries = x.reshape(x.shape[0], -1).double()  # [B, D]
        pieces = [component_posterior(component, queries, sigma) for component in self.components_on(x.device)]
        log_weights = torch.stack([log_weight for log_weight, _ in pieces], 1)  # [B, K]
        means = torch.stack([mean for _, mean in pieces], 1)  # [B, K, D]
        mean = torch.einsum("bk,bkd->bd", log_weights.softmax(1), means)
        return mean.reshape(x.shape).to(x.dtype)

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


def kmeans_labels(flat: Tensor, n_clusters: int, seed: int) -> Tensor:
    """Lloyd's k-means (k-means++ start from a seeded generator) on rows [N, D]: cluster labels int64 [N].

    Float64 distances; stops when no label changes (at most KMEANS_MAX_ITERATIONS); an emptied cluster restarts at
    the row farthest from its centre.
    """
    if n_clusters > flat.shape[0]:
        raise DenoiserLabError(f"components={n_clusters} needs at least as many training images, got {flat.shape[0]}")
    flat = flat.double()
    centres = kmeans_plus_plus(flat, n_clusters, torch.Generator().manual_seed(seed))
    labels = None
    for _ in range(KMEANS_MAX_ITERATIONS):
        distances, new_labels = nearest_neighbours(flat, centres)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(n_clusters):
            members = labels == k
            if not members.any():  # restart an empty cluster at the worst-served row
                farthest = int(distances.argmax())
                labels[farthest], distances[farthest] = k, 0
                members = labels == k
            centres[k] = flat[members].mean(0)
    return labels


def kmeans_plus_plus(flat: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): rows drawn with probability proportional to the squared
    distance to the nearest centre so far. flat: float64 [N, D]; returns float64 [K, D]."""
    first = int(torch.randint(flat.shape[0], (1,), generator=generator))
    centres = [flat[first]]
    nearest = (flat - flat[first]).square().sum(1)  # [N]
    for _ in range(1, n_clusters):
        total = nearest.sum()
        probabilities = nearest / total if total > 0 else torch.full_like(nearest, 1 / len(nearest))
        chosen = int(torch.multinomial(probabilities, 1, generator=generator))
        centres.append(flat[chosen])
        nearest = torch.minimum(nearest, (flat - flat[chosen]).square().sum(1))
    return torch.stack(centres)


def fit_component(images: Tensor, n_total: int, rank: int | None, cache: bool) -> Component:
    """The Gaussian of one component's images [n_k, C, H, W], its weight n_k / n_total, top-`rank` eigenpairs."""
    mean, eigvals, eigvecs = _cached_eigendecomposition(images, cache)
    keep = slice(None) if rank is None else slice(0, rank)
    return Component(math.log(images.shape[0] / n_total), mean, eigvals[keep].contiguous(),
                     eigvecs[:, keep].contiguous())


def component_posterior(component: Component, queries: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(log pi_k + log N(x; mu_k, S_k + sigma^2 I) without the terms all components share, -D/2 log(2 pi sigma^2):
    [B], posterior mean mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k): [B, D]). queries: float64 [B, D]; sigma: float64
    [B]. The log-determinant enters as sum_j log(1 + lambda_j / sigma^2), finite for any sigma^2 in (0, inf]."""
    variance = (sigma[:, None] ** 2).clamp(min=torch.finfo(torch.float64).tiny)  # [B, 1]
    offset = queries - component.mean  # [B, D]
    projections = offset @ component.eigvecs  # [B, r]
    spread = component.eigvals + variance  # [B, r], eigenvalues of S_k + sigma^2 I in the kept subspace
    mahalanobis = (projections.square() / spread).sum(1)  # [B]
    n_rest = offset.shape[1] - component.eigvals.shape[0]  # directions outside the kept subspace (variance sigma^2)
    if n_rest:
        residual = offset - projections @ component.eigvecs.T  # [B, D]
        mahalanobis = mahalanobis + residual.square().sum(1) / variance[:, 0]
    relative_log_det = torch.log1p(component.eigvals / variance).sum(1)  # [B], log det(S + sigma^2 I) - D log sigma^2
    log_weight = component.log_weight - 0.5 * (mahalanobis + relative_log_det)
    mean = component.mean + (projections * component.eigvals / spread) @ component.eigvecs.T
    return log_weight, mean
