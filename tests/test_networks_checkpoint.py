"""Checkpoints: safetensors + JSON round trip gives identical outputs; writes are atomic; bad folders fail clearly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import EDMPrecond, load_checkpoint, save_checkpoint
from denoiserlab.atomic import atomic_folder, atomic_write, atomic_write_text
from test_networks import TINY, AffineRawNet, tiny_denoiser

TRAINING_DATA = dict(source="fashion-mnist", split="train", subset=500, classes=None, resolution=None,
                     resolution_policy="pad", xflip=False, channels=None, seed=0)


@pytest.mark.parametrize("arch", list(TINY))
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    extra = {"noise_embedding": "fourier"} if arch != "unet" else {"noise_embedding": "fourier", "encoder": "residual"}
    den = tiny_denoiser(arch, 1, 28, **extra)
    den.training_data = dict(TRAINING_DATA)
    save_checkpoint(tmp_path / "net", den, preset=arch, training_options={"kimg": 1.0})
    loaded = load_checkpoint(tmp_path / "net")
    x, sigma = torch.randn(3, 1, 28, 28), torch.tensor([0.02, 1.0, 50.0])
    assert torch.equal(den(x, sigma), loaded(x, sigma))
    assert loaded.training_data == TRAINING_DATA and not loaded.training
    assert (loaded.img_channels, loaded.img_resolution) == (1, 28)
    config = json.loads((tmp_path / "net" / "config.json").read_text())
    assert config["architecture"] == arch and config["dataset"] == TRAINING_DATA
    assert config["training"] == {"kimg": 1.0} and config["network"]["noise_embedding"] == "fourier"
    assert set(load_file(str(tmp_path / "net" / "model.safetensors"))) == set(den.state_dict())


def test_saving_again_replaces_the_folder(tmp_path):
    first, second = tiny_denoiser("mixer", 1, 28), tiny_denoiser("dit", 1, 28)
    save_checkpoint(tmp_path / "net", first)
    save_checkpoint(tmp_path / "net", second)
    assert json.loads((tmp_path / "net" / "config.json").read_text())["architecture"] == "dit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


def test_interrupted_folder_write_leaves_nothing(tmp_path):
    def fill_then_crash(folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_folder(tmp_path / "net", fill_then_crash)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_file_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    def crash(temp):
        temp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", crash)
    assert (tmp_path / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_bad_checkpoint_folders_fail(tmp_path):
    with pytest.raises(DenoiserLabError, match="not a denoiserlab checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "net", tiny_denoiser("mixer", 1, 28))
    config_path = tmp_path / "net" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(DenoiserLabError, match="format"):
        load_checkpoint(tmp_path / "net")
    config_path.write_text(json.dumps({**config, "network": {**config["network"], "depth": 3}}))
    with pytest.raises(DenoiserLabError, match="do not match"):
        load_checkpoint(tmp_path / "net")
    config_path.write_text(json.dumps({**config, "network": {**config["network"], "width": 3}}))
    with pytest.raises(DenoiserLabError, match="width"):
        load_checkpoint(tmp_path / "net")


def test_only_our_architectures_can_be_saved(tmp_path):
    with pytest.raises(DenoiserLabError, match="AffineRawNet"):
        save_checkpoint(tmp_path / "net", EDMPrecond(AffineRawNet(), 1, 2))
    with pytest.raises(DenoiserLabError, match="EDMPrecond"):
        save_checkpoint(tmp_path / "net", AffineRawNet())
    assert not (tmp_path / "net").exists()
