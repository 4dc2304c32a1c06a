"""Networks: every architecture and preset builds and is a denoiser; EDM preconditioning against float64 by hand."""

import math

import pytest
import torch
from torch import nn

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import PRESETS, EDMPrecond, build_denoiser, count_parameters, edm_coefficients
from denoiserlab.networks.build import resolve_preset
from denoiserlab.networks.dit import patchify, unpatchify
from denoiserlab.networks.unet import UNet, UNetConfig

TINY = {  # architecture -> tiny config overrides that keep each test at milliseconds
    "unet": dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], channels_per_head=8),
    "dit": dict(hidden_size=16, depth=2, num_heads=2, patch_size=2, dropout=0.0),
    "mixer": dict(hidden_size=16, depth=2, patch_size=2),
}
CASES = [(arch, channels, side) for arch in TINY for channels, side in ((1, 28), (3, 32))]


def tiny_denoiser(arch: str, channels: int, side: int, **extra) -> EDMPrecond:
    torch.manual_seed(0)
    options = {**TINY[arch], **extra}
    if arch == "unet":
        options["attn_resolutions"] = [side // 2]
    den = build_denoiser(arch, channels, side, options)
    perturb(den)
    return den.eval()


def perturb(module: nn.Module) -> None:
    """Give zero-initialised layers random weights, so outputs depend on every part of the network."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


@pytest.mark.parametrize("arch,channels,side", CASES)
def test_forward_shape_dtype_and_per_sample_sigma(arch, channels, side):
    den = tiny_denoiser(arch, channels, side)
    x = torch.randn(3, channels, side, side)
    sigma = torch.tensor([0.05, 1.0, 20.0])
    out = den(x, sigma)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    for i in range(3):  # sigma [B] means one noise level per sample
        single = den(x[i:i + 1], float(sigma[i]))
        torch.testing.assert_close(out[i:i + 1], single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(den(x, 0.05), den(x, 20.0))
    assert den.img_channels == channels and den.img_resolution == side and den.training_data is None


@pytest.mark.parametrize("arch", list(TINY))
def test_float64_input_gives_float64_output(arch):
    den = tiny_denoiser(arch, 1, 28).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    assert den(x, 0.5).dtype == torch.float64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    small = name.endswith("-small")
    channels, side = (1, 28) if small else (3, 32)
    den = build_denoiser(name, channels, side)
    assert isinstance(den, EDMPrecond)
    if small:
        out = den(torch.randn(2, channels, side, side), torch.tensor([0.1, 3.0]))
        assert out.shape == (2, channels, side, side)


def test_preset_sizes_match_the_issue():
    assert 1e6 <= count_parameters(build_denoiser("unet-small", 1, 28)) <= 4e6  # issue 5: ~1-4 M parameters
    architecture, config = resolve_preset("dit-paper")  # Niedoba et al. 2025, Table 2
    assert (architecture, config.hidden_size, config.depth, config.num_heads, config.patch_size, config.dropout) == (
        "dit", 768, 12, 12, 4, 0.12)
    architecture, config = resolve_preset("unet-cifar")  # EDM's CIFAR-10 DDPM++
    assert (config.model_channels, config.channel_mult, config.num_blocks, config.attn_resolutions) == (
        128, (2, 2, 2), 4, (16,))
    _, ncsnpp = resolve_preset("ncsnpp-small")
    assert (ncsnpp.noise_embedding, ncsnpp.encoder) == ("fourier", "residual")


def test_unet_resolution_levels():
    """28 -> 14 -> 7 and 32 -> 16 -> 8 work; a fourth level at 28 (7 -> 3.5) fails naming the field."""
    for side in (28, 32):
        UNet(UNetConfig(model_channels=8, channel_mult=(1, 1, 1), num_blocks=1, attn_resolutions=()), 1, side)
    with pytest.raises(DenoiserLabError, match="channel_mult"):
        UNet(UNetConfig(model_channels=8, channel_mult=(1, 1, 1, 1), num_blocks=1, attn_resolutions=()), 1, 28)
    with pytest.raises(DenoiserLabError, match="attn_resolutions"):
        UNet(UNetConfig(model_channels=8, channel_mult=(1, 1), num_blocks=1, attn_resolutions=(16,)), 1, 28)


class AffineRawNet(nn.Module):
    """F(x_in, c_noise) = tanh(a x_in) + b c_noise, easy to evaluate by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(-0.3, dtype=torch.float64))

    def forward(self, x_in, c_noise):
        return torch.tanh(self.a * x_in) + self.b * c_noise.view(-1, 1, 1, 1)


