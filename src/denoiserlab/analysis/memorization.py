"""Memorization checks: distance of generated samples to their nearest training image, the generalization
score of Li et al. 2024 (appendix B.1, eq. 14), and the nearest / second-nearest distance ratio (a sample whose
nearest training image is more than 3x closer than the second-nearest is a copy: Yoon et al. 2023, Gu et al. 2023)."""

from __future__ import annotations

from torch import Tensor

from denoiserlab.distances import nearest_neighbours, two_nearest_neighbours
from denoiserlab.validation import check_images, check_same_image_shape


def nearest_neighbour_distances(samples: Tensor, train: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact Euclidean distance of each sample to its nearest training image, in the [-1, 1] scale.

    samples: float [K, C, H, W]; train: float [N, C, H, W]. Returns (distances float64 [K], indices int64 [K]
    into train); float64 distances over chunks of the training set.
    """
    check_images(samples, "samples")
    check_images(train, "train")
    check_same_image_shape(samples, tuple(train.shape[1:]), "the training images")
    return nearest_neighbours(samples.reshape(samples.shape[0], -1), train.reshape(train.shape[0], -1), chunk_size)


def generalization_score(samples: Tensor, train: Tensor, chunk_size: int | None = None) -> float:
    """Mean over samples x of |x - NN(x)|_2 / |x|_2, NN(x) the nearest training image (Li et al. eq. 14).

    samples: float [K, C, H, W]; train: float [N, C, H, W], both in [-1, 1]. 0 for copies of training images;
    the paper reads a score above ~0.6 as generalization.
    """
    distances, _ = nearest_neighbour_distances(samples, train, chunk_size)
    norms = samples.reshape(samples.shape[0], -1).double().norm(dim=1)
    return (distances / norms).mean().item()


MEMORIZED_RATIO = 1 / 3  # nearest / second-nearest distance below this: the sample copies a training image


def nearest_neighbour_ratio(samples: Tensor, train: Tensor, chunk_size: int | None = None) -> Tensor:
    """Per sample, distance to the nearest training image over distance to the second-nearest: float64 [K] in
    [0, 1]; 0 for exact copies, near 1 when the sample is no closer to one training image than to the next.

    samples: float [K, C, H, W]; train: float [N, C, H, W] with N >= 2, both in [-1, 1].
    """
    check_images(samples, "samples")
    check_images(train, "train")
    check_same_image_shape(samples, tuple(train.shape[1:]), "the training images")
    distances, _ = two_nearest_neighbours(samples.reshape(samples.shape[0], -1), train.reshape(train.shape[0], -1),
                                          chunk_size)
    return distances[:, 0] / distances[:, 1].clamp(min=1e-12)


def memorized_fraction(samples: Tensor, train: Tensor, ratio: float = MEMORIZED_RATIO) -> float:
    """Fraction of samples whose nearest / second-nearest training-image distance ratio is below `ratio`."""
    return (nearest_neighbour_ratio(samples, train) < ratio).double().mean().item()
