"""Inputs of the Gaussian-structure study: networks (incl. `shipped:NAME`), each one's training set, and the
analytical denoisers (Gaussian, optimal, ...) built on it; loading itself is shared with the locality study."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from denoiserlab.denoisers import create
from denoiserlab.errors import DenoiserLabError
from denoiserlab.studies.common.config import DataConfig, NetworkConfig
from denoiserlab.studies.common.inputs import TrainingData, check_image_shape, load_network, load_training_data
from denoiserlab.studies.common.methods import sharded_over_ranks, with_disk_cache


@dataclass
class StudyData:
    name: str  # dataset name as loaded
    images: Tensor  # float32 [N, C, H, W] in [-1, 1] on the study's device (flips included when loaded with xflip)
    load_options: dict  # the denoiserlab.data.load keyword arguments that give it back
    key: dict  # cache key: load options and a content fingerprint
    training: TrainingData | None = None  # the set as loaded (unflipped images, flips flag), for study methods
    denoisers_: dict = field(default_factory=dict)  # registry name -> denoiser built on these images, once

    def denoiser(self, name: str, options: dict | None = None):
        """The registered denoiser `name` on these images (built on first use, then reused)."""
        label = f"{name}:{sorted((options or {}).items())}"
        if label not in self.denoisers_:
            options = sharded_over_ranks(name, with_disk_cache(name, options or {}))
            self.denoisers_[label] = create(name, self.images.cpu(), **options)
        return self.denoisers_[label]


@dataclass
class StudyNetwork:
    name: str  # label
    module: nn.Module  # den(x, sigma), eval mode, gradients off
    key: dict  # cache key: path, options and a content fingerprint of the checkpoint
    data: StudyData  # its training set
    n_parameters: int


def load_dataset(options: dict, device: str, cache: dict[str, StudyData]) -> StudyData:
    """Load (once per distinct options, via `cache`) the training set of data.load options plus xflip."""
    label = repr(sorted(options.items()))
    if label not in cache:
        training = load_training_data(options)
        cache[label] = StudyData(training.imageset.name, training.images.to(device), options, training.key, training)
    return cache[label]


def network_data_options(module: nn.Module, name: str, override: DataConfig | None,
                         prefer_recorded: bool = False) -> dict:
    """The training set of a network: the [data] table when given, else the network's recorded training_data
    (with prefer_recorded, as for sweep checkpoints: the recorded one first, the [data] table as a fallback)."""
    recorded = getattr(module, "training_data", None)
    if prefer_recorded and recorded is not None:
        return dict(recorded)
    if override is not None:
        return {**override.load_options(), "xflip": override.xflip}
    if recorded is None:
        raise DenoiserLabError(f"network {name!r} does not record its training data; give a [data] table (or the "
                               "loader option training_data)")
    return dict(recorded)


def load_study_network(name: str, path: str, trust_pickle: bool, options: dict, data: DataConfig | None,
                       device: str, datasets: dict[str, StudyData], prefer_recorded: bool = False) -> StudyNetwork:
    """Load one network and its training set (see network_data_options); checks that the network takes that
    set's images."""
    network = load_network(NetworkConfig(name, path, trust_pickle=trust_pickle, options=options), device)
    study_data = load_dataset(network_data_options(network.module, name, data, prefer_recorded), device, datasets)
    check_image_shape(network, tuple(study_data.images.shape[1:]))
    n_parameters = sum(parameter.numel() for parameter in network.module.parameters())
    return StudyNetwork(name, network.module, network.key, study_data, n_parameters)
