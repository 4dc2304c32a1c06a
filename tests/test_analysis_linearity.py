"""Linearity score (Li et al. 2024, eqs. 11-12) against a float64 per-pair loop and the maths of (affine) maps."""

import math

import pytest
import torch

from denoiserlab.analysis import LinearDenoiser, gaussian_linear_map, linearity_score
from denoiserlab.analysis.linearity import noisy_pairs
from denoiserlab.data import load
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser
from denoiserlab.errors import DenoiserLabError


def reference_scores(den, images, sigma, n_pairs, alpha, beta, seed):
    """Per-pair float64 loop: (mean cosine, mean NMSE) on the same pairs as linearity_score."""
    x1, x2 = noisy_pairs(images, sigma, n_pairs, seed)
    cosines, nmses = [], []
    for a, b in zip(x1, x2):
        mixed = den((alpha * a + beta * b)[None], sigma)[0].double().flatten()
        combined = (alpha * den(a[None], sigma)[0].double() + beta * den(b[None], sigma)[0].double()).flatten()
        cosines.append(torch.dot(mixed, combined) / (mixed.norm() * combined.norm()))
        nmses.append(((mixed - combined) ** 2).sum() / (combined**2).sum())
    return torch.stack(cosines).mean().item(), torch.stack(nmses).mean().item()


def squashing_denoiser(x, sigma):
    """A small nonlinear denoiser stand-in."""
    return torch.tanh(x / (1 + sigma)) * 0.9 + 0.05 * x.roll(1, -1)


@pytest.mark.parametrize("alpha, beta", [(2**-0.5, None), (0.6, None), (0.3, 1.2)])
def test_matches_per_pair_reference(tiny_train, alpha, beta):
    expected_beta = math.sqrt(1 - alpha**2) if beta is None else beta
    cosine = linearity_score(squashing_denoiser, tiny_train, 0.7, n_pairs=9, alpha=alpha, beta=beta, seed=3,
                             batch_size=4)
    nmse = linearity_score(squashing_denoiser, tiny_train, 0.7, n_pairs=9, alpha=alpha, beta=beta, seed=3,
                           metric="nmse")
    reference = reference_scores(squashing_denoiser, tiny_train, 0.7, 9, alpha, expected_beta, 3)
    assert cosine == pytest.approx(reference[0], abs=1e-6)
    assert nmse == pytest.approx(reference[1], rel=1e-5)
    assert cosine < 1 - 1e-4 and nmse > 1e-4  # the stand-in is clearly nonlinear


def test_pairs_are_in_distribution_and_seeded(tiny_train):
    x1, x2 = noisy_pairs(tiny_train, 0.5, 50, seed=1)
    y1, y2 = noisy_pairs(tiny_train, 0.5, 50, seed=1)
    assert torch.equal(x1, y1) and torch.equal(x2, y2)
    assert not torch.equal(x1, noisy_pairs(tiny_train, 0.5, 50, seed=2)[0])
    # the clean parts are training images, different within a pair; the residual noise has std sigma
    distances_1 = torch.cdist(x1.flatten(1), tiny_train.flatten(1))
    distances_2 = torch.cdist(x2.flatten(1), tiny_train.flatten(1))
    assert (distances_1.argmin(1) != distances_2.argmin(1)).all()
    nearest = tiny_train[distances_1.argmin(1)]
    assert (x1 - nearest).std().item() == pytest.approx(0.5, rel=0.1)


def test_linear_map_scores_exactly_one(tiny_train):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(36, 36, generator=generator, dtype=torch.float64) / 6
    den = LinearDenoiser(weight, torch.zeros(36, dtype=torch.float64), (1, 6, 6))
    images = tiny_train.double()
    for alpha, beta in [(2**-0.5, None), (0.3, 1.7)]:
        assert linearity_score(den, images, 0.8, n_pairs=12, alpha=alpha, beta=beta) == pytest.approx(1, abs=1e-12)
        assert linearity_score(den, images, 0.8, n_pairs=12, alpha=alpha, beta=beta, metric="nmse") < 1e-24


