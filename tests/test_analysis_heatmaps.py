"""Gradient heatmaps (PSPC eq. 8) against closed-form Jacobians and a per-sample float64 Jacobian loop;
heatmap extent against a sorting loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from denoiserlab.analysis import gaussian_linear_map, gradient_heatmaps, heatmap_extent
from denoiserlab.analysis.noisy_inputs import noisy_batches
from denoiserlab.analysis.heatmaps import default_products_per_pass
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser
from denoiserlab.errors import DenoiserLabError

KERNEL = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64) / 4


def mixing_denoiser(x, sigma):
    """Nonlinear, mixes channels and neighbouring pixels, treats samples independently."""
    kernel = KERNEL.to(x.dtype)
    return torch.tanh(F.conv2d(x, kernel, padding=1)) / (1 + sigma) + x * torch.sigmoid(x.mean(1, keepdim=True))


def readings_from_jacobians(jacobians, channels, height, width):
    """Explicit sums over channels of |J| for a list of [C*H*W, C*H*W] Jacobians: (same, all) [H, W, H, W]."""
    same = torch.zeros(height, width, height, width, dtype=torch.float64)
    every = torch.zeros_like(same)
    for jacobian in jacobians:
        blocks = jacobian.abs().reshape(channels, height, width, channels, height, width)
        for c_out in range(channels):
            for c_in in range(channels):
                every += blocks[c_out, :, :, c_in]
                if c_in == c_out:
                    same += blocks[c_out, :, :, c_in]
    return same / len(jacobians), every / len(jacobians)


def test_gaussian_heatmap_is_the_closed_form_jacobian(tiny_rgb_train):
    images = tiny_rgb_train.double()
    den = GaussianDenoiser(tiny_rgb_train, cache=False)
    maps = gradient_heatmaps(den, images, 0.8, n_samples=3, batch_size=2, products_per_pass=16)
    weight, _ = gaussian_linear_map(den, 0.8)  # the Jacobian at every z
    same, every = readings_from_jacobians([weight], 3, 5, 5)
    assert maps.same_channel.shape == (5, 5, 5, 5) and maps.n_samples == 3
    assert torch.allclose(maps.same_channel, same, atol=1e-12)
    assert torch.allclose(maps.all_channels, every, atol=1e-12)


def test_default_chunking_keeps_cpu_passes_small_and_changes_nothing(tiny_rgb_train, monkeypatch):
    assert default_products_per_pass(8, torch.device("cpu")) == 4  # 32 z x products per pass on a CPU
    assert default_products_per_pass(1, "cpu") == 32 and default_products_per_pass(64, "cpu") == 1
    assert default_products_per_pass(8, torch.device("cuda")) == 64
    seen = []
    real = torch.func.vmap
    monkeypatch.setattr(torch.func, "vmap", lambda fn: lambda cotangents: seen.append(len(cotangents)) or
                        real(fn)(cotangents))
    chosen = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.5, 6, seed=1, batch_size=3)
    assert max(seen) == 10 and sum(seen) == 75 * 2  # 32 // 3 products per pass, 75 outputs, two batches
    explicit = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.5, 6, seed=1, batch_size=3, products_per_pass=75)
    torch.testing.assert_close(chosen.all_channels, explicit.all_channels, rtol=1e-12, atol=1e-12)


def test_nonlinear_heatmap_matches_per_sample_jacobian_loop(tiny_rgb_train):
    sigma, n_samples, batch_size = 0.5, 5, 3
    maps = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, sigma, n_samples, seed=2, batch_size=batch_size,
                             products_per_pass=7)  # 75 products in passes of 7: a ragged last pass
    jacobians = []
    for z in torch.cat(list(noisy_batches(tiny_rgb_train, sigma, n_samples, batch_size, 2))).double():
        jacobian = torch.autograd.functional.jacobian(lambda v: mixing_denoiser(v.reshape(1, 3, 5, 5), sigma)
                                                      .flatten(), z.flatten())
        jacobians.append(jacobian)
    same, every = readings_from_jacobians(jacobians, 3, 5, 5)
    assert torch.allclose(maps.same_channel, same, rtol=1e-5, atol=1e-6)
    assert torch.allclose(maps.all_channels, every, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(same, every)  # channels really mix


def test_optimal_heatmap_is_posterior_covariance_over_sigma_squared(tiny_train):
    """For the empirical optimal denoiser, dD/dz = Cov[y | z] / sigma^2 (Tweedie): explicit float64 sums."""
    sigma, n_samples = 0.6, 4
    den = OptimalDenoiser(tiny_train)
    maps = gradient_heatmaps(den, tiny_train.double(), sigma, n_samples, seed=1, batch_size=4)
    train = tiny_train.double().flatten(1)
    jacobians = []
    for z in next(noisy_batches(tiny_train.double(), sigma, n_samples, 4, 1)).flatten(1):
        logits = torch.stack([-((z - image) ** 2).sum() / (2 * sigma**2) for image in train])
        weights = logits.softmax(0)
        mean = sum(w * image for w, image in zip(weights, train))
        second_moment = sum(w * torch.outer(image, image) for w, image in zip(weights, train))
        jacobians.append((second_moment - torch.outer(mean, mean)) / sigma**2)
    same, _ = readings_from_jacobians(jacobians, 1, 6, 6)
    assert torch.allclose(maps.same_channel, same, atol=1e-9)
    assert torch.allclose(maps.all_channels, maps.same_channel)  # one channel: both readings agree


def extent_reference(heatmap, mass):
    """Per output pixel: sort descending and count entries until the running sum reaches mass * total."""
    height, width = heatmap.shape[:2]
    counts = []
    for y in range(height):
        for x in range(width):
            values = sorted(heatmap[y, x].flatten().tolist(), reverse=True)
            total, running = sum(values), 0.0
            for count, value in enumerate(values, start=1):
                running += value
                if running >= mass * total * (1 - 1e-12):
                    break
            counts.append(count)
    return sum(counts) / len(counts)


@pytest.mark.parametrize("mass", [0.5, 0.9, 1.0])
def test_heatmap_extent_matches_loop(mass):
    heatmap = torch.rand(4, 5, 4, 5, generator=torch.Generator().manual_seed(3)) ** 3
    assert heatmap_extent(heatmap, mass).item() == pytest.approx(extent_reference(heatmap, mass), rel=1e-12)
    stacked = torch.stack([heatmap, heatmap.flip(0)])
    assert heatmap_extent(stacked, mass).shape == (2,)


def test_heatmap_extent_limits():
    delta = torch.eye(16, dtype=torch.float64).reshape(4, 4, 4, 4)
    assert heatmap_extent(delta, 0.9).item() == 1
    uniform = torch.ones(4, 4, 4, 4)
    assert heatmap_extent(uniform, 0.9).item() == math.ceil(0.9 * 16)
    partly_constant = uniform.clone()
    partly_constant[0, 0] = 0  # an output pixel that ignores its input has no extent and is left out
    assert heatmap_extent(partly_constant, 0.5).item() == 8


def test_bad_input(tiny_train):
    with pytest.raises(DenoiserLabError, match="H, W, H, W"):
        heatmap_extent(torch.ones(4, 4, 3, 4))
    with pytest.raises(DenoiserLabError, match="mass"):
        heatmap_extent(torch.ones(2, 2, 2, 2), 0)
    with pytest.raises(DenoiserLabError, match="negative"):
        heatmap_extent(-torch.ones(2, 2, 2, 2))
    with pytest.raises(DenoiserLabError, match="shape"):
        gradient_heatmaps(lambda x, sigma: x.sum(1), tiny_train, 1.0, n_samples=2)


def test_systematic_antithetic_groups_match_a_per_sample_loop(tiny_rgb_train):
    """Systematic draws, antithetic pairs and 2 groups: the overall and per-group maps equal float64 Jacobian loops
    over exactly the z that heatmap_inputs draws (pairs share y0 and mirror eps; pairs stay in one group)."""
    from denoiserlab.analysis.heatmaps import group_assignment, heatmap_inputs

    labels = torch.arange(len(tiny_rgb_train)) % 3
    z = heatmap_inputs(tiny_rgb_train, 0.5, 8, 4, 3, "systematic", labels, antithetic=True)
    pair_means = (z[0::2] + z[1::2]) / 2  # = y0 of each pair
    assert all(any(torch.allclose(mean, image) for image in tiny_rgb_train) for mean in pair_means)
    maps = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.5, 8, seed=4, batch_size=3, products_per_pass=10,
                             sampling="systematic", labels=labels, antithetic=True, groups=2)
    jacobians = [torch.autograd.functional.jacobian(
        lambda v: mixing_denoiser(v.reshape(1, 3, 5, 5), 0.5).flatten(), row.flatten().double()) for row in z]
    same, every = readings_from_jacobians(jacobians, 3, 5, 5)
    assert torch.allclose(maps.same_channel, same, rtol=1e-5, atol=1e-6)
    assert torch.allclose(maps.all_channels, every, rtol=1e-5, atol=1e-6)
    assert group_assignment(8, 2, 2).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    for group in range(2):
        members = [jacobians[i] for i in range(8) if (i // 2) % 2 == group]
        assert torch.allclose(maps.groups_same_channel[group], readings_from_jacobians(members, 3, 5, 5)[0],
                              rtol=1e-5, atol=1e-6)


def test_systematic_draws_every_label_its_share_and_no_image_twice():
    from denoiserlab.analysis.heatmaps import systematic_indices

    labels = torch.arange(100) % 10
    for seed in range(5):
        indices = systematic_indices(100, 20, labels, torch.Generator().manual_seed(seed))
        assert len(set(indices.tolist())) == 20
        assert torch.bincount(labels[indices], minlength=10).tolist() == [2] * 10
    counts = torch.zeros(7)  # inclusion probability n / N for every image, over many starts
    for seed in range(3000):
        counts[systematic_indices(7, 3, None, torch.Generator().manual_seed(seed))] += 1
    assert torch.allclose(counts / 3000, torch.full((7,), 3 / 7), atol=0.03)


@pytest.mark.parametrize("options, message", [(dict(sampling="sobol"), "sampling"),
                                              (dict(antithetic=True, n_samples=3), "even"),
                                              (dict(groups=4, n_samples=3), "groups"),
                                              (dict(sampling="systematic", n_samples=50), "at most once")])
def test_bad_heatmap_sampling_options_are_refused(tiny_rgb_train, options, message):
    options = {"n_samples": 4, **options}
    with pytest.raises(DenoiserLabError, match=message):
        gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.5, **options)


def test_attention_networks_give_heatmaps_without_pytorch_vmap_notices(recwarn):
    """PyTorch warns that fused CPU attention has no vmap rule (it loops instead, as fast as the alternatives we
    measured); that notice would interleave with the heatmap command's progress bars, so it is filtered (only it)."""
    from denoiserlab.networks.build import build_denoiser

    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    den = build_denoiser("dit", 3, 8, dict(hidden_size=8, depth=1, num_heads=2, patch_size=4)).eval()
    maps = gradient_heatmaps(den.requires_grad_(False), images, 1.0, n_samples=2, batch_size=2, products_per_pass=8)
    assert torch.isfinite(maps.same_channel).all() and maps.same_channel.sum() > 0
    assert not [warning for warning in recwarn if "batching rule" in str(warning.message)]


