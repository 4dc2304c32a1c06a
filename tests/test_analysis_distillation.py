"""Linear distillation, weight comparisons and the score-approximation error against float64 references."""

import numpy as np
import pytest
import torch

from denoiserlab.analysis import (
    LinearDenoiser,
    distill_linear,
    gaussian_linear_map,
    score_approximation_error,
    singular_vector_alignment,
    weight_nmse,
)
from denoiserlab.analysis.noisy_inputs import noisy_batches
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser
from denoiserlab.errors import DenoiserLabError


@pytest.fixture
def affine_map():
    """A known affine map on 1x4x4 images and 30 images to distil it on (float64)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 16, generator=generator, dtype=torch.float64) / 4
    bias = torch.randn(16, generator=generator, dtype=torch.float64) / 10
    images = torch.rand(30, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    return weight, bias, images


def nonlinear_denoiser(x, sigma):
    return torch.tanh(1.5 * x) / (1 + sigma) + 0.1 * x.flip(-1) ** 2


def test_lstsq_matches_numpy_reference(tiny_train):
    """Same noisy draw, augmented design [x, 1] solved by numpy's float64 lstsq."""
    sigma, n_samples, batch_size = 0.4, 300, 64
    weight, bias, losses = distill_linear(nonlinear_denoiser, tiny_train, sigma, n_samples=n_samples, seed=5,
                                          batch_size=batch_size, return_losses=True)
    inputs = torch.cat(list(noisy_batches(tiny_train, sigma, n_samples, batch_size, 5))).flatten(1).double()
    targets = nonlinear_denoiser(inputs.float().reshape(-1, 1, 6, 6), sigma).flatten(1).double()
    design = np.concatenate([inputs.numpy(), np.ones((n_samples, 1))], 1)
    solution = np.linalg.lstsq(design, targets.numpy(), rcond=None)[0]  # [D + 1, D]
    assert np.allclose(weight.numpy(), solution[:-1].T, atol=1e-8)
    assert np.allclose(bias.numpy(), solution[-1], atol=1e-8)
    residual = ((design @ solution - targets.numpy()) ** 2).mean()
    assert losses.item() == pytest.approx(residual, rel=1e-6)


def test_lstsq_recovers_an_affine_map(affine_map):
    weight, bias, images = affine_map
    den = LinearDenoiser(weight, bias, (1, 4, 4))
    fitted_weight, fitted_bias = distill_linear(den, images, 0.5, n_samples=64, batch_size=16)
    assert torch.allclose(fitted_weight, weight, atol=1e-10) and torch.allclose(fitted_bias, bias, atol=1e-10)
    # float32 inputs and outputs: exact up to float32 rounding
    fitted_weight, fitted_bias = distill_linear(LinearDenoiser(weight.float(), bias.float(), (1, 4, 4)),
                                                images.float(), 0.5, n_samples=64)
    assert torch.allclose(fitted_weight, weight, atol=1e-6) and torch.allclose(fitted_bias, bias, atol=1e-6)


def test_gd_recovers_an_affine_map(affine_map):
    weight, bias, images = affine_map
    den = LinearDenoiser(weight.float(), bias.float(), (1, 4, 4))
    fitted_weight, fitted_bias, losses = distill_linear(den, images.float(), 0.5, method="gd", n_samples=1024,
                                                        steps=200, learning_rate=2e-2, return_losses=True)
    assert losses.shape == (200,) and losses[-1] < 1e-3 * losses[0]
    assert torch.allclose(fitted_weight, weight, atol=1e-3) and torch.allclose(fitted_bias, bias, atol=1e-3)


def test_gd_approaches_lstsq_on_a_nonlinear_denoiser(tiny_train):
    exact_weight, exact_bias = distill_linear(nonlinear_denoiser, tiny_train, 0.4, n_samples=512, seed=2)
    weight, bias = distill_linear(nonlinear_denoiser, tiny_train, 0.4, method="gd", n_samples=512, seed=2,
                                  steps=300, learning_rate=1e-2)
    assert weight_nmse(weight, exact_weight) < 1e-3
    assert (bias - exact_bias).norm() < 0.05 * exact_bias.norm()


def test_gaussian_denoiser_distils_to_its_own_matrix(tiny_train):
    den = GaussianDenoiser(tiny_train, cache=False)
    weight, bias = distill_linear(den, tiny_train.double(), 0.7, n_samples=200)
    # the explicit matrix U diag(S / (S + sigma^2)) U^T from the eigendecomposition of the float64 covariance
    flat = tiny_train.double().flatten(1)
    centred = flat - flat.mean(0)
    eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / flat.shape[0])
    expected = eigvecs @ torch.diag(eigvals.clamp(min=0) / (eigvals.clamp(min=0) + 0.49)) @ eigvecs.T
    assert torch.allclose(weight, expected, atol=1e-8)
    assert torch.allclose(bias, flat.mean(0) - expected @ flat.mean(0), atol=1e-8)
    gaussian_weight, gaussian_bias = gaussian_linear_map(den, 0.7)
    assert torch.allclose(gaussian_weight, expected, atol=1e-10) and torch.allclose(gaussian_bias, bias, atol=1e-8)


