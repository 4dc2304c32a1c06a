"""Our checkpoint format: a folder with `model.safetensors` (EMA weights) and `config.json` (plain data, no code).

config.json holds: format and version, architecture, preset, the full network config, image geometry, sigma_data,
`dataset` (the `denoiserlab.data.load` keyword arguments of the training set, or null), training options and the
code version. Loading needs no pickle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import denoiserlab
from denoiserlab.errors import DenoiserLabError
from denoiserlab.atomic import atomic_folder
from denoiserlab.networks.build import ARCHITECTURES, build_raw_network, network_config
from denoiserlab.networks.precond import EDMPrecond

CHECKPOINT_FORMAT = "denoiserlab-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def checkpoint_config(denoiser: EDMPrecond, preset: str | None, training_options: dict | None) -> dict:
    """The config.json content describing `denoiser` (network config read from the raw network)."""
    if not isinstance(denoiser, EDMPrecond):
        raise DenoiserLabError(f"save_checkpoint needs an EDMPrecond denoiser, got {type(denoiser).__name__}")
    net = denoiser.net
    names = [name for name, (_, network_class) in ARCHITECTURES.items() if type(net) is network_class]
    if not names:
        raise DenoiserLabError(f"cannot save a {type(net).__name__}: not one of {list(ARCHITECTURES)}")
    architecture = names[0]
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "preset": preset,
        "network": dataclasses.asdict(net.config),
        "img_channels": denoiser.img_channels,
        "img_resolution": denoiser.img_resolution,
        "sigma_data": denoiser.sigma_data,
        "dataset": denoiser.training_data,
        "training": training_options,
        "code_version": denoiserlab.__version__,
    }


def save_checkpoint(path: str | Path, denoiser: EDMPrecond, preset: str | None = None,
                    training_options: dict | None = None) -> Path:
    """Write `denoiser` (an EDMPrecond) as a checkpoint folder at `path`, atomically; returns the path."""
    config = checkpoint_config(denoiser, preset, training_options)
    tensors = {name: value.detach().to("cpu", torch.float32).contiguous()
               for name, value in denoiser.state_dict().items()}

    def fill(folder: Path) -> None:
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return atomic_folder(path, fill)


def is_checkpoint_folder(path: str | Path) -> bool:
    """True when `path` is a folder holding config.json and model.safetensors."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read_checkpoint_config(path: str | Path) -> dict:
    """The parsed config.json of checkpoint folder `path`, checked for our format."""
    path = Path(path)
    if not is_checkpoint_folder(path):
        raise DenoiserLabError(f"{path} is not a denoiserlab checkpoint folder (needs {CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DenoiserLabError(f"{path / CONFIG_FILE} is not valid JSON: {error}") from None
    if config.get("format") != CHECKPOINT_FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise DenoiserLabError(f"{path / CONFIG_FILE} has format {config.get('format')!r} version "
                               f"{config.get('format_version')!r}; expected {CHECKPOINT_FORMAT!r} {FORMAT_VERSION}")
    return config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> EDMPrecond:
    """Load a checkpoint folder as a denoiser den(x, sigma) in eval mode on `device` (no pickle involved)."""
    config = read_checkpoint_config(path)
    architecture = config["architecture"]
    net = build_raw_network(architecture, network_config(architecture, config["network"]),
                            config["img_channels"], config["img_resolution"])
    denoiser = EDMPrecond(net, config["img_channels"], config["img_resolution"], config["dataset"],
                          config["sigma_data"])
    state = load_file(str(Path(path) / WEIGHTS_FILE))
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DenoiserLabError(f"{path}: weights do not match the config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    return denoiser.to(device).eval().requires_grad_(False)
