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


def test_nearest_neighbour_ratio_matches_sorted_loop(tiny_rgb_train):
    from denoiserlab.analysis import memorized_fraction, nearest_neighbour_ratio

    samples = torch.randn(7, *tiny_rgb_train.shape[1:], generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    samples[0] = tiny_rgb_train[4] + 0.001  # a near copy
    expected = []
    for sample in samples.double():
        distances = sorted(math.sqrt(((sample - image) ** 2).sum().item()) for image in tiny_rgb_train.double())
        expected.append(distances[0] / distances[1])
    ratios = nearest_neighbour_ratio(samples, tiny_rgb_train, chunk_size=3)  # chunks force the running merge
    torch.testing.assert_close(ratios, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert ratios[0] < 0.01
    assert memorized_fraction(samples, tiny_rgb_train) == pytest.approx(sum(r < 1 / 3 for r in expected) / 7)
    with pytest.raises(DenoiserLabError, match="at least 2 training images"):
        nearest_neighbour_ratio(samples, tiny_rgb_train[:1])


@pytest.mark.parametrize("copies, calibrated, verdict", [
    (0.0, 1.3, "generalizes"), (0.01, 0.9, "generalizes"), (0.0, 0.6, "partly memorizes"),
    (0.05, 1.2, "partly memorizes"), (0.22, 0.58, "partly memorizes"), (0.5, 1.0, "memorizes"),
    (0.9, 0.1, "memorizes"), (0.0, math.nan, "generalizes"), (0.3, math.nan, "partly memorizes"),
    (math.nan, 0.9, "generalizes"), (math.nan, 0.2, "partly memorizes"), (math.nan, math.nan, "unknown")])
def test_memorization_verdict_never_contradicts_the_copies(copies, calibrated, verdict):
    from denoiserlab.analysis import memorization_verdict

    assert memorization_verdict(copies, calibrated) == verdict


def test_calibrated_score_divides_by_the_held_out_score():
    from denoiserlab.analysis import calibrated_score

    assert calibrated_score(0.47, 0.36) == pytest.approx(0.47 / 0.36)
    assert math.isnan(calibrated_score(0.47, 0.0)) and math.isnan(calibrated_score(0.47, None))
