"""The shared protocol test (STYLE section 7): every registered denoiser obeys den(x, sigma)."""

import pytest
import torch

from denoiserlab.denoisers import REGISTRY, create
from denoiserlab.errors import DenoiserLabError

IMAGE_SHAPE = (2, 6, 6)


def example_options(name: str) -> dict:
    """Options that make each registered denoiser buildable on IMAGE_SHAPE; a new entry must be added here."""
    all_pixels = torch.ones(1, *IMAGE_SHAPE[1:], dtype=torch.bool)
    options = {"optimal": {}, "gaussian": {"rank": 10}, "pspc_square": {"patch_size": 3},
               "pspc_flex": {"masks": all_pixels}, "cfdm": {"n_noise": 3}, "els": {"patch_size": 3},
               "ls": {"patch_size": 3}, "data_locality": {}, "knn": {"k": 4, "n_random": 4},
               "gaussian_mixture": {"components": 2}}
    assert name in options, f"add example options for the new registry entry {name!r}"
    return options[name]


@pytest.fixture(params=sorted(REGISTRY))
def denoiser(request):
    train = torch.rand(12, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return create(request.param, train, **example_options(request.param))


def noisy_batch(batch=3, dtype=torch.float32):
    return torch.randn(batch, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1)).to(dtype)


def test_shape_dtype_device(denoiser):
    for dtype in (torch.float32, torch.float64):
        out = denoiser(noisy_batch(dtype=dtype), 0.5)
        assert out.shape == (3, *IMAGE_SHAPE) and out.dtype == dtype and out.device.type == "cpu"
        assert torch.isfinite(out).all()


def test_per_sample_sigma_equals_separate_calls(denoiser):
    x = noisy_batch()
    sigmas = torch.tensor([0.05, 0.7, 9.0])
    batched = denoiser(x, sigmas)
    for i, sigma in enumerate(sigmas.tolist()):
        assert torch.allclose(batched[i : i + 1], denoiser(x[i : i + 1], sigma), atol=1e-6)


def test_float_and_zero_dim_tensor_sigma_agree(denoiser):
    x = noisy_batch()
    assert torch.allclose(denoiser(x, 0.3), denoiser(x, torch.tensor(0.3)), atol=1e-7)


@pytest.mark.parametrize(
    "make_input,sigma,message",
    [
        (lambda: torch.randn(*IMAGE_SHAPE), 1.0, "shape"),
        (lambda: torch.randn(2, 1, 6, 6), 1.0, "mismatch"),
        (lambda: torch.randn(2, 2, 5, 6), 1.0, "mismatch"),
        (lambda: torch.full((2, *IMAGE_SHAPE), float("nan")), 1.0, "NaN"),
        (lambda: torch.randn(2, *IMAGE_SHAPE), 0.0, "sigma must be > 0"),
        (lambda: torch.randn(2, *IMAGE_SHAPE), -1.0, "sigma must be > 0"),
        (lambda: torch.randn(2, *IMAGE_SHAPE), torch.ones(3), "sigma must be"),
        (lambda: torch.randn(2, *IMAGE_SHAPE), float("nan"), "NaN"),
    ],
)
def test_bad_input_raises_one_clear_error(denoiser, make_input, sigma, message):
    with pytest.raises(DenoiserLabError, match=message):
        denoiser(make_input(), sigma)


def test_empty_training_set_is_rejected():
    for name in sorted(REGISTRY):
        with pytest.raises(DenoiserLabError, match="empty"):
            create(name, torch.zeros(0, *IMAGE_SHAPE), **example_options(name))
