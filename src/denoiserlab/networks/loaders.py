"""`load(path)`: any supported network checkpoint as a denoiser den(x, sigma).

Every loaded network is a torch.nn.Module called as den(x, sigma) (x: [B, C, H, W] in [-1, 1], sigma: float or [B])
with attributes `img_channels`, `img_resolution` and `training_data` (the `denoiserlab.data.load` keyword arguments
that give back its training set, or None when unknown).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from denoiserlab import assets
from denoiserlab.errors import DenoiserLabError

FORMATS = {  # format name -> how it is recognised
    "denoiserlab": "a folder with config.json and model.safetensors (our own checkpoints)",
    "edm-pickle": "a .pkl file as NVlabs/edm's training loop writes (network-snapshot-*.pkl; needs trust_pickle=True)",
    "diffusers-pipeline": "a diffusers pipeline folder with model_index.json, unet/ and scheduler/",
    "diffusers-unet": "a diffusers UNet2DModel folder (config.json with _class_name) plus scheduler=...",
}


def unrecognised(path: Path, why: str) -> DenoiserLabError:
    """The error for a path in none of the FORMATS, listing them."""
    formats = "; ".join(f"{name}: {description}" for name, description in FORMATS.items())
    return DenoiserLabError(f"{path} is not a recognised network ({why}); recognised formats are {formats}")


def folder_format(folder: Path) -> str:
    """The FORMATS name of a folder, told apart by model_index.json, then config.json's `_class_name`."""
    if (folder / "model_index.json").is_file():
        return "diffusers-pipeline"
    if not (folder / "config.json").is_file():
        raise unrecognised(folder, "a folder without config.json or model_index.json")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DenoiserLabError(f"cannot read JSON file {folder / 'config.json'}: {error}") from None
    if isinstance(config, dict) and "_class_name" in config:
        return "diffusers-unet"
    if (folder / "model.safetensors").is_file():
        return "denoiserlab"
    raise unrecognised(folder, "config.json without model.safetensors and without diffusers' _class_name")


def detect_format(path: str | Path) -> str:
    """Which of FORMATS `path` holds (see FORMATS); raises a clear error when none."""
    path = Path(path)
    if not path.exists():
        raise DenoiserLabError(f"network path {path} does not exist")
    if path.is_dir():
        return folder_format(path)
    if path.suffix == ".pkl":
        return "edm-pickle"
    raise unrecognised(path, f"a file with suffix {path.suffix!r}")


def load_own_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """`load_checkpoint`, with any failure to read the folder (e.g. corrupt weights) as an error naming it."""
    from denoiserlab.networks.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path, device)
    except DenoiserLabError:
        raise
    except Exception as error:
        raise DenoiserLabError(f"cannot load denoiserlab checkpoint {path}: {type(error).__name__}: {error}") from error


def loader_for(kind: str):
    """The function that loads format `kind`, called as loader(path, device=..., **options)."""
    if kind == "denoiserlab":
        return load_own_checkpoint
    if kind == "edm-pickle":
        from denoiserlab.networks.foreign.edm_pickle import load_edm_pickle

        return load_edm_pickle
    from denoiserlab.networks.foreign.diffusers_unet import load_diffusers

    return load_diffusers


def check_options(loader, kind: str, options: dict) -> None:
    """Reject options that the loader of format `kind` does not take, listing the ones it does."""
    accepted = sorted(set(inspect.signature(loader).parameters) - {"path", "device", "trust_pickle"})
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DenoiserLabError(
            f"options {unknown} do not apply to {kind} networks; accepted options: {accepted or 'none'}"
        )


def load(path: str | Path, trust_pickle: bool = False, device: str | torch.device = "cpu", **options) -> nn.Module:
    """Load the network at `path` (any of FORMATS) as a denoiser den(x, sigma) on `device`.

    trust_pickle: allow EDM pickles, which run code when read (refused otherwise, before reading them). options,
    by format: EDM pickles take `class_label` and `training_data`; diffusers folders take `scheduler` (required for a
    bare UNet folder), `class_label` and `training_data`; our checkpoints take none (they record their training data).
    `path` may name a shipped checkpoint as `shipped:NAME` (src/denoiserlab/assets/checkpoints/NAME).
    """
    path = assets.resolve(path)
    kind = detect_format(path)
    loader = loader_for(kind)
    check_options(loader, kind, options)
    if kind == "edm-pickle":
        return loader(path, trust_pickle=trust_pickle, device=device, **options)
    return loader(path, device=device, **options)
