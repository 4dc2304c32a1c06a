"""Issue 13 part 2: analytical denoisers sharded over torch.distributed processes give the one-process result, and
`sample` and `train` run under torchrun (processes started here with the environment torchrun gives its workers)."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from denoiserlab.cli import main
from denoiserlab.denoisers import (
    CFDM,
    ELS,
    LS,
    DataLocality,
    GaussianMixture,
    KNNDenoiser,
    OptimalDenoiser,
    PSPCFlex,
    PSPCSquare,
)
from denoiserlab.denoisers.distributed import shard_bounds
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.loss import edm_loss

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_SECONDS = 300  # a hung rank fails the test instead of blocking the suite


def load_worker():
    """distributed_worker.py as a module, for its cases in one process."""
    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_thread_environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))


def test_shards_are_contiguous_disjoint_and_cover_the_set():
    for n_items in (2, 7, 13, 100):
        for world_size in (1, 2, 3, 7):
            if n_items < world_size:
                continue
            bounds = [shard_bounds(n_items, rank, world_size) for rank in range(world_size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n_items
            assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("build", [
    lambda train, flag: OptimalDenoiser(train, distributed=flag),
    lambda train, flag: PSPCSquare(train, 3, distributed=flag),
    lambda train, flag: PSPCFlex(train, torch.ones(1, 8, 8, dtype=torch.bool), distributed=flag),
    lambda train, flag: CFDM(train, distributed=flag),
    lambda train, flag: ELS(train, 3, distributed=flag),
    lambda train, flag: LS(train, 3, distributed=flag),
    lambda train, flag: DataLocality(train, distributed=flag),
    lambda train, flag: KNNDenoiser(train, k=2, n_random=1, distributed=flag),
    lambda train, flag: GaussianMixture(train, components=2, distributed=flag),
])
def test_distributed_needs_a_process_group_and_a_flag(build):
    train = torch.zeros(4, 1, 8, 8)
    with pytest.raises(DenoiserLabError, match="initialised torch.distributed process group"):
        build(train, True)
    with pytest.raises(DenoiserLabError, match="distributed"):
        build(train, "yes")


def test_two_gloo_processes_equal_one_process(tmp_path):
    """Every case of distributed_worker.py (optimal, PSPC-Square with an int and a schedule, PSPC-Flex, CFDM, ELS with
    both paddings, LS, DataLocality, kNN (k above a shard's size too), the Gaussian mixture by labels and k-means;
    in RAM and streamed, compiled and eager, with xflip; one sigma per sample from 0.002 to 80, and sigma = 0.002
    alone) on 13 images split 6 / 7 over two gloo processes: both ranks get the one-process result to 1e-6 (float64
    for the optimal denoiser: 1e-12), and both refuse a call whose queries differ between them. Both also receive
    rank 0's study stage value (studies.common.ranks.broadcast_value).
    """
    init_method = f"file://{tmp_path / 'rendezvous'}"
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(rank), "2", init_method, str(tmp_path)],
                              env=one_thread_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(2)]
    try:
        logs = [process.communicate(timeout=TIMEOUT_SECONDS)[0] for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    assert [process.returncode for process in ranks] == [0, 0], logs
    expected = load_worker().outputs(distributed=False)
    for rank in range(2):
        with np.load(tmp_path / f"rank-{rank}.npz") as saved:
            assert bool(saved["refused"]) and bool(saved["broadcast"])
            assert sorted(name for name in saved.files if name not in ("refused", "broadcast")) == sorted(expected)
            for name, reference in expected.items():
                tolerance = 1e-12 if name.startswith("optimal") else 1e-6
                np.testing.assert_allclose(saved[name], reference, rtol=0, atol=tolerance, err_msg=name)


# ------------------------------------------------------------------------------------ the command line under torchrun


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_as_torchrun(argv_of_rank: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`python -m denoiserlab argv` for each rank's argv, in one process each, with the environment torchrun gives
    its workers (torchrun gives every rank the same argv)."""
    port, world_size = free_port(), len(argv_of_rank)
    ranks = [subprocess.Popen([sys.executable, "-m", "denoiserlab", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(one_thread_environment(), RANK=str(rank), LOCAL_RANK=str(rank),
                                       WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for rank, argv in enumerate(argv_of_rank)]
    try:
        outputs = [process.communicate(timeout=TIMEOUT_SECONDS) for process in ranks]
        return [subprocess.CompletedProcess(process.args, process.returncode, *output)
                for process, output in zip(ranks, outputs)]
    finally:
        for process in ranks:
            process.kill()


def saved_samples(folder: Path) -> np.ndarray:
    with np.load(folder / "samples.npz") as saved:
        return saved["images"]


@pytest.mark.parametrize("source", [["--denoiser", "optimal", "--steps", "3"],
                                    ["--network", "shipped:mixer-small-fashion-mnist", "--steps", "1"]])
def test_sample_under_torchrun_writes_the_one_process_samples(tmp_path, source):
    """2 ranks: the optimal denoiser shards 101 training images (50 / 51), the network samples 2 and 3 of the 5
    images; rank 0 alone writes, and the samples equal those of one process. One step for the network: a float32
    network on batches of 2 and 3 differs from one batch of 5 by ~4e-7 a call, which later steps would amplify."""
    argv = ["sample", *source, "--n", "5", "--subset", "101"]
    ranks = run_as_torchrun([[*argv, "--out", str(tmp_path / "two")]] * 2)
    assert [rank.returncode for rank in ranks] == [0, 0], [rank.stderr for rank in ranks]
    assert "wrote" in ranks[0].stdout and "wrote" not in ranks[1].stdout
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    np.testing.assert_allclose(saved_samples(tmp_path / "two"), saved_samples(tmp_path / "one"), rtol=0, atol=1e-5)


def test_heatmaps_under_torchrun_share_the_levels_and_write_the_one_process_file(tmp_path):
    """2 ranks split a 3-level grid round-robin (levels 0 and 2, level 1) into one .parts folder; the rank that
    finishes last writes the file, equal to the one-process file."""
    from denoiserlab.networks import save_checkpoint
    from denoiserlab.networks.build import build_denoiser
    from denoiserlab.studies.locality.heatmaps import read_heatmaps_file

    torch.manual_seed(0)
    network = build_denoiser("mixer", 1, 28, dict(hidden_size=16, depth=1, patch_size=7),
                             training_data={"source": "fashion-mnist", "subset": 12, "seed": 0})
    path = save_checkpoint(tmp_path / "net", network.eval())
    argv = ["heatmaps", "--network", str(path), "--steps", "3", "--n-samples", "2", "--batch-size", "2",
            "--products-per-pass", "196"]
    ranks = run_as_torchrun([[*argv, "--out", str(tmp_path / "two.npz")]] * 2)
    assert [rank.returncode for rank in ranks] == [0, 0], [rank.stderr for rank in ranks]
    assert sum("heatmaps [3, H, W, H, W]" in rank.stdout for rank in ranks) >= 1
    stored = sorted(path.name.split("-")[1] for path in (tmp_path / "two.npz.parts").rglob("level-*"))
    assert stored == ["00", "01", "02"]
    assert main([*argv, "--out", str(tmp_path / "one.npz")]) == 0
    two, one = read_heatmaps_file(tmp_path / "two.npz"), read_heatmaps_file(tmp_path / "one.npz")
    torch.testing.assert_close(two["same_channel"], one["same_channel"], rtol=0, atol=0)


def test_a_failing_rank_ends_the_run_instead_of_hanging(tmp_path):
    """Rank 1 cannot read its data, so it stops with its one error line; rank 0 then fails at its first collective
    instead of waiting: both end with an error long before any timeout."""
    np.save(tmp_path / "images.npy", np.zeros((4, 1, 8, 8), dtype=np.uint8))
    argv = ["sample", "--n", "2", "--steps", "2", "--out", str(tmp_path / "out"), "--data"]
    ranks = run_as_torchrun([[*argv, str(tmp_path / "images.npy")], [*argv, str(tmp_path / "missing.npy")]])
    assert ranks[1].returncode == 2 and "denoiserlab: error: rank 1:" in ranks[1].stderr
    assert ranks[0].returncode != 0 and not (tmp_path / "out").exists()


def test_commands_that_do_not_run_under_torchrun_say_so(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["data", "info", "fashion-mnist"]) == 2
    assert "denoiserlab: error: rank 0: denoiserlab data does not run under torchrun" in capsys.readouterr().err


TINY_TRAIN = ["train", "--subset", "12", "--batch-size", "5", "--arch", "mixer", "--network", "hidden_size=8",
              "--network", "depth=1", "--network", "patch_size=7", "--lr", "0.01", "--lr-rampup-kimg", "0",
              "--checkpoint-kimg", "0.005", "--log-kimg", "0.005", "--sample-count", "3", "--sample-steps", "1",
              "--device", "cpu", "--no-progress"]


def test_the_shares_of_the_ranks_make_up_the_one_process_batch_loss():
    """edm_loss draws sigma and eps for the whole batch, whatever share (rows) it computes."""
    x0 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def shrink(x, sigma):  # a denoiser with per-sample sigma
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    whole = edm_loss(shrink, x0, torch.Generator().manual_seed(1))
    shares = [edm_loss(shrink, x0, torch.Generator().manual_seed(1), rows=slice(*shard_bounds(5, rank, 2)))
              for rank in range(2)]
    assert [len(share) for share in shares] == [2, 3]
    torch.testing.assert_close(torch.cat(shares), whole, rtol=0, atol=0)


def training_state(folder: Path) -> dict:
    return torch.load(folder / "training-state.pt", map_location="cpu", weights_only=True)


def test_train_under_torchrun_takes_the_one_process_step_and_resumes_in_one_process(tmp_path):
    """2 ranks take one step on a batch of 5 images (2 + 3 per rank, in micro-batches of 2: rank 1 adds the
    gradients of 2 + 1 images and all-reduces once, DistributedDataParallel's no_sync), rank 0 writing the
    checkpoint; one process resumes that run for a second step (in one pass: the micro-batch size may change on
    resume). Its state equals two steps in one process: the weights, Adam's moments (its first moment holds both
    steps' gradients) and the logged losses."""
    two, one = tmp_path / "two", tmp_path / "one"
    ranks = run_as_torchrun([[*TINY_TRAIN, "--kimg", "0.005", "--micro-batch-size", "2", "--out", str(two)]] * 2)
    assert [rank.returncode for rank in ranks] == [0, 0], [rank.stderr for rank in ranks]
    assert "latest network" in ranks[0].stdout and "latest network" not in ranks[1].stdout
    assert training_state(two)["step"] == 1 and (two / "network-000000" / "model.safetensors").is_file()
    assert main([*TINY_TRAIN, "--kimg", "0.010", "--out", str(two)]) == 0
    assert main([*TINY_TRAIN, "--kimg", "0.010", "--out", str(one)]) == 0
    resumed, expected = training_state(two), training_state(one)
    assert resumed["step"] == expected["step"] == 2
    torch.testing.assert_close(resumed["model"], expected["model"], rtol=0, atol=1e-6)
    for moments, reference in zip(resumed["optimizer"]["state"].values(), expected["optimizer"]["state"].values()):
        torch.testing.assert_close(moments, reference, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose([row[2] for row in resumed["history"]], [row[2] for row in expected["history"]],
                               rtol=1e-6)