class MemorySums:
    """A RunningSums kept in memory that can end the computation (KeyboardInterrupt, as a kill) at its k-th save."""

    def __init__(self, kill_at_save: int | None = None):
        self.saved, self.saves, self.kill_at_save = None, 0, kill_at_save

    def load(self):
        return self.saved

    def save(self, z_done, sums):
        self.saves += 1
        self.saved = (z_done, sums.clone())
        if self.saves == self.kill_at_save:
            raise KeyboardInterrupt


def counted_batches(monkeypatch) -> list[int]:
    """The batch sizes summed_abs_readings is called with, in order (gradient_heatmaps' work)."""
    from denoiserlab.analysis import heatmaps

    calls, original = [], heatmaps.summed_abs_readings

    def counted(den, z, *args, **kwargs):
        calls.append(len(z))
        return original(den, z, *args, **kwargs)

    monkeypatch.setattr(heatmaps, "summed_abs_readings", counted)
    return calls


def test_a_computation_killed_between_batches_resumes_from_its_running_sums(tiny_rgb_train, monkeypatch):
    """Killed after its second batch of z (of four: 3 + 3 + 3 + 1), a rerun with the same running sums computes only
    the last two batches and returns exactly the maps of an uninterrupted run, groups included; the last batch is
    not saved (the caller stores the finished maps)."""
    options = dict(n_samples=10, seed=2, batch_size=3, products_per_pass=25, sampling="systematic", groups=2)
    whole = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.7, **options)
    sums = MemorySums(kill_at_save=2)
    with pytest.raises(KeyboardInterrupt):
        gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.7, running_sums=sums, **options)
    assert sums.saved[0] == 6
    calls = counted_batches(monkeypatch)
    resumed = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.7, running_sums=sums, **options)
    assert calls == [3, 1] and sums.saves == 3
    for name in ("same_channel", "all_channels", "groups_same_channel", "groups_all_channels"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name))


