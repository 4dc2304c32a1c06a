"""`denoiserlab.networks.loaders.load`: which format a path holds, and clear errors for everything else."""

from __future__ import annotations

import json

import pytest
import torch

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.loaders import FORMATS, detect_format, load


def write_json(path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_formats_are_told_apart(tmp_path):
    write_json(tmp_path / "ours" / "config.json", {"arch": "unet-small"})
    (tmp_path / "ours" / "model.safetensors").write_bytes(b"")
    write_json(tmp_path / "pipeline" / "model_index.json", {"_class_name": "DDPMPipeline"})
    write_json(tmp_path / "unet" / "config.json", {"_class_name": "UNet2DModel"})
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"")  # a weights file of that name does not make it ours
    (tmp_path / "network-snapshot-000000.pkl").write_bytes(b"")
    assert detect_format(tmp_path / "ours") == "denoiserlab"
    assert detect_format(tmp_path / "pipeline") == "diffusers-pipeline"
    assert detect_format(tmp_path / "unet") == "diffusers-unet"
    assert detect_format(tmp_path / "network-snapshot-000000.pkl") == "edm-pickle"


@pytest.mark.parametrize("layout", ["empty folder", "config without weights", "npz file"])
def test_unrecognised_paths_list_the_formats(tmp_path, layout):
    path = tmp_path / "thing"
    if layout == "empty folder":
        path.mkdir()
    elif layout == "config without weights":
        write_json(path / "config.json", {"arch": "unet-small"})
    else:
        path = tmp_path / "thing.npz"
        path.write_bytes(b"")
    with pytest.raises(DenoiserLabError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and all(name in message for name in FORMATS)


def test_missing_path_and_corrupt_config_are_named(tmp_path):
    with pytest.raises(DenoiserLabError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{broken")
    with pytest.raises(DenoiserLabError, match=str(tmp_path / "broken" / "config.json")):
        load(tmp_path / "broken")


def test_options_are_checked_per_format(tmp_path):
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(b"")
    with pytest.raises(DenoiserLabError, match="accepted options: \\['class_label', 'training_data'\\]"):
        load(path, trust_pickle=True, scheduler="linear")


def test_our_checkpoints_go_to_load_checkpoint(tmp_path):
    checkpoint = pytest.importorskip("denoiserlab.networks.checkpoint")
    from denoiserlab.networks.build import build_denoiser

    denoiser = build_denoiser("mixer-small", 1, 8, training_data={"source": "fashion-mnist", "subset": 500}).eval()
    path = checkpoint.save_checkpoint(tmp_path / "run", denoiser, preset="mixer-small")
    assert detect_format(path) == "denoiserlab"
    with pytest.raises(DenoiserLabError, match="options \\['class_label'\\] do not apply to denoiserlab"):
        load(path, class_label=1)
    loaded = load(path)
    assert (loaded.img_channels, loaded.img_resolution) == (1, 8)
    assert loaded.training_data == {"source": "fashion-mnist", "subset": 500}
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([0.1, 3.0])), denoiser(x, torch.tensor([0.1, 3.0])))

    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DenoiserLabError, match=str(path)):
        load(path)
