"""diffusers UNet2DModel folders loaded as EDM denoisers, against the VP -> VE conversion written out in float64.

Reference (Karras et al. 2022, Table 1, VP): alpha_bar_t = prod_{s <= t} (1 - beta_s) from the betas computed here,
sigma_t^2 = (1 - alpha_bar_t) / alpha_bar_t, t from sigma by linear interpolation of log sigma_t between integer
steps (t = 0 below sigma_0), z = x / sqrt(1 + sigma^2), and D = x - sigma * eps(z, t) (epsilon prediction),
D = x0_hat(z, t) (sample), D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v(z, t) (v_prediction).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.foreign.vp_conversion import timesteps_from_sigmas, vp_sigmas
from denoiserlab.networks.loaders import detect_format, load

diffusers = pytest.importorskip("diffusers")

N_STEPS = 1000
BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}


def tiny_unet(channels: int = 2, out_channels: int | None = None, num_class_embeds: int | None = None):
    """A random UNet2DModel on 8x8 images, small enough for CPU tests."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=out_channels or channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
        num_class_embeds=num_class_embeds,
    ).eval()
    with torch.no_grad():  # a steep response to the step, so that errors of 1e-3 steps in t show in the output
        unet.time_embedding.linear_1.weight.mul_(30)
    return unet


def reference_alphas_cumprod(beta_schedule: str) -> list[float]:
    """alpha_bar_t for t = 0..N_STEPS-1 in float64, from the betas of each DDPM schedule written out here."""
    start, end = BETA_RANGE[beta_schedule]
    if beta_schedule == "linear":
        betas = [start + (end - start) * i / (N_STEPS - 1) for i in range(N_STEPS)]
    elif beta_schedule == "scaled_linear":
        betas = [(start**0.5 + (end**0.5 - start**0.5) * i / (N_STEPS - 1)) ** 2 for i in range(N_STEPS)]
    else:  # Nichol & Dhariwal (2021), eq. 17, betas clipped at 0.999
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - alpha_bar((i + 1) / N_STEPS) / alpha_bar(i / N_STEPS), 0.999) for i in range(N_STEPS)]
    products, running = [], 1.0
    for beta in betas:
        running *= 1 - beta
        products.append(running)
    return products


def reference_step(sigma: float, table: list[float]) -> float:
    """Continuous step for sigma: linear in log sigma between the integer steps around it; 0 below table[0]."""
    if sigma <= table[0]:
        return 0.0
    for i in range(len(table) - 1):
        if table[i] <= sigma <= table[i + 1]:
            return i + (math.log(sigma) - math.log(table[i])) / (math.log(table[i + 1]) - math.log(table[i]))
    raise AssertionError("sigma above the table")


def reference_denoiser(unet, beta_schedule, prediction_type, x, sigmas, class_label=None) -> torch.Tensor:
    """D(x, sigma) per sample in float64 from a float64 copy of the UNet."""
    table = [math.sqrt((1 - a) / a) for a in reference_alphas_cumprod(beta_schedule)]
    unet64 = diffusers.UNet2DModel.from_config(unet.config).double()
    unet64.load_state_dict(unet.state_dict())
    outputs = []
    for image, sigma in zip(x.double(), sigmas):
        z = image[None] / math.sqrt(1 + sigma**2)
        step = torch.tensor([reference_step(sigma, table)], dtype=torch.float64)
        labels = None if class_label is None else torch.tensor([class_label])
        with torch.no_grad():
            prediction = unet64(z, step, labels).sample[:, : x.shape[1]]
        if prediction_type == "epsilon":
            outputs.append(image[None] - sigma * prediction)
        elif prediction_type == "sample":
            outputs.append(prediction)
        else:
            outputs.append(image[None] / (1 + sigma**2) - sigma / math.sqrt(1 + sigma**2) * prediction)
    return torch.cat(outputs)


def assert_denoised_close(out: torch.Tensor, expected: torch.Tensor, sigmas: list[float]) -> None:
    """Compare D per sample relative to 1 + sigma: D = x - sigma * eps carries the UNet's float32 error times sigma."""
    scale = 1 + torch.tensor(sigmas, dtype=torch.float64).view(-1, 1, 1, 1)
    torch.testing.assert_close(out.double() / scale, expected / scale, rtol=1e-4, atol=1e-4)