def test_gaussian_denoiser_is_affine(tiny_train):
    """D(x) = W x + c: D(a x1 + b x2) - (a D(x1) + b D(x2)) = (1 - a - b) c, so exact iff a + b = 1."""
    images = tiny_train.double()
    den = GaussianDenoiser(tiny_train, cache=False)
    # a + b = 1: exact, even though a^2 + b^2 != 1 puts the mixture slightly out of distribution
    assert linearity_score(den, images, 0.5, n_pairs=10, alpha=0.5, beta=0.5) == pytest.approx(1, abs=1e-12)
    assert linearity_score(den, images, 0.5, n_pairs=10, alpha=0.5, beta=0.5, metric="nmse") < 1e-24
    # a^2 + b^2 = 1 (the default): close to, but not exactly, 1 / 0, and the mismatch is (1 - a - b) c
    cosine = linearity_score(den, images, 0.5, n_pairs=10)
    nmse = linearity_score(den, images, 0.5, n_pairs=10, metric="nmse")
    assert 0.9 < cosine < 1 - 1e-6 and nmse > 1e-6
    weight, bias = gaussian_linear_map(den, 0.5)
    x1, x2 = noisy_pairs(images, 0.5, 10, seed=0)
    alpha = beta = 2**-0.5
    combined = alpha * (x1.flatten(1) @ weight.T + bias) + beta * (x2.flatten(1) @ weight.T + bias)
    expected = ((1 - alpha - beta) ** 2 * bias.pow(2).sum() / combined.pow(2).sum(1)).mean().item()
    assert nmse == pytest.approx(expected, rel=1e-9)


def test_gaussian_large_sigma_limits(tiny_train):
    """sigma -> inf: D -> mu, so the cosine -> 1 (parallel outputs) but the NMSE -> (1 - a - b)^2 / (a + b)^2."""
    den = GaussianDenoiser(tiny_train, cache=False)
    alpha = beta = 2**-0.5
    assert linearity_score(den, tiny_train, 1e4, n_pairs=10) == pytest.approx(1, abs=1e-6)
    expected = (1 - alpha - beta) ** 2 / (alpha + beta) ** 2
    assert linearity_score(den, tiny_train, 1e4, n_pairs=10, metric="nmse") == pytest.approx(expected, rel=1e-3)


def test_optimal_denoiser_is_least_linear_at_middle_sigma():
    """Fashion-MNIST: near-linear at large sigma (D ~ data mean); at middle sigma the posterior collapses onto a
    few images. At small sigma it stays low: D snaps the mixture of two images to one training image."""
    train = load("fashion-mnist", subset=500).as_float()
    den = OptimalDenoiser(train)
    scores = {sigma: linearity_score(den, train, sigma, n_pairs=20) for sigma in (80.0, 1.5, 0.002)}
    assert scores[80.0] > 0.99
    assert scores[1.5] < scores[80.0] - 0.05
    assert scores[0.002] < scores[80.0] - 0.05


def test_bad_input(tiny_train):
    with pytest.raises(DenoiserLabError, match="metric"):
        linearity_score(squashing_denoiser, tiny_train, 1.0, metric="mse")
    with pytest.raises(DenoiserLabError, match="alpha"):
        linearity_score(squashing_denoiser, tiny_train, 1.0, alpha=1.5)
    with pytest.raises(DenoiserLabError, match="at least 2"):
        linearity_score(squashing_denoiser, tiny_train[:1], 1.0)
    with pytest.raises(DenoiserLabError, match="sigma"):
        linearity_score(squashing_denoiser, tiny_train, 0.0)
    with pytest.raises(DenoiserLabError, match="n_pairs"):
        linearity_score(squashing_denoiser, tiny_train, 1.0, n_pairs=0)
    with pytest.raises(DenoiserLabError, match="shape"):
        linearity_score(lambda x, sigma: x[:, :, :3], tiny_train, 1.0)
