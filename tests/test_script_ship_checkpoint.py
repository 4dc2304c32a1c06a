"""scripts/ship_checkpoint.py: the shipped copy loads and denoises like the run's checkpoint (float16 within 1e-2),
and its config names the run's folders relative to the folder that held the run, not the training machine's paths."""

import json
import sys
from pathlib import Path

import torch

from denoiserlab.networks import load_checkpoint, save_checkpoint
from denoiserlab.networks.build import build_denoiser

from repo_scripts import load_script


def run_checkpoint(runs: Path) -> Path:
    """A tiny Mixer saved as runs/leg-2/network-000010, trained (nominally) from runs/leg-1/network-000020."""
    torch.manual_seed(0)
    network = build_denoiser("mixer", 1, 28, dict(hidden_size=16, depth=1, patch_size=7))
    with torch.no_grad():  # away from the zero-initialised output layer, so float16 rounding shows
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    options = {"out": str(runs / "leg-2"), "init": str(runs / "leg-1" / "network-000020"), "kimg": 10.0}
    return save_checkpoint(runs / "leg-2" / "network-000010", network.eval(), "mixer-small", options)


def test_shipped_copy_is_portable_and_denoises_alike(tmp_path, monkeypatch):
    module = load_script("ship_checkpoint")
    checkpoint = run_checkpoint(tmp_path / "runs")
    monkeypatch.setattr(module, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(sys, "argv", ["ship_checkpoint.py", str(checkpoint), "family/tiny", "--float16"])
    module.main()
    shipped = tmp_path / "assets" / "family" / "tiny"
    training = json.loads((shipped / "config.json").read_text())["training"]
    assert training == {"out": "leg-2", "init": "leg-1/network-000020", "kimg": 10.0}
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2.0
    with torch.no_grad():
        change = (load_checkpoint(checkpoint)(x, 2.0) - load_checkpoint(shipped)(x, 2.0)).abs().max().item()
    assert 0 < change < 1e-2


def test_portable_path_keeps_relative_and_shipped_names(tmp_path):
    module = load_script("ship_checkpoint")
    assert module.portable_path("shipped:unet-small-fashion-mnist", tmp_path) == "shipped:unet-small-fashion-mnist"
    assert module.portable_path("runs/a/network-000010", tmp_path) == "runs/a/network-000010"
    assert module.portable_path("/elsewhere/b/network-000030", tmp_path) == "network-000030"
    assert module.portable_path(None, tmp_path) is None
