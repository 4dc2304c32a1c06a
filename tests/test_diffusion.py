"""Diffusion core: sigma grids, forward noising, Euler/Heun samplers against float64 references and closed forms."""

import math

import pytest
import torch

from denoiserlab.diffusion import (
    add_noise,
    edm_sigmas,
    gaussian_ode_trajectory,
    sample_euler,
    sample_heun,
    sampling_grid,
)
from denoiserlab.errors import DenoiserLabError

PAPER_10_STEP = [80, 42.415, 21.108, 9.723, 4.06, 1.501, 0.469, 0.116, 0.020, 0.002]  # Li et al. 2024


def test_edm_sigmas_reproduces_gaussian_paper_10_step_list():
    sigmas = edm_sigmas(10)
    assert len(sigmas) == 10
    for ours, paper in zip(sigmas.tolist(), PAPER_10_STEP):
        assert ours == pytest.approx(paper, rel=2e-3, abs=1e-3)


def test_edm_sigmas_18_steps_match_karras_formula():
    sigmas = edm_sigmas(18)
    rho, lo, hi = 7.0, 0.002, 80.0
    reference = [(hi ** (1 / rho) + i / 17 * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(18)]
    assert sigmas.tolist() == pytest.approx(reference, rel=1e-12)
    assert sigmas[0] == 80 and sigmas[-1] == pytest.approx(0.002)
    assert (sigmas[:-1] > sigmas[1:]).all()


def test_edm_sigmas_rejects_bad_arguments():
    with pytest.raises(DenoiserLabError):
        edm_sigmas(0)
    with pytest.raises(DenoiserLabError):
        edm_sigmas(5, sigma_min=-1)


def test_add_noise_is_seeded_and_per_sample():
    x0 = torch.zeros(3, 1, 4, 4)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    x_a, eps_a = add_noise(x0, sigma, seed=7)
    x_b, _ = add_noise(x0, sigma, seed=7)
    assert torch.equal(x_a, x_b)
    assert torch.allclose(x_a, sigma.view(-1, 1, 1, 1) * eps_a)


def linear_shrink(x, sigma):
    """D(x) = x / (1 + sigma^2): the exact denoiser for x0 ~ N(0, I)."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1) if torch.is_tensor(sigma) else sigma
    return x / (1 + s**2)


def reference_sampler(den, noise, grid, heun):
    """Plain float64 loop of Euler / Heun (Karras et al. 2022, Alg. 1) with a final Euler step to 0."""
    x = noise.double() * grid[0]
    for i in range(len(grid) - 1):
        s, s_next = float(grid[i]), float(grid[i + 1])
        d = (x - den(x, s)) / s
        x_next = x + (s_next - s) * d
        if heun and s_next != 0:
            d_next = (x_next - den(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


@pytest.mark.parametrize("sampler,heun", [(sample_euler, False), (sample_heun, True)])
def test_samplers_match_float64_loop(sampler, heun):
    noise = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = sampler(linear_shrink, noise, 6, return_trajectory=True)
    grid = sampling_grid(6)
    assert torch.allclose(result.images, reference_sampler(linear_shrink, noise, grid, heun), atol=1e-10)
    assert result.x_t.shape == (7, 2, 1, 3, 3) and result.denoised.shape == (6, 2, 1, 3, 3)
    assert torch.equal(result.x_t[-1], result.images)
    # the last step to 0 returns the denoiser output at the last nonzero sigma
    assert torch.equal(result.images, result.denoised[-1])


def test_heun_solves_gaussian_ode_in_closed_form():
    # For x0 ~ N(0, I), x(sigma) = x(sigma_T) * sqrt((1 + sigma^2) / (1 + sigma_T^2)).
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = sample_heun(linear_shrink, noise, 800)  # 2nd order: error 6e-3 at 50 steps, 2e-5 at 800
    sigma_last = float(result.sigmas[-2])
    expected_last = noise * 80 * math.sqrt((1 + sigma_last**2) / (1 + 80**2))
    expected = linear_shrink(expected_last, sigma_last)
    assert torch.allclose(result.images, expected, atol=1e-4)


def test_sampler_counts_denoiser_calls():
    calls = []

    def counting(x, sigma):
        calls.append(sigma)
        return torch.zeros_like(x)

    sample_heun(counting, torch.randn(1, 1, 2, 2), 5)
    assert len(calls) == 2 * 5 - 1  # Heun: 2 calls a step, 1 on the last step
    assert 0 not in calls


def test_gaussian_ode_trajectory_matches_fine_heun():
    generator = torch.Generator().manual_seed(2)
    dim = 6
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigvecs = basis[:, :4]  # rank 4 < D: the complement scales as sigma / sigma_T
    eigvals = torch.tensor([2.0, 0.7, 0.1, 0.01], dtype=torch.float64)
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)

    def gaussian(x, sigma):
        flat = x.reshape(x.shape[0], -1) - mean
        gains = eigvals / (eigvals + sigma**2)
        return (mean + ((flat @ eigvecs) * gains) @ eigvecs.T).reshape(x.shape)

    noise = torch.randn(3, 1, 2, 3, generator=generator, dtype=torch.float64)
    grid = edm_sigmas(1500, sigma_min=0.05)
    heun = sample_heun(gaussian, noise, grid, return_trajectory=True)
    closed = gaussian_ode_trajectory(mean, eigvals, eigvecs, noise, grid)
    assert torch.allclose(closed, heun.x_t[:-1], rtol=1e-4, atol=1e-4)


def test_sampling_grid_rejects_increasing_sigmas():
    with pytest.raises(DenoiserLabError):
        sampling_grid(torch.tensor([1.0, 2.0, 0.0]))
