"""networks.with_precision: a bfloat16 copy of a network's denoiser stays close to it, keeps the skip path and the
noise features in float32, and its gradient heatmaps match a float64 per-sample Jacobian loop to about 1 %."""

import pytest
import torch

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.analysis.heatmaps import heatmap_inputs
from denoiserlab.denoisers import OptimalDenoiser
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.layers import FourierEmbedding, PositionalEmbedding
from denoiserlab.networks.precision import with_precision
from tests.test_networks import TINY, tiny_denoiser


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("arch", list(TINY))
def test_bfloat16_copy_is_close_and_leaves_the_network_alone(arch):
    den = tiny_denoiser(arch, 3, 32)
    lowered = with_precision(den, "bfloat16")
    x = torch.randn(4, 3, 32, 32)
    for sigma in (0.01, 1.0, 50.0):
        out = lowered(x, sigma)
        assert out.dtype == torch.float32
        assert relative(out, den(x, sigma)) < 0.04  # random weights: bfloat16 rounding (2^-9) adds up to ~2 %
    assert all(p.dtype == torch.float32 for p in den.parameters())  # the original is not converted
    assert {p.dtype for p in lowered.net.parameters()} == {torch.bfloat16}
    features = [m for m in lowered.net.modules() if isinstance(m, (FourierEmbedding, PositionalEmbedding))]
    originals = [m for m in den.net.modules() if isinstance(m, (FourierEmbedding, PositionalEmbedding))]
    assert features and all(torch.equal(a.freqs, b.freqs) and a.freqs.dtype == torch.float32
                            for a, b in zip(features, originals))


def test_small_sigma_output_is_the_float32_skip_path():
    den = tiny_denoiser("unet", 3, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    # c_out F is ~0.004 F here; a bfloat16 skip path would be off by ~2^-9 |x| (~1e-3)
    torch.testing.assert_close(with_precision(den, "bfloat16")(x, 0.002), den(x, 0.002), atol=1e-4, rtol=0)


def test_float32_is_the_network_itself_and_bad_requests_fail():
    den = tiny_denoiser("mixer", 1, 28)
    assert with_precision(den, "float32") is den
    with pytest.raises(DenoiserLabError, match="precision must be one of"):
        with_precision(den, "float16")
    with pytest.raises(DenoiserLabError, match="needs a network trained here"):
        with_precision(OptimalDenoiser(torch.rand(3, 1, 28, 28)), "bfloat16")


def test_bfloat16_heatmaps_match_a_float64_jacobian_loop():
    den = tiny_denoiser("unet", 3, 16)
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    sigma, n_samples = 0.8, 2
    maps = gradient_heatmaps(with_precision(den, "bfloat16"), images, sigma, n_samples, seed=3, batch_size=2,
                             products_per_pass=16, sampling="systematic")
    reference = gradient_heatmaps(den, images, sigma, n_samples, seed=3, batch_size=2, products_per_pass=16,
                                  sampling="systematic")  # the z it drew, recomputed below in float64
    z = heatmap_inputs(images, sigma, n_samples, 3, 2, "systematic", None, False).double()
    exact = den.double()
    same, every = torch.zeros(16, 16, 16, 16, dtype=torch.float64), torch.zeros(16, 16, 16, 16, dtype=torch.float64)
    for sample in z:
        jacobian = torch.autograd.functional.jacobian(lambda v: exact(v[None], sigma)[0], sample)  # [C,H,W,C,H,W]
        for c in range(3):
            same += jacobian[c, :, :, c].abs() / n_samples
        every += jacobian.abs().sum((0, 3)) / n_samples
    assert relative(reference.same_channel, same) < 1e-5 and relative(reference.all_channels, every) < 1e-5
    assert relative(maps.same_channel, same) < 0.01 and relative(maps.all_channels, every) < 0.01  # measured 0.2-0.3 %
    assert relative(maps.same_channel, same) > 1e-5  # bfloat16 really ran
