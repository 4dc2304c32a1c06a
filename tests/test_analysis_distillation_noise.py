"""Weight NMSE against the number of least-squares samples, and its noise-free floor."""

import numpy as np
import pytest
import torch

from denoiserlab.analysis import LinearDenoiser, distill_linear, weight_nmse, weight_nmse_versus_samples
from denoiserlab.analysis.distillation_noise import least_squares_with_halves, split_half_nmse
from denoiserlab.analysis.noisy_inputs import noisy_batches
from denoiserlab.errors import DenoiserLabError


def nonlinear_denoiser(x, sigma):
    return torch.tanh(1.5 * x) / (1 + sigma) + 0.1 * x.flip(-1) ** 2


def test_prefix_fits_match_numpy_lstsq_on_the_same_draw(tiny_train):
    reference = torch.eye(36, dtype=torch.float64) * 0.5
    sizes, sigma = (40, 90, 200), 0.8
    result = weight_nmse_versus_samples(nonlinear_denoiser, tiny_train, sigma, reference, sizes, seed=3,
                                        batch_size=32)
    inputs = torch.cat(list(noisy_batches(tiny_train, sigma, 200, 32, 3))).flatten(1).double().numpy()
    targets = nonlinear_denoiser(torch.from_numpy(inputs).float().reshape(-1, 1, 6, 6), sigma)
    targets = targets.flatten(1).double().numpy()
    for n, nmse in zip(sizes, result["weight_nmse"]):
        design = np.concatenate([inputs[:n], np.ones((n, 1))], 1)
        weight = np.linalg.lstsq(design, targets[:n], rcond=None)[0][:-1].T
        expected = ((weight - reference.numpy()) ** 2).sum() / (reference.numpy() ** 2).sum()
        assert nmse == pytest.approx(expected, rel=1e-6)
    assert result["n"] == list(sizes)


def test_split_half_estimate_removes_the_fitting_noise():
    """A linear map W plus output noise: fits scatter around W by O(D / n); the split-half NMSE is NMSE(W, ref)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 16, generator=generator, dtype=torch.float64) / 4
    reference = weight + 0.05 * torch.randn(16, 16, generator=generator, dtype=torch.float64)
    images = torch.rand(50, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    linear = LinearDenoiser(weight, torch.zeros(16, dtype=torch.float64), (1, 4, 4))
    noise = torch.Generator().manual_seed(1)

    def noisy_linear(x, sigma):
        return linear(x, sigma) + 0.5 * torch.randn(x.shape, generator=noise, dtype=x.dtype)

    result = weight_nmse_versus_samples(noisy_linear, images, 0.3, reference, (40, 160, 640, 2560))
    expected = weight_nmse(weight, reference)
    assert result["weight_nmse"][0] > 5 * expected  # 40 samples for 17 unknowns per output: mostly noise
    assert result["weight_nmse"][-1] > expected
    assert result["noise_free_nmse"] == pytest.approx(expected, rel=0.08)


def test_split_half_reference():
    generator = torch.Generator().manual_seed(2)
    first, second, reference = (torch.randn(3, 3, generator=generator) for _ in range(3))
    numerator = sum((first[i, j].double() - reference[i, j].double()) * (second[i, j].double() - reference[i, j])
                    for i in range(3) for j in range(3))
    denominator = sum(reference[i, j].double() ** 2 for i in range(3) for j in range(3))
    assert split_half_nmse(first, second, reference) == pytest.approx((numerator / denominator).item(), rel=1e-12)


def test_sizes_are_checked(tiny_train):
    reference = torch.eye(36)
    for sizes in [(), (200, 100), (36, 100), (40, 60)]:
        with pytest.raises(DenoiserLabError, match="sizes must be"):
            weight_nmse_versus_samples(nonlinear_denoiser, tiny_train, 0.5, reference, sizes)


def test_least_squares_with_halves_is_distill_linears_fit(tiny_train):
    weight, bias, _, halves = least_squares_with_halves(nonlinear_denoiser, tiny_train, 0.7, 100, seed=4,
                                                        batch_size=32)
    expected_weight, expected_bias = distill_linear(nonlinear_denoiser, tiny_train, 0.7, n_samples=100, seed=4,
                                                    batch_size=32)
    assert torch.allclose(weight, expected_weight, atol=1e-8) and torch.allclose(bias, expected_bias, atol=1e-8)
    assert halves is not None and all(half.shape == (36, 36) for half in halves)
    assert least_squares_with_halves(nonlinear_denoiser, tiny_train, 0.7, 60)[3] is None  # < 2 (D + 1)
    with pytest.raises(DenoiserLabError, match="D \\+ 1 = 37"):
        least_squares_with_halves(nonlinear_denoiser, tiny_train, 0.7, 30)
