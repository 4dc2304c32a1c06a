"""Shipped checkpoints (src/denoiserlab/assets/checkpoints/*): load without pickle and name their training set."""

from pathlib import Path

import numpy as np
import pytest
import torch

import denoiserlab
from denoiserlab import data
from denoiserlab.data.builtin import DEBIAN_FASHION_MNIST
from denoiserlab.networks import load_checkpoint
from denoiserlab.studies.common.cache import checkpoint_fingerprint

ASSETS = Path(denoiserlab.__file__).parent / "assets" / "checkpoints"
SHIPPED = sorted(config.parent for config in ASSETS.rglob("config.json"))  # sweep-fashion-mnist/* included


@pytest.mark.parametrize("folder", SHIPPED, ids=[str(p.relative_to(ASSETS)) for p in SHIPPED])
def test_shipped_checkpoint_loads_and_names_its_training_set(folder):
    den = load_checkpoint(folder)
    if den.training_data["source"] == "fashion-mnist-full" and not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("trained on the full Fashion-MNIST: needs Debian's dataset-fashion-mnist")
    train = data.load(**den.training_data)
    assert train.image_shape == (den.img_channels, den.img_resolution, den.img_resolution)
    x0 = train.as_float(0, 4)
    out = den(x0 + 0.1 * torch.randn_like(x0), 0.1)
    # At sigma = 0.1 a trained denoiser removes most of the noise: its error is well below the noise's.
    assert (out - x0).square().mean() < 0.5 * 0.1**2
    assert (folder / "README.md").is_file() or (folder.parent / "README.md").is_file()


HEATMAPS = Path(denoiserlab.__file__).parent / "assets" / "heatmaps"
HEATMAP_NETWORKS = {  # every shipped heatmap file -> the shipped checkpoint whose weights it was computed from
    "unet-small.npz": "unet-small-fashion-mnist",
    "dit-small.npz": "dit-small-fashion-mnist",
    "mixer-small.npz": "mixer-small-fashion-mnist",
    "dit-small-emoji.npz": "dit-small-emoji",
    "unet-small-emoji.npz": "unet-small-emoji",
}


def test_every_shipped_heatmap_file_matches_its_shipped_network():
    """A re-shipped checkpoint needs recomputed heatmaps: a study refuses a file whose fingerprint differs."""
    assert sorted(path.name for path in HEATMAPS.glob("*.npz")) == sorted(HEATMAP_NETWORKS)
    for file, network in HEATMAP_NETWORKS.items():
        with np.load(HEATMAPS / file, allow_pickle=False) as table:
            assert str(table["network_fingerprint"]) == checkpoint_fingerprint(ASSETS / network), file