def test_distilled_optimal_denoiser_approaches_the_gaussian_one(tiny_train):
    """The best affine fit to E[y | x] is the best affine predictor of y from x (tower property), which is the
    Gaussian denoiser of the empirical mean and covariance (Li et al. theorem 1): the gap shrinks with n."""
    optimal, gaussian = OptimalDenoiser(tiny_train), GaussianDenoiser(tiny_train, cache=False)
    gaussian_weight, _ = gaussian_linear_map(gaussian, 1.0)
    errors = [weight_nmse(distill_linear(optimal, tiny_train, 1.0, n_samples=n, seed=1)[0], gaussian_weight)
              for n in (1000, 16000)]
    assert errors[1] < 0.01 and errors[1] < errors[0] / 4
    weight, _ = distill_linear(optimal, tiny_train, 1.0, n_samples=16000, seed=1)
    assert singular_vector_alignment(weight, gaussian_weight, 1).item() > 0.98


def test_weight_nmse_and_alignment_references():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 5, generator=generator), torch.randn(5, 5, generator=generator)
    reference = sum((a[i, j].double() - b[i, j].double()) ** 2 for i in range(5) for j in range(5))
    reference /= sum(b[i, j].double() ** 2 for i in range(5) for j in range(5))
    assert weight_nmse(a, b) == pytest.approx(reference.item(), rel=1e-12)
    # symmetric matrices with known eigenvectors: the second's leading vector rotated by theta in a plane
    basis, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))
    values = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    theta = 0.3
    rotation = torch.eye(5, dtype=torch.float64)
    rotation[[0, 0, 4, 4], [0, 4, 0, 4]] = torch.tensor([np.cos(theta), -np.sin(theta), np.sin(theta),
                                                        np.cos(theta)], dtype=torch.float64)
    first = basis @ torch.diag(values) @ basis.T
    rotated_basis = basis @ rotation
    second = -(rotated_basis @ torch.diag(values) @ rotated_basis.T)  # sign flips do not matter
    alignment = singular_vector_alignment(first, second, 4)
    assert torch.allclose(alignment, torch.tensor([np.cos(theta), 1, 1, 1], dtype=torch.float64), atol=1e-10)


def test_score_approximation_error_reference(tiny_train):
    sigma, n_samples, batch_size = 0.6, 25, 8
    gaussian = GaussianDenoiser(tiny_train, cache=False)
    error = score_approximation_error(nonlinear_denoiser, gaussian, tiny_train, sigma, n_samples, seed=4,
                                      batch_size=batch_size)
    rmses = []
    for x in torch.cat(list(noisy_batches(tiny_train, sigma, n_samples, batch_size, 4))):
        difference = nonlinear_denoiser(x[None], sigma).double() - gaussian(x[None], sigma).double()
        rmses.append(np.sqrt(sum(value**2 for value in difference.flatten().tolist()) / difference.numel()))
    assert error == pytest.approx(np.mean(rmses), rel=1e-6)
    assert score_approximation_error(gaussian, gaussian, tiny_train, sigma, 10) == 0


def test_score_approximation_error_of_a_constant_offset(affine_map):
    weight, bias, images = affine_map
    shifted = LinearDenoiser(weight, bias + 0.125, (1, 4, 4))
    error = score_approximation_error(LinearDenoiser(weight, bias, (1, 4, 4)), shifted, images, 2.0, 17)
    assert error == pytest.approx(0.125, rel=1e-12)


def test_bad_input(tiny_train):
    with pytest.raises(DenoiserLabError, match="method"):
        distill_linear(nonlinear_denoiser, tiny_train, 1.0, method="svd")
    with pytest.raises(DenoiserLabError, match="D \\+ 1"):
        distill_linear(nonlinear_denoiser, tiny_train, 1.0, n_samples=36)
    with pytest.raises(DenoiserLabError, match="learning_rate"):
        distill_linear(nonlinear_denoiser, tiny_train, 1.0, method="gd", n_samples=8, learning_rate=0)
    with pytest.raises(DenoiserLabError, match="same D"):
        weight_nmse(torch.zeros(3, 3), torch.zeros(4, 4))
    with pytest.raises(DenoiserLabError, match="at most"):
        singular_vector_alignment(torch.eye(3), torch.eye(3), 4)
    with pytest.raises(DenoiserLabError, match="weight"):
        LinearDenoiser(torch.eye(3), torch.zeros(3), (1, 2, 2))
