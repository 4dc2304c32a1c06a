"""Weight NMSE against the number of least-squares samples, and its noise-free floor."""

import numpy as np
import pytest
import torch

from denoiserlab.analysis import LinearDenoiser, distill_linear, weight_nmse, weight_nmse_versus_samples
from denoiserlab.analysis.distillation_noise import least_squares_noise, least_squares_with_halves, split_half_nmse
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


def test_least_squares_noise_predicts_the_fits_scatter():
    """A Gaussian map R plus white output noise of variance v on Gaussian images: over several draws, the plain
    fit's NMSE to R minus the split-half estimate (the noise part) matches the prediction from the fit residual and
    R's spectrum; so does the mean-square output difference of the fit to R on fresh noisy images."""
    dim, sigma, n, variance = 16, 0.5, 96, 0.04
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) * 0.15
    images = (torch.randn(4000, dim, generator=generator, dtype=torch.float64) @ mixing.T).reshape(-1, 1, 4, 4)
    flat = images.flatten(1)
    covariance = torch.cov(flat.T, correction=0)
    gaussian_map = covariance @ torch.linalg.inv(covariance + sigma**2 * torch.eye(dim, dtype=torch.float64))
    spectrum = torch.linalg.svdvals(gaussian_map)
    mean = flat.mean(0)
    linear = LinearDenoiser(gaussian_map, mean - gaussian_map @ mean, (1, 4, 4))
    noise = torch.Generator().manual_seed(1)

    def noisy_gaussian(x, sigma):
        return linear(x, sigma) + variance**0.5 * torch.randn(x.shape, generator=noise, dtype=x.dtype)

    measured_nmse, predicted_nmse, measured_output, predicted_output = [], [], [], []
    fresh = (images[:2000] + sigma * torch.randn(2000, 1, 4, 4, generator=generator, dtype=torch.float64)).flatten(1)
    for seed in range(40):
        weight, _, fit_mse, _ = least_squares_with_halves(noisy_gaussian, images, sigma, n, seed=seed)
        nmse, output = least_squares_noise(float(fit_mse), n, spectrum, sigma)
        measured_nmse.append(weight_nmse(weight, gaussian_map))
        measured_output.append(((fresh - mean) @ (weight - gaussian_map).T).pow(2).mean().item())
        predicted_nmse.append(nmse)
        predicted_output.append(output)
    assert np.mean(measured_nmse) == pytest.approx(np.mean(predicted_nmse), rel=0.15)
    assert np.mean(measured_output) == pytest.approx(np.mean(predicted_output), rel=0.15)
    with pytest.raises(DenoiserLabError, match="needs n_samples > D"):
        least_squares_noise(0.1, 17, spectrum, sigma)
