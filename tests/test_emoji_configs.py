"""The emoji configs of issue 16 (3x32x32 RGB): the two training configs are valid from-scratch runs with the
fidelity recipe's training sigmas, and the two study configs load and name the shipped networks those runs made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from denoiserlab.cli import train as train_cli
from denoiserlab.config import load_toml
from denoiserlab.assets import assets_folder
from denoiserlab.networks.build import resolve_preset
from denoiserlab.studies.gaussian_structure import GaussianStudyConfig
from denoiserlab.studies.locality import LocalityStudyConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARCHITECTURES = ("unet-small", "dit-small")


def train_config(arch: str):
    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    path = CONFIGS / f"train-{arch}-emoji.toml"
    arguments = ["train", "--config", str(path), "--out", f"runs/{arch}-emoji"]
    return train_cli.config_from_args(parser.parse_args(arguments))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_train_configs_train_from_scratch_with_the_fidelity_sigmas(arch):
    config = train_config(arch)
    assert (config.data, config.arch, config.init) == ("emoji", arch, None)
    assert (config.sigma_loguniform_fraction, config.sigma_min, config.sigma_max) == (0.7, 0.2, 80.0)
    assert config.target == "posterior"
    if arch == "unet-small":  # 32 -> 16 -> 8: attention where the feature maps are 8x8
        assert list(resolve_preset(config.arch, config.network)[1].attn_resolutions) == [8]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_study_configs_name_the_shipped_networks_those_configs_trained(arch):
    """Both networks ship, trained on emoji with their architecture, and so do both networks' heatmaps."""
    from denoiserlab.networks import load

    locality = load_toml(LocalityStudyConfig, CONFIGS / "locality-emoji.toml")
    assert [network.path for network in locality.networks] == [f"shipped:{name}-small-emoji" for name in ("unet", "dit")]
    assert [network.heatmaps for network in locality.networks] == ["shipped:unet-small-emoji.npz",
                                                                   "shipped:dit-small-emoji.npz"]
    assert all((assets_folder("heatmaps") / f"{name}-small-emoji.npz").is_file() for name in ("unet", "dit"))
    gaussian = load_toml(GaussianStudyConfig, CONFIGS / "gaussian-emoji.toml")
    assert gaussian.networks[0].path == "shipped:unet-small-emoji"
    assert gaussian.networks[0].heatmaps == "shipped:unet-small-emoji.npz"
    assert gaussian.distillation.n_samples >= 2 * (3 * 32 * 32 + 1)  # the split-half estimate needs two fits
    network = load(f"shipped:{arch}-emoji")
    assert network.training_data["source"] == "emoji" and network.img_channels == 3 and network.img_resolution == 32
    shipped_config = json.loads((assets_folder("checkpoints") / f"{arch}-emoji" / "config.json").read_text())
    assert shipped_config["preset"] == train_config(arch).arch == arch


def test_no_heatmaps_config_runs_every_registered_denoiser_except_the_one_built_from_heatmaps():
    """configs/locality-emoji-no-heatmaps.toml: the emoji locality study while the colour heatmaps do not ship."""
    from denoiserlab.denoisers import REGISTRY

    config = load_toml(LocalityStudyConfig, CONFIGS / "locality-emoji-no-heatmaps.toml")
    assert [network.path for network in config.networks] == [f"shipped:{name}-small-emoji" for name in ("unet", "dit")]
    assert all(network.heatmaps is None for network in config.networks)
    assert sorted(config.methods()) == sorted(set(REGISTRY) - {"pspc_flex"})
    assert config.heatmaps.n_samples == 1
