"""scripts/heldout_mse.py (issue 14's fidelity table) on a tiny U-Net and a 1x8x8 .npz dataset: the stored ratios
equal a float64 loop over the held-out images, and a second run with --cache loads the closed forms' outputs
instead of recomputing them."""

import json
import sys

import numpy as np
import pytest
import torch

from denoiserlab.analysis.heldout import heldout_inputs, ratio_to_best_with_error
from denoiserlab.data import load
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.networks.build import build_denoiser
from denoiserlab.networks.checkpoint import save_checkpoint
from denoiserlab.networks.loaders import load as load_network

from repo_scripts import load_script

TINY_UNET = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], channels_per_head=8,
                 dropout=0.0)


def run_script(module, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["heldout_mse.py", *argv])
    module.main()


def optimal_loop(query: np.ndarray, train: np.ndarray, sigma: float) -> np.ndarray:
    """E[x0 | z] over the training images, float64, one query [D] at a time."""
    logits = np.array([-np.sum((query - x) ** 2) / (2 * sigma**2) for x in train])
    weights = np.exp(logits - logits.max())
    return (weights[:, None] * train).sum(0) / weights.sum()


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path / "user-cache"))
    pixels = (torch.rand(30, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    np.savez(tmp_path / "tiny.npz", train_images=pixels[:24].numpy(), test_images=pixels[24:].numpy())
    torch.manual_seed(0)
    network = build_denoiser("unet", 1, 8, TINY_UNET, training_data={"source": str(tmp_path / "tiny.npz")})
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return save_checkpoint(tmp_path / "net", network.eval())


def test_ratios_match_a_float64_loop_and_the_cache_is_reused(tiny_setup, tmp_path, monkeypatch):
    module = load_script("heldout_mse")
    argv = [str(tiny_setup), "--n", "4", "--steps", "5", "--cache", str(tmp_path / "cache")]
    run_script(module, [*argv, "--json", str(tmp_path / "first.json")], monkeypatch)
    stages = sorted((tmp_path / "cache" / "stages").glob("heldout-closed-forms-*"))
    assert len(stages) == 1
    stamp = stages[0].stat().st_mtime_ns
    run_script(module, [*argv, "--json", str(tmp_path / "second.json")], monkeypatch)
    assert stages[0].stat().st_mtime_ns == stamp  # loaded, not rewritten
    first = json.loads((tmp_path / "first.json").read_text())[str(tiny_setup)]
    second = json.loads((tmp_path / "second.json").read_text())[str(tiny_setup)]
    assert first == second

    network = load_network(str(tiny_setup)).eval()
    sigmas = edm_sigmas(5)
    test = load(str(tmp_path / "tiny.npz"), split="test").as_float(0, 4)
    train = load(str(tmp_path / "tiny.npz")).as_float().double().flatten(1).numpy()
    noisy = heldout_inputs(test, sigmas)
    for level, sigma in enumerate(sigmas.tolist()):
        with torch.no_grad():
            network_mse = (network(noisy[level], sigma).double() - test.double()).square().mean().item()
        clean = test.double().flatten(1).numpy()
        optimal = np.stack([optimal_loop(z, train, sigma) for z in noisy[level].double().flatten(1).numpy()])
        optimal_mse = np.mean((optimal - clean) ** 2)
        assert first["network"][level] == pytest.approx(network_mse, rel=1e-5)
        assert first["optimal"][level] == pytest.approx(optimal_mse, rel=1e-4)
        best = min(first["optimal"][level], first["gaussian"][level])
        assert first["ratio"][level] == pytest.approx(first["network"][level] / best, rel=1e-9)
        assert first["ratio_standard_error"][level] > 0


def test_ratio_standard_error_matches_a_bootstrap():
    """The delta-method standard error of mean(a) / mean(best reference) equals the spread of that ratio over
    bootstrap resamples of the images (a loop), to within the bootstrap's own noise."""
    generator = torch.Generator().manual_seed(0)
    network = torch.rand(3, 300, generator=generator, dtype=torch.float64) + 1
    optimal = 0.9 * network + 0.2 * torch.rand(3, 300, generator=generator, dtype=torch.float64)
    gaussian = optimal + torch.tensor([[0.05], [-0.3], [0.05]], dtype=torch.float64)  # best at the middle level
    errors = {"network": network, "optimal": optimal, "gaussian": gaussian}
    ratio, standard_error = ratio_to_best_with_error(errors, "network", ["optimal", "gaussian"])
    rng = np.random.default_rng(0)
    for level, best in enumerate((optimal, gaussian, optimal)):
        a, b = network[level].numpy(), best[level].numpy()
        assert ratio[level].item() == pytest.approx(a.mean() / b.mean(), rel=1e-12)
        resampled = []
        for _ in range(4000):
            rows = rng.integers(0, 300, 300)
            resampled.append(a[rows].mean() / b[rows].mean())
        assert standard_error[level].item() == pytest.approx(np.std(resampled), rel=0.08)


def test_sigma_range_evaluates_only_those_levels(tiny_setup, tmp_path, monkeypatch, capsys):
    module = load_script("heldout_mse")
    argv = [str(tiny_setup), "--n", "4", "--steps", "5", "--cache", str(tmp_path / "cache"), "--curve"]
    run_script(module, [*argv, "--json", str(tmp_path / "all.json")], monkeypatch)
    sigmas = edm_sigmas(5).tolist()
    low, high = sigmas[3], sigmas[1]  # the grid falls from 80: levels 1..3
    run_script(module, [*argv, "--sigma-range", str(low), str(high), "--json", str(tmp_path / "some.json")],
               monkeypatch)
    every = json.loads((tmp_path / "all.json").read_text())[str(tiny_setup)]
    some = json.loads((tmp_path / "some.json").read_text())[str(tiny_setup)]
    assert some["sigmas"] == sigmas[1:4] and "forward_end_over_peak" not in some
    for name in ("network", "optimal", "gaussian", "ratio"):
        assert some[name] == pytest.approx(every[name][1:4], rel=1e-6)
    assert some["worst_ratio"] == pytest.approx(max(every["ratio"][1:4]), rel=1e-6)
    with pytest.raises(SystemExit):
        run_script(module, [*argv, "--sigma-range", "100", "200"], monkeypatch)
    assert "no sigma of the 5-step grid" in capsys.readouterr().err


def test_heldout_source_replaces_the_test_split_and_copies_are_counted(tiny_setup, tmp_path, monkeypatch, capsys):
    module = load_script("heldout_mse")
    tiny = np.load(tmp_path / "tiny.npz")
    other = np.concatenate([tiny["train_images"][:2], tiny["test_images"]])  # 2 training images among them
    np.savez(tmp_path / "other.npz", train_images=tiny["train_images"], test_images=other)
    argv = [str(tiny_setup), "--n", "4", "--steps", "5", "--sigma-range", "1", "100"]
    run_script(module, [*argv, "--heldout-source", str(tmp_path / "other.npz"), "--json", str(tmp_path / "o.json")],
               monkeypatch)
    assert "note: 2 of the 4 held-out images are exact copies of training images" in capsys.readouterr().out
    report = json.loads((tmp_path / "o.json").read_text())[str(tiny_setup)]
    network = load_network(str(tiny_setup)).eval()
    sigmas = edm_sigmas(5)
    test = load(str(tmp_path / "other.npz"), split="test").as_float(0, 4)
    levels = [level for level, sigma in enumerate(sigmas.tolist()) if 1 <= sigma <= 100]
    noisy = heldout_inputs(test, sigmas, levels=levels)
    for row, level in enumerate(levels):
        with torch.no_grad():
            expected = (network(noisy[row], float(sigmas[level])).double() - test.double()).square().mean().item()
        assert report["network"][row] == pytest.approx(expected, rel=1e-5)


def test_curve_header_keeps_every_sigma_label_apart(tiny_setup, tmp_path, monkeypatch, capsys):
    module = load_script("heldout_mse")
    run_script(module, [str(tiny_setup), "--n", "4", "--steps", "18", "--sigma-range", "0.001", "0.1", "--curve"],
               monkeypatch)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("network"))
    labels = header.split()[1:-3]  # between "network" and "worst +- f_end/pk"
    expected = [s for s in edm_sigmas(18).tolist() if 0.001 <= s <= 0.1]
    assert len(labels) == len(expected) == 4  # 0.0599 0.0229 0.00753 0.002: the last three once ran together
    assert [float(label) for label in labels] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("option, value", [("--n", "0"), ("--n", "-3"), ("--steps", "x")])
def test_counts_below_one_are_a_usage_error(tiny_setup, monkeypatch, capsys, option, value):
    module = load_script("heldout_mse")
    with pytest.raises(SystemExit) as stopped:
        run_script(module, [str(tiny_setup), option, value], monkeypatch)
    assert stopped.value.code == 2
    assert f"argument {option}: must be a whole number >= 1, got '{value}'" in capsys.readouterr().err
