"""The command line: each command runs end to end on small data; bad input ends in one line and exit code 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from denoiserlab.cli import main
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_device


def test_data_info_prints_counts_and_writes_grid(tmp_path, capsys):
    assert main(["data", "info", "fashion-mnist", "--split", "test", "--out", str(tmp_path), "--n", "8"]) == 0
    out = capsys.readouterr().out
    assert "1000" in out and "1 x 28 x 28" in out
    assert (tmp_path / "fashion-mnist-test-examples.png").is_file()


@pytest.mark.parametrize("denoiser,extra", [("optimal", []), ("gaussian", ["--option", "rank=20"])])
def test_sample_writes_png_and_npz(tmp_path, denoiser, extra):
    args = ["sample", "--denoiser", denoiser, "--subset", "200", "--n", "3", "--steps", "4", "--out", str(tmp_path)]
    assert main(args + extra) == 0
    archive = np.load(tmp_path / "samples.npz")
    assert archive["images"].shape == (3, 1, 28, 28) and archive["uint8"].dtype == np.uint8
    assert json.loads(str(archive["metadata"]))["denoiser"] == denoiser
    assert (tmp_path / "samples.png").is_file()


def test_same_seed_gives_same_samples(tmp_path):
    for name in ("a", "b"):
        main(["sample", "--subset", "100", "--n", "2", "--steps", "3", "--seed", "5", "--out", str(tmp_path / name)])
    assert np.array_equal(np.load(tmp_path / "a/samples.npz")["images"], np.load(tmp_path / "b/samples.npz")["images"])


def test_demo_runs_small(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--n", "2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["nearest_neighbour"]["optimal"] < 1e-3  # the optimal denoiser reproduces training images
    assert results["nearest_neighbour"]["gaussian"] > 1.0
    assert results["nearest_neighbour"]["pspc_square"] > 1.0  # PSPC composes patches: no training-set copies
    assert results["nearest_neighbour"]["unet-small"] > 1.0  # the shipped network generalizes
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "nearest_neighbour.png").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["data", "info", "no-such-dataset"], "unknown dataset"),
        (["sample", "--n", "0", "--out", "x"], "--n"),
        (["sample", "--option", "rank", "--out", "x"], "KEY=VALUE"),
        (["sample", "--denoiser", "gaussian", "--option", "bogus=1", "--subset", "10", "--out", "x"], "unknown option"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_sample_pspc_square_with_cifar10_schedule(tmp_path):
    args = ["sample", "--denoiser", "pspc_square", "--schedule", "cifar10", "--subset", "100", "--n", "2",
            "--steps", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    assert np.load(tmp_path / "samples.npz")["images"].shape == (2, 1, 28, 28)


def test_sample_pspc_flex_with_heatmap_file(tmp_path):
    import torch

    heatmap = torch.rand(28, 28, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.save(heatmap, tmp_path / "heatmap.pt")
    args = ["sample", "--denoiser", "pspc_flex", "--masks", str(tmp_path / "heatmap.pt"), "--lam", "0.5",
            "--subset", "50", "--n", "2", "--steps", "3", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert np.load(tmp_path / "out/samples.npz")["images"].shape == (2, 1, 28, 28)


def test_sample_pspc_square_needs_a_patch_size(capsys):
    assert main(["sample", "--denoiser", "pspc_square", "--subset", "10", "--out", "x"]) == 2
    assert "--patch-size" in capsys.readouterr().err


def run_module(args: list[str], folder) -> subprocess.CompletedProcess:
    """`python -m denoiserlab ARGS` in `folder`, in a process of its own (as torchrun would start it)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "DENOISERLAB_CACHE": str(folder / "user-cache")}
    return subprocess.run([sys.executable, "-m", "denoiserlab", *args], cwd=folder, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_python_dash_m_runs_the_command_line(tmp_path):
    done = run_module(["sample", "--subset", "10", "--n", "1", "--steps", "1", "--out", "out"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "samples.npz").is_file()
    refused = run_module(["sample", "--device", "cuda:999", "--subset", "10", "--out", "refused"], tmp_path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert lines[0].startswith("denoiserlab: error: --device 'cuda:999': ")
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "", None, 0])
def test_device_names_outside_cpu_cuda_cuda_n_are_refused(name):
    with pytest.raises(DenoiserLabError, match=r"--device must be 'cpu', 'cuda' or 'cuda:N'"):
        check_device(name)


def test_cuda_devices_this_machine_lacks_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(DenoiserLabError, match=r"--device 'cuda': CUDA is not available on this machine"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DenoiserLabError, match=r"'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 .. cuda:1"):
        check_device("cuda:2")


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_sample_on_cuda_matches_cpu(tmp_path):
    args = ["sample", "--subset", "100", "--n", "2", "--steps", "4", "--seed", "3"]
    for device in ("cpu", "cuda"):
        assert main(args + ["--device", device, "--out", str(tmp_path / device)]) == 0
    images = {device: np.load(tmp_path / device / "samples.npz")["images"] for device in ("cpu", "cuda")}
    assert np.abs(images["cuda"] - images["cpu"]).max() < 1e-4
