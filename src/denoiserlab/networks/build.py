"""Build networks from an architecture or preset name plus config overrides, wrapped as EDM denoisers."""

from __future__ import annotations

import dataclasses

from torch import nn

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.dit import DiT, DiTConfig
from denoiserlab.networks.mixer import Mixer, MixerConfig
from denoiserlab.networks.precond import EDMPrecond
from denoiserlab.networks.presets import PRESETS
from denoiserlab.networks.unet import UNet, UNetConfig

ARCHITECTURES = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
    "mixer": (MixerConfig, Mixer),
}


def network_config(architecture: str, options: dict):
    """The frozen config dataclass of `architecture` built from `options`; unknown keys fail naming the key."""
    if architecture not in ARCHITECTURES:
        raise DenoiserLabError(f"unknown architecture {architecture!r}; valid names: {', '.join(ARCHITECTURES)}")
    config_class = ARCHITECTURES[architecture][0]
    allowed = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DenoiserLabError(f"unknown option(s) {unknown} for architecture {architecture!r}; valid: {allowed}")
    return config_class(**options)


def resolve_preset(name: str, overrides: dict | None = None):
    """(architecture, config) for a preset name (or a bare architecture name) with `overrides` applied on top."""
    if name in PRESETS:
        architecture, options = PRESETS[name]["architecture"], dict(PRESETS[name]["network"])
    elif name in ARCHITECTURES:
        architecture, options = name, {}
    else:
        valid = sorted(PRESETS) + sorted(ARCHITECTURES)
        raise DenoiserLabError(f"unknown network preset {name!r}; valid names: {', '.join(valid)}")
    options.update(overrides or {})
    return architecture, network_config(architecture, options)


def build_raw_network(architecture: str, config, img_channels: int, img_resolution: int) -> nn.Module:
    """The raw network F(x_in, c_noise) of `architecture` for images [C = img_channels, img_resolution^2]."""
    return ARCHITECTURES[architecture][1](config, img_channels, img_resolution)


def build_denoiser(preset: str, img_channels: int, img_resolution: int, overrides: dict | None = None,
                   training_data: dict | None = None) -> EDMPrecond:
    """A freshly initialised EDM-preconditioned denoiser den(x, sigma) from a preset name and config overrides."""
    architecture, config = resolve_preset(preset, overrides)
    net = build_raw_network(architecture, config, img_channels, img_resolution)
    return EDMPrecond(net, img_channels, img_resolution, training_data)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
