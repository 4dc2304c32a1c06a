"""Per-sample similarity metrics against float64 loop references written here."""

import math

import numpy as np
import pytest
import torch

from denoiserlab.analysis import (
    feature_cosine,
    mean_and_median,
    pearson_r,
    per_sample_mse,
    pixel_cosine,
    r_squared,
    ssim,
)
from denoiserlab.errors import DenoiserLabError


@pytest.fixture
def image_pair():
    generator = torch.Generator().manual_seed(7)
    reference = torch.rand(3, 2, 13, 12, generator=generator) * 2 - 1
    estimate = (reference + 0.3 * torch.randn(3, 2, 13, 12, generator=generator)).clamp(-1, 1)
    return estimate, reference


def test_elementwise_metrics_match_loops(image_pair):
    estimate, reference = image_pair
    for b in range(3):
        a, y = estimate[b].double().flatten().tolist(), reference[b].double().flatten().tolist()
        n = len(a)
        sse = sum((p - q) ** 2 for p, q in zip(a, y))
        mean_a, mean_y = sum(a) / n, sum(y) / n
        spread = sum((q - mean_y) ** 2 for q in y)
        covariance = sum((p - mean_a) * (q - mean_y) for p, q in zip(a, y))
        var_a = sum((p - mean_a) ** 2 for p in a)
        dot = sum(p * q for p, q in zip(a, y))
        assert per_sample_mse(estimate, reference)[b].item() == pytest.approx(sse / n, rel=1e-10)
        assert r_squared(estimate, reference)[b].item() == pytest.approx(1 - sse / spread, rel=1e-10)
        assert pearson_r(estimate, reference)[b].item() == pytest.approx(covariance / math.sqrt(var_a * spread),
                                                                         rel=1e-10)
        norm_a, norm_y = math.sqrt(sum(p * p for p in a)), math.sqrt(sum(q * q for q in y))
        assert pixel_cosine(estimate, reference)[b].item() == pytest.approx(dot / (norm_a * norm_y), rel=1e-10)


def test_r_squared_limits(image_pair):
    _, reference = image_pair
    assert torch.allclose(r_squared(reference, reference), torch.ones(3, dtype=torch.float64))
    mean_image = reference.flatten(1).mean(1)[:, None, None, None].expand_as(reference)
    assert torch.allclose(r_squared(mean_image, reference), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def ssim_reference(a, b, size=11, std=1.5):
    """Wang et al. SSIM by explicit loops over valid window positions, float64, on [0, 1] images."""
    a, b = (a.double().numpy() + 1) / 2, (b.double().numpy() + 1) / 2
    offsets = np.arange(size) - (size - 1) / 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * std**2))
    window /= window.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(a.shape[0]):
        for top in range(a.shape[1] - size + 1):
            for left in range(a.shape[2] - size + 1):
                patch_a = a[channel, top : top + size, left : left + size]
                patch_b = b[channel, top : top + size, left : left + size]
                mu_a, mu_b = (window * patch_a).sum(), (window * patch_b).sum()
                var_a = (window * (patch_a - mu_a) ** 2).sum()
                var_b = (window * (patch_b - mu_b) ** 2).sum()
                cov = (window * (patch_a - mu_a) * (patch_b - mu_b)).sum()
                values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                              / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_matches_loop_reference(image_pair):
    estimate, reference = image_pair
    ours = ssim(estimate, reference)
    for b in range(3):
        assert ours[b].item() == pytest.approx(ssim_reference(estimate[b], reference[b]), abs=1e-10)
    assert torch.allclose(ssim(reference, reference), torch.ones(3, dtype=torch.float64))
    assert (ours < 0.99).all()  # the pair really differs


def test_feature_cosine_uses_the_extractor(image_pair):
    estimate, reference = image_pair
    generator = torch.Generator().manual_seed(1)
    projection = torch.randn(2 * 13 * 12, 5, generator=generator)

    def features(images):
        return torch.relu(images.flatten(1) @ projection)

    ours = feature_cosine(estimate, reference, features)
    for b in range(3):
        f_a = features(estimate[b : b + 1])[0].double()
        f_b = features(reference[b : b + 1])[0].double()
        assert ours[b].item() == pytest.approx((f_a @ f_b / (f_a.norm() * f_b.norm())).item(), rel=1e-6)


def test_mean_and_median():
    summary = mean_and_median(torch.tensor([3.0, 1.0, 10.0]))
    assert summary == {"mean": pytest.approx(14 / 3), "median": 3.0}


def test_bad_input(image_pair):
    estimate, reference = image_pair
    with pytest.raises(DenoiserLabError, match="same shape"):
        per_sample_mse(estimate, reference[:2])
    with pytest.raises(DenoiserLabError, match="at least 11x11"):
        ssim(estimate[..., :10], reference[..., :10])
    with pytest.raises(DenoiserLabError, match="NaN"):
        pixel_cosine(estimate * float("nan"), reference)
