"""Load diffusers `UNet2DModel` networks with a DDPM-style (variance-preserving) scheduler as denoisers den(x, sigma).

Two layouts are recognised: a pipeline folder as `DDPMPipeline.save_pretrained` writes it (`model_index.json`,
`unet/`, `scheduler/`) and a bare UNet folder (`config.json` with `_class_name` "UNet2DModel" and the weights), whose
scheduler is given separately. The scheduler is built by diffusers from its config (any scheduler class with
`betas`: DDPM, DDIM, PNDM, ... with the linear, scaled_linear, squaredcos_cap_v2 or trained betas), and the
network is converted to the EDM convention as described in `vp_conversion`.

Noise levels: sigma above sigma_max = sigma_{T-1} is refused (the network never saw it); sigma below
sigma_min = sigma_0 is evaluated at step t = 0, the network's lowest noise level, while D(x, sigma) still uses the
requested sigma (for epsilon prediction D -> x as sigma -> 0).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.foreign.options import check_class_label, check_training_data
from denoiserlab.networks.foreign.vp_conversion import (
    PREDICTION_TYPES,
    denoised_from_prediction,
    timesteps_from_sigmas,
    vp_input_scale,
    vp_sigmas,
)
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample

SIGMA_MAX_TOLERANCE = 1e-6  # relative slack above sigma_max, for grids rounded through float32


def import_diffusers():
    """The diffusers module, or a clear error saying how to install it."""
    try:
        import diffusers
    except ImportError:
        message = "loading diffusers networks needs the diffusers package: pip install diffusers"
        raise DenoiserLabError(message) from None
    return diffusers


def read_json(path: Path) -> dict:
    """The JSON object stored in `path`, or an error naming the file."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DenoiserLabError(f"cannot read JSON file {path}: {error}") from None
    if not isinstance(config, dict):
        raise DenoiserLabError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def pipeline_parts(folder: Path) -> tuple[Path, Path]:
    """The UNet and scheduler folders of a diffusers pipeline folder, checked against its model_index.json."""
    index = read_json(folder / "model_index.json")
    autoencoders = sorted(set(index) & {"vae", "vqvae"})
    if autoencoders:
        raise DenoiserLabError(f"{folder} is a latent diffusion pipeline (it has {autoencoders}); only pixel-space"
                               " pipelines are supported")
    for part, expected in (("unet", "UNet2DModel"), ("scheduler", None)):
        entry = index.get(part)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers"):
            raise DenoiserLabError(f"{folder / 'model_index.json'} has no diffusers '{part}' entry, got {entry!r}")
        if expected is not None and entry[1] != expected:
            raise DenoiserLabError(
                f"{folder}: the pipeline's unet is a {entry[1]}; only {expected} (pixel space) is supported"
            )
    return folder / "unet", folder / "scheduler"


def read_unet(folder: Path, device: str | torch.device) -> nn.Module:
    """The UNet2DModel saved in `folder`, in eval mode on `device` (diffusers reads .bin weights with weights_only)."""
    config = read_json(folder / "config.json")
    if config.get("_class_name") != "UNet2DModel":
        raise DenoiserLabError(
            f"{folder / 'config.json'} describes a {config.get('_class_name')!r}; only UNet2DModel is supported"
        )
    diffusers = import_diffusers()
    try:
        # low_cpu_mem_usage needs the accelerate package; without it diffusers warns on every load
        unet = diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as error:
        raise DenoiserLabError(f"cannot load the UNet2DModel in {folder}: {type(error).__name__}: {error}") from None
    return unet.to(device).eval()


def scheduler_config(source: str | Path | dict) -> tuple[dict, str]:
    """A scheduler config dict and where it came from, from a scheduler folder, a JSON file or a dict."""
    if isinstance(source, dict):
        return dict(source), "the scheduler option"
    path = Path(source)
    if path.is_dir():
        path = path / "scheduler_config.json"
    if not path.is_file():
        raise DenoiserLabError(f"scheduler config {path} does not exist")
    return read_json(path), str(path)


def check_config_keys(config: dict, scheduler_class: type, origin: str) -> None:
    """Reject keys that `scheduler_class` does not take (diffusers would ignore them silently)."""
    accepted = set(inspect.signature(scheduler_class.__init__).parameters) - {"self"}
    unknown = sorted(key for key in config if not key.startswith("_") and key not in accepted)
    if unknown:
        raise DenoiserLabError(f"{origin}: {scheduler_class.__name__} takes no {unknown}; it takes {sorted(accepted)}")


def read_schedule(source: str | Path | dict) -> tuple[Tensor, str]:
    """(alpha_bar float64 [T], prediction_type) of the scheduler described by `source`.

    A dict holds scheduler arguments, e.g. {"beta_schedule": "linear", "num_train_timesteps": 1000}; its class is
    `_class_name` if given, else DDPMScheduler.
    """
    config, origin = scheduler_config(source)
    diffusers = import_diffusers()
    class_name = config.get("_class_name", "DDPMScheduler")
    scheduler_class = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise DenoiserLabError(f"{origin}: {class_name!r} is not a diffusers scheduler class")
    if isinstance(source, dict):  # typed by a user; files written by (older) diffusers may hold retired keys
        check_config_keys(config, scheduler_class, origin)
    try:
        scheduler = scheduler_class.from_config(config)
    except Exception as error:
        raise DenoiserLabError(f"{origin}: cannot build {class_name}: {type(error).__name__}: {error}") from None
    if getattr(scheduler, "betas", None) is None:
        raise DenoiserLabError(f"{origin}: {class_name} has no betas, so it is not a discrete VP (DDPM-style) schedule")
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise DenoiserLabError(
            f"{origin}: prediction_type {prediction_type!r} is not supported; expected one of {list(PREDICTION_TYPES)}"
        )
    # alpha_bar_t = prod_{s <= t} (1 - beta_s) in float64 (diffusers' float32 copy is 1e-4 off in sigma_0)
    return torch.cumprod(1 - torch.as_tensor(scheduler.betas, dtype=torch.float64), 0), prediction_type