def save_pipeline(folder, unet, beta_schedule="linear", prediction_type="epsilon"):
    """Write a DDPMPipeline folder (model_index.json, unet/, scheduler/) as diffusers does."""
    start, end = BETA_RANGE[beta_schedule]
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_STEPS, beta_start=start, beta_end=end,
                                        beta_schedule=beta_schedule, prediction_type=prediction_type)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def images(batch: int = 3, channels: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)


def test_pipeline_folder_matches_the_float64_conversion(tmp_path):
    unet = tiny_unet()
    folder = save_pipeline(tmp_path / "pipeline", unet)
    assert detect_format(folder) == "diffusers-pipeline"
    den = load(folder)
    assert isinstance(den, torch.nn.Module)
    assert (den.img_channels, den.img_resolution, den.training_data) == (2, 8, None)
    table = [math.sqrt((1 - a) / a) for a in reference_alphas_cumprod("linear")]
    sigmas = [0.05, math.sqrt(table[400] * table[401]), 20.0]  # the middle one lies halfway between two steps
    x = images()
    with torch.no_grad():
        out = den(x, torch.tensor(sigmas))
        out_float = den(x, 0.7)
    assert_denoised_close(out, reference_denoiser(unet, "linear", "epsilon", x, sigmas), sigmas)
    assert_denoised_close(out_float, reference_denoiser(unet, "linear", "epsilon", x, [0.7] * 3), [0.7] * 3)
    assert out.dtype == x.dtype and out.shape == x.shape


def test_unet_takes_fractional_steps():
    unet, z = tiny_unet(), images(1)
    with torch.no_grad():
        at = {t: unet(z, torch.tensor([t])).sample for t in (400.0, 400.5, 401.0)}
    assert not torch.equal(at[400.0], at[400.5]) and not torch.equal(at[400.5], at[401.0])


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_bare_unet_folder_with_each_schedule(tmp_path, beta_schedule):
    unet = tiny_unet()
    pipeline = save_pipeline(tmp_path / "pipeline", unet, beta_schedule)
    unet.save_pretrained(tmp_path / "bare")
    assert detect_format(tmp_path / "bare") == "diffusers-unet"
    start, end = BETA_RANGE[beta_schedule]
    sources = [pipeline / "scheduler", pipeline / "scheduler" / "scheduler_config.json",
               {"beta_schedule": beta_schedule, "beta_start": start, "beta_end": end, "num_train_timesteps": N_STEPS}]
    sigmas = [0.3, 2.5, 9.0]
    expected = reference_denoiser(unet, beta_schedule, "epsilon", images(), sigmas)
    for source in sources:
        den = load(tmp_path / "bare", scheduler=source)
        with torch.no_grad():
            out = den(images(), torch.tensor(sigmas))
        assert_denoised_close(out, expected, sigmas)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_types(tmp_path, prediction_type):
    unet = tiny_unet()
    folder = save_pipeline(tmp_path / "pipeline", unet, prediction_type=prediction_type)
    den = load(folder)
    sigmas = [0.1, 1.0, 30.0]
    with torch.no_grad():
        out = den(images(), torch.tensor(sigmas))
    expected = reference_denoiser(unet, "linear", prediction_type, images(), sigmas)
    assert_denoised_close(out, expected, sigmas)


def test_noise_level_range(tmp_path):
    unet = tiny_unet()
    den = load(save_pipeline(tmp_path / "pipeline", unet))
    table = [math.sqrt((1 - a) / a) for a in reference_alphas_cumprod("linear")]
    assert den.sigma_min == pytest.approx(table[0], rel=1e-6) and den.sigma_max == pytest.approx(table[-1], rel=1e-6)
    x = images()
    sigmas = [0.002, den.sigma_min, den.sigma_max]  # below sigma_min the network is evaluated at step 0
    with torch.no_grad():
        out = den(x, torch.tensor(sigmas, dtype=torch.float64))
    assert_denoised_close(out, reference_denoiser(unet, "linear", "epsilon", x, sigmas), sigmas)
    with pytest.raises(DenoiserLabError, match="sigma_max"):
        den(x, den.sigma_max * 1.01)


