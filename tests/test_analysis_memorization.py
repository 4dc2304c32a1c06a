"""Nearest-neighbour distances and the generalization score (Li et al. eq. 14) against brute-force float64 loops."""

import math

import pytest
import torch

from denoiserlab.analysis import generalization_score, nearest_neighbour_distances
from denoiserlab.errors import DenoiserLabError


def brute_force(samples, train):
    """(distances, indices, score) by explicit loops in float64."""
    distances, indices, ratios = [], [], []
    for sample in samples.double():
        candidates = [math.sqrt(((sample - image) ** 2).sum().item()) for image in train.double()]
        best = min(range(len(candidates)), key=candidates.__getitem__)
        distances.append(candidates[best])
        indices.append(best)
        ratios.append(candidates[best] / math.sqrt((sample**2).sum().item()))
    return distances, indices, sum(ratios) / len(ratios)


def test_matches_brute_force(tiny_rgb_train):
    samples = torch.rand(7, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 2 - 1
    distances, indices = nearest_neighbour_distances(samples, tiny_rgb_train, chunk_size=4)
    reference_distances, reference_indices, reference_score = brute_force(samples, tiny_rgb_train)
    assert torch.allclose(distances, torch.tensor(reference_distances, dtype=torch.float64), atol=1e-10)
    assert indices.tolist() == reference_indices
    assert generalization_score(samples, tiny_rgb_train, chunk_size=4) == pytest.approx(reference_score, rel=1e-10)


def test_training_copies_score_zero(tiny_rgb_train):
    samples = tiny_rgb_train[[3, 0, 11]]
    distances, indices = nearest_neighbour_distances(samples, tiny_rgb_train)
    assert indices.tolist() == [3, 0, 11]
    assert distances.abs().max() < 1e-6
    assert generalization_score(samples, tiny_rgb_train) < 1e-6
    # a small perturbation gives a small score, equal to |delta| / |x| for the one sample
    perturbed = tiny_rgb_train[[3]] + 0.01
    expected = 0.01 * math.sqrt(75) / perturbed.double().norm().item()
    assert generalization_score(perturbed, tiny_rgb_train) == pytest.approx(expected, rel=1e-5)


def test_shape_mismatch(tiny_rgb_train, tiny_train):
    with pytest.raises(DenoiserLabError, match="mismatch"):
        generalization_score(tiny_train, tiny_rgb_train)
