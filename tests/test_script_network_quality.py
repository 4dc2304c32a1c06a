"""scripts/network_quality.py: each network's numbers come from its own samples, also when a rerun lists other
networks in the same --out folder, and a damaged stored sample file is sampled again."""

import json
import sys
from pathlib import Path

import torch

from denoiserlab.diffusion import sample_heun, standard_noise
from denoiserlab.networks import save_checkpoint
from denoiserlab.networks.build import build_denoiser
from denoiserlab.studies.common.cache import STAGE_FORMAT, read_value

from repo_scripts import load_script

TRAINING_DATA = {"source": "fashion-mnist", "subset": 12, "seed": 0}


def tiny_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    network = build_denoiser("mixer", 1, 28, dict(hidden_size=16, depth=1, patch_size=7), training_data=TRAINING_DATA)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return save_checkpoint(path, network.eval())


def run(module, monkeypatch, out: Path, *networks: Path) -> dict:
    argv = ["network_quality.py", *map(str, networks), "--n", "6", "--steps", "3", "--seed", "4", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    return json.loads((out / "quality.json").read_text())["networks"]


def test_rerun_with_other_networks_uses_each_networks_own_samples(tmp_path, monkeypatch):
    module = load_script("network_quality")
    first, second = tiny_checkpoint(tmp_path / "a", 0), tiny_checkpoint(tmp_path / "b", 1)
    out = tmp_path / "quality"
    both = run(module, monkeypatch, out, first, second)
    alone = run(module, monkeypatch, out, second)  # was: samples-0.pt, i.e. the first network's samples
    assert alone[str(second)] == both[str(second)]
    assert both[str(first)] != both[str(second)]

    stages = sorted((out / "stages").glob("samples-*"))
    assert len(stages) == 2
    network = module.load(str(second)).eval()
    with torch.no_grad():
        expected = sample_heun(network, standard_noise((6, 1, 28, 28), 4), 3, progress=False).images.clamp(-1, 1)
    stored = [read_value(path, STAGE_FORMAT)[0] for path in stages]
    assert any(torch.allclose(value, expected, atol=1e-6) for value in stored)

    for path in stages:
        path.write_bytes(b"not a safetensors file")
    assert run(module, monkeypatch, out, second) == alone
