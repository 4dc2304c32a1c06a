"""Inputs of both studies: the training set, the networks (incl. `shipped:NAME`) and the analytical denoisers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from denoiserlab.data import ImageSet, load
from denoiserlab.denoisers.training_set import dataset_fingerprint, training_images
from denoiserlab import assets
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.loaders import load as load_network_file
from denoiserlab.studies.common.cache import checkpoint_fingerprint
from denoiserlab.studies.common.config import DataConfig, NetworkConfig
from denoiserlab.studies.common.ranks import row_parallel


@dataclass(frozen=True)
class TrainingData:
    imageset: ImageSet  # as loaded (without the study's flips)
    images: Tensor  # float32 [N, C, H, W] in [-1, 1], with flipped copies appended when xflip
    xflip: bool  # flipped images count as training images (denoisers, forward set, nearest neighbours)
    key: dict  # cache key: the load options and a fingerprint of the images


def study_data_options(config: DataConfig | None, networks: dict[str, "LoadedNetwork"]) -> dict:
    """denoiserlab.data.load keyword arguments (plus xflip) of the study's training set: the [data] table when
    given, else the training_data the networks record (all of them must record the same one)."""
    if config is not None:
        return {**config.load_options(), "xflip": config.xflip}
    recorded = {name: getattr(network.module, "training_data", None) for name, network in networks.items()}
    missing = [name for name, options in recorded.items() if options is None]
    if missing:
        raise DenoiserLabError(f"network {missing[0]!r} does not record its training data; give a [data] table")
    first = next(iter(recorded.values()))
    differing = [name for name, options in recorded.items() if options != first]
    if differing:
        raise DenoiserLabError(f"networks record different training sets ({first} vs {recorded[differing[0]]} of"
                               f" {differing[0]!r}); the study compares them with one optimal denoiser, so give a"
                               " [data] table")
    return dict(first)


def load_training_data(options: dict) -> TrainingData:
    """Load the study's training set (what the optimal denoiser memorises) from load options plus xflip."""
    options = dict(options)
    xflip = bool(options.pop("xflip", False))
    imageset = load(**options)
    images = training_images(imageset, xflip)
    key = {"data": {**options, "xflip": xflip}, "fingerprint": dataset_fingerprint(images)}
    return TrainingData(imageset, images, xflip, key)


def network_path(spec: str) -> Path:
    """A network path from the config: `shipped:NAME` (assets/checkpoints/NAME) or a file system path."""
    return assets.resolve(spec)


def heatmaps_path(spec: str) -> Path:
    """A heatmap file from the config: `shipped:FILE` (assets/heatmaps/FILE) or a file system path."""
    return assets.resolve(spec, "heatmaps")


@dataclass
class LoadedNetwork:
    config: NetworkConfig
    module: nn.Module  # den(x, sigma), eval mode, gradients off; under torchrun data-parallel (`ranks.row_parallel`)
    key: dict  # cache key: the path and a content fingerprint of the checkpoint


def load_network(config: NetworkConfig, device: str) -> LoadedNetwork:
    """Load one configured network as a denoiser (eval mode, gradients off)."""
    path = network_path(config.path)
    module = load_network_file(path, trust_pickle=config.trust_pickle, device=device, **config.options)
    module.eval().requires_grad_(False)
    return LoadedNetwork(config, row_parallel(module), {"path": config.path, "options": config.options,
                                          "fingerprint": checkpoint_fingerprint(path)})


def check_image_shape(network: LoadedNetwork, image_shape: tuple[int, int, int]) -> None:
    """The network must take images of the training set's shape [C, H, W]."""
    shape = (getattr(network.module, "img_channels", None), getattr(network.module, "img_resolution", None))
    if shape != (image_shape[0], image_shape[1]) or image_shape[1] != image_shape[2]:
        raise DenoiserLabError(f"network {network.config.name!r} ({network.config.path}) takes images [C, H, W] ="
                               f" [{shape[0]}, {shape[1]}, {shape[1]}] but the training set has {list(image_shape)}")
