"""Convergence figures of heatmap estimates against loops written here."""

import math

import pytest
import torch

from denoiserlab.analysis.heatmap_convergence import (
    bootstrap_relative_se,
    halves,
    heatmap_convergence,
    mask_iou,
    running_mean_distances,
)
from denoiserlab.denoisers.flex_masks import flex_masks
from denoiserlab.errors import DenoiserLabError


def group_maps(n_groups=8, side=4, noise=0.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(side, side, side, side, generator=generator, dtype=torch.float64) + 0.1
    return (base * (1 + noise * torch.randn(n_groups, side, side, side, side, generator=generator,
                                            dtype=torch.float64))).abs()


def test_bootstrap_se_matches_a_resampling_loop():
    maps = group_maps()
    generator = torch.Generator().manual_seed(3)
    resamples = []
    for _ in range(50):
        picks = torch.randint(8, (8,), generator=generator).tolist()
        resamples.append(sum(maps[i] for i in picks) / 8)
    stacked = torch.stack(resamples)
    variance = ((stacked - stacked.mean(0)) ** 2).mean(0)  # population variance over resamples
    expected = math.sqrt(variance.sum().item()) / maps.mean(0).norm().item()
    assert bootstrap_relative_se(maps, n_resamples=50, seed=3) == pytest.approx(expected, rel=1e-9)
    assert bootstrap_relative_se(maps[:1].expand(8, -1, -1, -1, -1)) == 0.0


def test_mask_iou_by_hand_and_identical_maps():
    maps = group_maps()
    assert mask_iou(maps[0], maps[0], 0.6) == 1.0
    a, b = flex_masks(maps[0], 0.5), flex_masks(maps[1], 0.5)
    ious = [(a[k] & b[k]).sum().item() / (a[k] | b[k]).sum().item() for k in range(16)]
    assert mask_iou(maps[0], maps[1], 0.5) == pytest.approx(sum(ious) / 16)


def test_halves_and_running_means_by_hand():
    maps = group_maps()
    first, second = halves(maps)
    assert torch.allclose(first, maps[:4].mean(0)) and torch.allclose(second, maps[4:].mean(0))
    counts, distances = running_mean_distances(maps)
    assert counts == [1, 2, 4]
    full = maps.mean(0)
    for count, distance in zip(counts, distances):
        assert distance == pytest.approx(((maps[:count].mean(0) - full).norm() / full.norm()).item())
    table = heatmap_convergence(maps, thresholds=(0.5,))
    assert table["half_iou"] == [mask_iou(first, second, 0.5)] and table["running_distances"] == distances


def test_convergence_needs_two_groups_of_square_maps():
    with pytest.raises(DenoiserLabError, match="group maps"):
        heatmap_convergence(group_maps()[:1])


def mixing_denoiser(x, sigma):
    """Nonlinear, mixes channels and neighbouring pixels, treats samples independently."""
    kernel = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(11), dtype=x.dtype) / 4
    return torch.tanh(torch.nn.functional.conv2d(x, kernel, padding=1)) / (1 + sigma) + x * torch.sigmoid(x)


def test_doubling_stops_on_the_downstream_criterion_and_merges_rounds_exactly(tiny_rgb_train):
    """tolerance 1: one doubling, the map is the mean of the two rounds' maps (seeds seed, seed + 7919) and the
    recorded change is |MSE(half) - MSE(full)| / MSE(full) of PSPC-Flex at the fitted threshold, recomputed here;
    tolerance 0: doubles up to max_samples and reports not converged."""
    from denoiserlab.analysis import gradient_heatmaps
    from denoiserlab.analysis.heatmap_convergence import (
        flex_check_set,
        flex_mse_to_network,
        heatmaps_until_converged,
    )

    labels = torch.arange(len(tiny_rgb_train)) % 2
    options = dict(labels=labels, start_samples=4, groups=2, check_pairs=3, seed=5, batch_size=3,
                   products_per_pass=25, thresholds=(0.3, 0.7))
    result = heatmaps_until_converged(mixing_denoiser, tiny_rgb_train, 0.5, tolerance=1.0, max_samples=64, **options)
    rounds = [gradient_heatmaps(mixing_denoiser, tiny_rgb_train, 0.5, 4, seed, 3, 25, sampling="systematic",
                                labels=labels, groups=2) for seed in (5, 5 + 7919)]
    assert result["n_samples"] == 8 and result["converged"] and len(result["history"]) == 1
    assert torch.allclose(result["heatmaps"].same_channel, (rounds[0].same_channel + rounds[1].same_channel) / 2)
    assert torch.allclose(result["heatmaps"].groups_same_channel,
                          (rounds[0].groups_same_channel + rounds[1].groups_same_channel) / 2)
    assert torch.allclose(result["heatmaps"].groups_all_channels,
                          (rounds[0].groups_all_channels + rounds[1].groups_all_channels) / 2)
    z, outputs = flex_check_set(mixing_denoiser, tiny_rgb_train, 0.5, 3, 5)
    changes = {}
    for reading in ("same_channel", "all_channels"):  # colour images: the criterion holds under both readings
        half = flex_mse_to_network(mixing_denoiser, tiny_rgb_train, 0.5, getattr(rounds[0], reading), (0.3, 0.7), z,
                                   outputs)
        full = flex_mse_to_network(mixing_denoiser, tiny_rgb_train, 0.5, getattr(result["heatmaps"], reading),
                                   (0.3, 0.7), z, outputs)
        fitted = int(full.argmin())
        changes[reading] = abs(half[fitted] - full[fitted]).item() / full[fitted].item()
        entry = result["history"][0]["by_reading"][reading]
        assert entry["change"] == pytest.approx(changes[reading], abs=1e-12)
        assert entry["fitted_threshold"] == (0.3, 0.7)[fitted]
        torch.testing.assert_close(result["flex_mse_by_reading"][reading], full)
    assert changes["all_channels"] != changes["same_channel"]  # the readings' masks differ here
    assert result["history"][0]["change"] == pytest.approx(max(changes.values()), abs=1e-12)
    capped = heatmaps_until_converged(mixing_denoiser, tiny_rgb_train, 0.5, tolerance=0.0, max_samples=16, **options)
    assert capped["n_samples"] == 16 and not capped["converged"] and len(capped["history"]) == 2
