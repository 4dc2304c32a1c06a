"""Issue 13 part 2: analytical denoisers sharded over torch.distributed processes give the one-process result."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from denoiserlab.denoisers import OptimalDenoiser, PSPCFlex, PSPCSquare
from denoiserlab.denoisers.distributed import shard_bounds
from denoiserlab.errors import DenoiserLabError

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_SECONDS = 120  # a hung rank fails the test instead of blocking the suite


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
])
def test_distributed_needs_a_process_group_and_a_flag(build):
    train = torch.zeros(4, 1, 8, 8)
    with pytest.raises(DenoiserLabError, match="initialised torch.distributed process group"):
        build(train, True)
    with pytest.raises(DenoiserLabError, match="distributed"):
        build(train, "yes")


def test_two_gloo_processes_equal_one_process(tmp_path):
    """Every case of distributed_worker.py (optimal, PSPC-Square with an int and a schedule, PSPC-Flex; in RAM and
    streamed, compiled and eager, with xflip; one sigma per sample from 0.002 to 80, and sigma = 0.002 alone) on 13
    images split 6 / 7 over two gloo processes: both ranks get the one-process result to 1e-6 (float64 for the
    optimal denoiser: 1e-12), and both refuse a call whose queries differ between them."""
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
            assert bool(saved["refused"])
            assert sorted(name for name in saved.files if name != "refused") == sorted(expected)
            for name, reference in expected.items():
                tolerance = 1e-12 if name.startswith("optimal") else 1e-6
                np.testing.assert_allclose(saved[name], reference, rtol=0, atol=tolerance, err_msg=name)