def unet_image_shape(unet: nn.Module, where: str) -> tuple[int, int]:
    """(img_channels, img_resolution) of a UNet2DModel that fits the conversion; refuses the variants that do not."""
    config = unet.config
    size = config.sample_size
    sizes = list(size) if isinstance(size, (list, tuple)) else [size, size]
    problems = {
        f"time_embedding_type {config.time_embedding_type!r} (needs 'positional', which takes continuous steps)":
            config.time_embedding_type != "positional",
        "center_input_sample=True": bool(config.center_input_sample),
        f"class_embed_type {config.class_embed_type!r}": config.class_embed_type is not None,
        f"non-square sample_size {size!r}": len(sizes) != 2 or sizes[0] != sizes[1],
        f"out_channels {config.out_channels} (needs in_channels {config.in_channels} or twice that)":
            config.out_channels not in (config.in_channels, 2 * config.in_channels),
    }
    for problem, present in problems.items():
        if present:
            raise DenoiserLabError(f"{where}: unsupported UNet2DModel: {problem}")
    return int(config.in_channels), int(sizes[0])


class DiffusersUNetDenoiser(nn.Module):
    """Denoiser den(x, sigma) around a diffusers UNet2DModel trained on a discrete VP schedule (see `vp_conversion`).

    x: [B, C, H, W] in [-1, 1]; sigma: float or [B] in (0, sigma_max]; returns [B, C, H, W] in x's dtype and device.
    The conversion runs in float64, the UNet in its own dtype. Models that also predict a variance (2C output
    channels) use their first C channels.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction_type: str, where: str = "UNet2DModel",
                 training_data: dict | None = None, class_label: int | None = None):
        super().__init__()
        self.img_channels, self.img_resolution = unet_image_shape(unet, where)
        self.unet = unet.eval()
        self.prediction_type = prediction_type
        self.register_buffer("schedule_sigmas", vp_sigmas(alphas_cumprod).to(unet.device), persistent=False)  # [T]
        self.sigma_min = float(self.schedule_sigmas[0])  # sigma at step 0; below it t is held at 0
        self.sigma_max = float(self.schedule_sigmas[-1])  # sigma at step T-1; above it den refuses
        self.class_label = check_class_label(class_label, int(unet.config.num_class_embeds or 0), where)
        self.training_data = check_training_data(training_data)

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        check_images(x, "x")
        check_same_image_shape(x, (self.img_channels, self.img_resolution, self.img_resolution), "the network's images")
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)  # float64 [B]
        if (sigma > self.sigma_max * (1 + SIGMA_MAX_TOLERANCE)).any():
            raise DenoiserLabError(
                f"sigma {sigma.max().item():g} is above this network's sigma_max {self.sigma_max:g} (its last step)"
            )
        steps = timesteps_from_sigmas(sigma, self.schedule_sigmas.to(x.device))  # [B]
        sigma = sigma.view(-1, 1, 1, 1)
        z = (x.to(torch.float64) * vp_input_scale(sigma)).to(self.unet.dtype)
        labels = self.class_labels(x.shape[0], x.device)
        prediction = self.unet(z, steps.to(torch.float32), labels, return_dict=False)[0]
        prediction = prediction[:, : self.img_channels].to(torch.float64)
        return denoised_from_prediction(x.to(torch.float64), sigma, prediction, self.prediction_type).to(x.dtype)

    def class_labels(self, batch: int, device: torch.device) -> Tensor | None:
        """Integer labels [B] equal to `class_label`, or None for an unconditional UNet."""
        if self.class_label is None:
            return None
        return torch.full((batch,), self.class_label, dtype=torch.long, device=device)


def load_diffusers(path: str | Path, device: str | torch.device = "cpu", scheduler: str | Path | dict | None = None,
                   training_data: dict | None = None, class_label: int | None = None) -> DiffusersUNetDenoiser:
    """Load a diffusers pipeline folder or a bare UNet2DModel folder as a denoiser on `device`.

    scheduler: the scheduler folder, its scheduler_config.json, or a dict of scheduler arguments; required for a bare
    UNet folder, and replaces the pipeline's own scheduler when given. training_data: the `denoiserlab.data.load`
    arguments of the training set, if known. class_label: the class for a class-conditional UNet.
    """
    path = Path(path)
    unet_folder, pipeline_scheduler = pipeline_parts(path) if (path / "model_index.json").is_file() else (path, None)
    scheduler = scheduler if scheduler is not None else pipeline_scheduler
    if scheduler is None:
        raise DenoiserLabError(
            f"{path} is a bare UNet2DModel folder: give its scheduler with scheduler=<folder or scheduler_config.json>"
            ' or scheduler={"beta_schedule": ..., "num_train_timesteps": ...}'
        )
    alphas_cumprod, prediction_type = read_schedule(scheduler)
    unet = read_unet(unet_folder, device)
    return DiffusersUNetDenoiser(unet, alphas_cumprod, prediction_type, str(path), training_data, class_label)
