"""Inputs of the locality study: the training set, the networks (incl. `shipped:NAME`) and the analytical denoisers."""

from __future__ import annotations

import importlib.resources
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from denoiserlab.config import to_dict
from denoiserlab.data import ImageSet, load
from denoiserlab.denoisers import REGISTRY, create
from denoiserlab.denoisers.training_set import dataset_fingerprint, training_images
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.loaders import load as load_network_file
from denoiserlab.studies.cache import file_fingerprint
from denoiserlab.studies.locality_config import DataConfig, NetworkConfig

SHIPPED_PREFIX = "shipped:"


@dataclass(frozen=True)
class TrainingData:
    imageset: ImageSet  # as loaded (no flips)
    images: Tensor  # float32 [N, C, H, W] in [-1, 1], with flipped copies appended when config.xflip
    key: dict  # cache key: the data config and a fingerprint of the images


def load_training_data(config: DataConfig) -> TrainingData:
    """Load the study's training set (what the optimal denoiser memorises)."""
    imageset = load(**config.load_options())
    images = training_images(imageset, config.xflip)
    return TrainingData(imageset, images, {"data": to_dict(config), "fingerprint": dataset_fingerprint(images)})


def shipped_path(name: str) -> Path:
    """The folder of a network shipped with the package: src/denoiserlab/assets/checkpoints/NAME."""
    folder = importlib.resources.files("denoiserlab") / "assets" / "checkpoints" / name
    path = Path(str(folder))
    if not path.exists():
        raise DenoiserLabError(f"no shipped network named {name!r} (looked for {path})")
    return path


def network_path(spec: str) -> Path:
    """A network path from the config: `shipped:NAME` or a file system path."""
    if spec.startswith(SHIPPED_PREFIX):
        return shipped_path(spec[len(SHIPPED_PREFIX):])
    return Path(spec)


@dataclass
class LoadedNetwork:
    config: NetworkConfig
    module: nn.Module  # den(x, sigma), eval mode, gradients off
    key: dict  # cache key: the path and a content fingerprint of the checkpoint


def load_network(config: NetworkConfig, image_shape: tuple[int, int, int], device: str) -> LoadedNetwork:
    """Load one configured network and check that it takes images of the training set's shape."""
    path = network_path(config.path)
    module = load_network_file(path, trust_pickle=config.trust_pickle, device=device, **config.options)
    module.eval().requires_grad_(False)
    shape = (getattr(module, "img_channels", None), getattr(module, "img_resolution", None))
    if shape != (image_shape[0], image_shape[1]) or image_shape[1] != image_shape[2]:
        raise DenoiserLabError(f"network {config.name!r} ({path}) takes images [C, H, W] = [{shape[0]}, {shape[1]},"
                               f" {shape[1]}] but the training set has {list(image_shape)}")
    return LoadedNetwork(config, module, {"path": config.path, "options": config.options,
                                          "fingerprint": file_fingerprint(path)})


def denoiser_options(name: str, options: dict, xflip: bool) -> dict:
    """Registry options of one configured denoiser: the study's `schedule` key removed; xflip from the data
    config unless given (for denoisers that take it)."""
    if name not in REGISTRY:
        raise DenoiserLabError(f"unknown denoiser {name!r} in [denoisers]; valid names: {', '.join(sorted(REGISTRY))}")
    options = {key: value for key, value in options.items() if key != "schedule"}
    if "xflip" not in options and "xflip" in inspect.signature(REGISTRY[name]).parameters:
        options["xflip"] = xflip
    return options


def build_denoiser(name: str, options: dict, data: TrainingData, xflip: bool, **extra):
    """The registered denoiser `name` on the (unflipped) training set; `extra` adds schedule objects for PSPC."""
    return create(name, data.imageset.as_float(), **denoiser_options(name, options, xflip), **extra)


def to_cpu(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", torch.float32)