SUMS_SHAPE = (2, 2, 25, 5, 5)  # [reading, group, output pixel, H, W] of 2 groups of 3x5x5 images


@pytest.mark.parametrize("saved", [(6, torch.zeros(SUMS_SHAPE)),  # float32
                                   (6, torch.zeros(2, 1, 25, 5, 5, dtype=torch.float64)),  # other groups
                                   (5, torch.zeros(SUMS_SHAPE, dtype=torch.float64)),  # not a batch boundary
                                   (12, torch.zeros(SUMS_SHAPE, dtype=torch.float64)),  # past the end
                                   (6, torch.full(SUMS_SHAPE, -1.0, dtype=torch.float64)),
                                   (6, torch.full(SUMS_SHAPE, math.nan, dtype=torch.float64)),
                                   ("6", torch.zeros(SUMS_SHAPE, dtype=torch.float64)),
                                   (6, "sums")])
def test_running_sums_that_cannot_be_this_computations_are_ignored(tiny_rgb_train, monkeypatch, saved):
    """What a store hands back is untrusted (a file): sums of another shape or dtype, a z count off the batches or
    past the end, negative or NaN sums, wrong types: the computation starts afresh and its maps are right."""
    options = dict(n_samples=10, seed=2, batch_size=3, products_per_pass=25, sampling="systematic", groups=2)
    whole = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.7, **options)
    sums = MemorySums()
    sums.saved = saved
    calls = counted_batches(monkeypatch)
    restarted = gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.7, running_sums=sums, **options)
    assert calls == [3, 3, 3, 1]
    assert torch.equal(restarted.groups_all_channels, whole.groups_all_channels)
