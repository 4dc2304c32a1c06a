"""Memorization checks: distance of generated samples to their nearest training image, the generalization
score of Li et al. 2024 (appendix B.1, eq. 14), and the nearest / second-nearest distance ratio (a sample whose
nearest training image is more than 3x closer than the second-nearest is a copy: Yoon et al. 2023, Gu et al. 2023)."""

from __future__ import annotations

import math

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


# A verdict reads the copy fraction first: a majority of copies is memorization, a few percent is partial
# memorization, whatever the score says. The score enters calibrated to the dataset: held-out images (what a perfect
# generalizer draws) score 1, training images (what a perfect memorizer draws) score 0. Li et al.'s fixed 0.6
# threshold was set on CIFAR-10; on Fashion-MNIST held-out images themselves score 0.36 against the 10k set.
COPIES_MEMORIZES = 0.5  # share of copies at or above which a network memorizes
COPIES_TOLERATED = 0.05  # share of copies below which a network can be said to generalize
CALIBRATED_SCORE_MIN = 0.75  # calibrated score below which samples sit too near the training set to generalize
VERDICTS = ("memorizes", "partly memorizes", "generalizes", "unknown")


def calibrated_score(score: float, heldout_score: float) -> float:
    """The generalization score on the dataset's own scale: score / heldout_score, where heldout_score is the score
    of held-out images against the same training set (1: as far from the training set as new real images; 0:
    copies, as training images themselves score). NaN when heldout_score is not positive or unknown."""
    if heldout_score is None or not heldout_score > 0:
        return float("nan")
    return score / heldout_score


def memorization_verdict(memorized_fraction: float, calibrated: float) -> str:
    """'memorizes' (>= 50 % copies), 'partly memorizes' (>= 5 % copies, or a calibrated score < 0.75) or
    'generalizes'. Never contradicts the copy fraction; a NaN calibrated score (no held-out images) leaves the
    decision to the copies alone, NaN copies (a single training image) to the calibrated score; 'unknown' when
    both are NaN."""
    if math.isnan(memorized_fraction):
        return "unknown" if math.isnan(calibrated) else (
            "generalizes" if calibrated >= CALIBRATED_SCORE_MIN else "partly memorizes")
    if memorized_fraction >= COPIES_MEMORIZES:
        return "memorizes"
    if memorized_fraction >= COPIES_TOLERATED or calibrated < CALIBRATED_SCORE_MIN:
        return "partly memorizes"
    return "generalizes"