def test_precond_against_hand_computation_in_float64():
    """D = c_skip x + c_out F(c_in x, ln(sigma)/4), Karras et al. 2022 Table 1, sigma_data = 0.5, per pixel."""
    den = EDMPrecond(AffineRawNet(), img_channels=1, img_resolution=2)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    sigmas = [0.002, 0.5, 80.0]
    out = den(x, torch.tensor(sigmas, dtype=torch.float64)).detach()
    for i, s in enumerate(sigmas):
        c_skip = 0.25 / (s * s + 0.25)
        c_out = s * 0.5 / math.sqrt(s * s + 0.25)
        c_in = 1 / math.sqrt(s * s + 0.25)
        c_noise = math.log(s) / 4
        for pixel in range(4):
            value = float(x[i].flatten()[pixel])
            expected = c_skip * value + c_out * (math.tanh(0.7 * c_in * value) - 0.3 * c_noise)
            assert abs(float(out[i].flatten()[pixel]) - expected) < 1e-12


def test_precond_wraps_a_real_network_exactly():
    den = tiny_denoiser("unet", 1, 28).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    sigma = torch.tensor([0.3, 4.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    manual = c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * den.net(c_in.view(-1, 1, 1, 1) * x, c_noise)
    torch.testing.assert_close(den(x, sigma), manual, atol=1e-12, rtol=0)


def test_precond_limits():
    """At tiny sigma D(x) -> x; c_in and c_out give unit-variance network input and target (EDM eq. 8)."""
    sigma = torch.tensor([1e-6, 0.5, 1e3], dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm_coefficients(sigma)
    assert abs(float(c_skip[0]) - 1) < 1e-10 and float(c_out[0]) < 1e-5
    # c_in makes the network input unit variance: Var(x0 + sigma eps) = sigma_data^2 + sigma^2.
    torch.testing.assert_close(c_in**2 * (0.25 + sigma**2), torch.ones(3, dtype=torch.float64))
    # The target of F has unit variance: Var((x0 - c_skip x) / c_out) = 1 (Karras et al. 2022, eq. 8).
    target_variance = ((1 - c_skip) ** 2 * 0.25 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_variance, torch.ones(3, dtype=torch.float64))


def test_patchify_matches_a_loop_and_inverts():
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, 4)
    for b in range(2):
        for row in range(2):
            for col in range(2):
                patch = x[b, :, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4].flatten()
                torch.testing.assert_close(tokens[b, row * 2 + col], patch)
    torch.testing.assert_close(unpatchify(tokens, 3, 8, 4), x)


@pytest.mark.parametrize("bad_x,match", [
    (torch.randn(2, 1, 28), "shape"),
    (torch.randn(2, 3, 28, 28), "channels or resolution"),
    (torch.randn(2, 1, 32, 32), "channels or resolution"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
])
def test_bad_images_fail(bad_x, match):
    with pytest.raises(DenoiserLabError, match=match):
        tiny_denoiser("dit", 1, 28)(bad_x, 1.0)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), torch.ones(3)])
def test_bad_sigma_fails(sigma):
    with pytest.raises(DenoiserLabError, match="sigma"):
        tiny_denoiser("mixer", 1, 28)(torch.randn(2, 1, 28, 28), sigma)


@pytest.mark.parametrize("preset,overrides,match", [
    ("no-such-net", {}, "unknown network preset"),
    ("unet-small", {"widht": 3}, "widht"),
    ("dit-small", {"num_heads": 5}, "num_heads"),
    ("dit-small", {"patch_size": 3}, "patch_size"),
    ("mixer-small", {"dropout": 1.5}, "dropout"),
    ("unet-small", {"noise_embedding": "cosine"}, "noise_embedding"),
    ("unet-small", {"channel_mult": [1, "2"]}, "channel_mult"),
])
def test_bad_configs_fail_naming_the_field(preset, overrides, match):
    with pytest.raises(DenoiserLabError, match=match):
        build_denoiser(preset, 1, 28, overrides)


@pytest.mark.parametrize("arch", list(TINY))
def test_large_cpu_inference_batches_go_through_in_calls_of_32_images_with_the_same_outputs(arch):
    from denoiserlab.networks.precond import CPU_CALL_IMAGES
    den = tiny_denoiser(arch, 3, 32)
    x, sigma = torch.randn(70, 3, 32, 32), torch.rand(70) * 10 + 0.01
    calls = []
    den.net.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    with torch.no_grad():
        chunked = den(x, sigma)
    assert calls == [CPU_CALL_IMAGES, CPU_CALL_IMAGES, 70 - 2 * CPU_CALL_IMAGES]
    calls.clear()
    whole = den(x, sigma)  # with autograd (training, Jacobians): one call
    assert calls == [70]
    torch.testing.assert_close(chunked, whole.detach(), atol=1e-5, rtol=1e-5)