def test_timesteps_from_sigmas_hits_integer_steps_and_midpoints():
    table = vp_sigmas(torch.tensor(reference_alphas_cumprod("linear"), dtype=torch.float64))
    steps = timesteps_from_sigmas(table, table)
    torch.testing.assert_close(steps, torch.arange(N_STEPS, dtype=torch.float64), rtol=0, atol=1e-9)
    midpoints = (table[:-1] * table[1:]).sqrt()
    torch.testing.assert_close(timesteps_from_sigmas(midpoints, table), torch.arange(N_STEPS - 1) + 0.5,
                               rtol=0, atol=1e-9, check_dtype=False)


def test_class_conditional_and_learned_variance_unets(tmp_path):
    unet = tiny_unet(out_channels=4, num_class_embeds=3)
    folder = save_pipeline(tmp_path / "pipeline", unet)
    with pytest.raises(DenoiserLabError, match="class_label"):
        load(folder)
    den = load(folder, class_label=1, training_data={"source": "fashion-mnist"})
    assert den.training_data == {"source": "fashion-mnist"}
    sigmas = [0.2, 4.0, 40.0]
    with torch.no_grad():
        out = den(images(), torch.tensor(sigmas))
    expected = reference_denoiser(unet, "linear", "epsilon", images(), sigmas, class_label=1)
    assert_denoised_close(out, expected, sigmas)


def test_clear_errors(tmp_path):
    unet = tiny_unet()
    pipeline = save_pipeline(tmp_path / "pipeline", unet)
    unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(DenoiserLabError, match="scheduler="):
        load(tmp_path / "bare")
    with pytest.raises(DenoiserLabError, match="beta_shedule"):
        load(tmp_path / "bare", scheduler={"beta_shedule": "linear"})
    with pytest.raises(DenoiserLabError, match="betas"):
        load(tmp_path / "bare", scheduler={"_class_name": "ScoreSdeVeScheduler"})
    with pytest.raises(DenoiserLabError, match="prediction_type"):
        load(tmp_path / "bare", scheduler={"prediction_type": "velocity"})
    with pytest.raises(DenoiserLabError, match="trust|options"):
        load(pipeline, trust_pickle=True, shedule="x")
    index = json.loads((pipeline / "model_index.json").read_text())
    (pipeline / "model_index.json").write_text(json.dumps(dict(index, vqvae=["diffusers", "VQModel"])))
    with pytest.raises(DenoiserLabError, match="latent"):
        load(pipeline)
    (pipeline / "model_index.json").write_text(json.dumps(index))
    den = load(pipeline)
    with pytest.raises(DenoiserLabError, match="shape"):
        den(torch.zeros(1, 3, 8, 8), 1.0)


def test_corrupt_files_are_named(tmp_path):
    unet = tiny_unet()
    pipeline = save_pipeline(tmp_path / "pipeline", unet)
    weights = next((pipeline / "unet").glob("diffusion_pytorch_model.*"))
    weights.write_bytes(b"garbage")
    with pytest.raises(DenoiserLabError, match=str(pipeline / "unet")):
        load(pipeline)
    (pipeline / "model_index.json").write_text("{not json")
    with pytest.raises(DenoiserLabError, match="model_index.json"):
        load(pipeline)


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_loads_onto_cuda(tmp_path):
    unet = tiny_unet()
    den = load(save_pipeline(tmp_path / "pipeline", unet), device="cuda")
    sigmas = [0.05, 0.7, 20.0]
    with torch.no_grad():
        out = den(images().cuda(), torch.tensor(sigmas, device="cuda"))
    assert out.device.type == "cuda"
    scale = 1 + torch.tensor(sigmas, dtype=torch.float64).view(-1, 1, 1, 1)
    expected = reference_denoiser(unet, "linear", "epsilon", images(), sigmas)
    # CUDA convolutions may run in TF32 (10-bit mantissa), hence the looser tolerance
    torch.testing.assert_close(out.cpu().double() / scale, expected / scale, rtol=1e-2, atol=1e-2)
