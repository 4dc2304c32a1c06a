"""GaussianDenoiser(distributed=True): each of two gloo processes reads one shard and the all_reduced float64 sums give
every rank the one-process mean, eigenvalues and outputs. The ranks run this file as a script:
`python test_distributed_gaussian.py RANK WORLD_SIZE INIT OUT` joins a gloo group at INIT (a file:// URL) and writes
its results to OUT/rank-RANK.npz."""

import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from denoiserlab.data import ImageSet
from denoiserlab.denoisers import GaussianDenoiser
from denoiserlab.denoisers.options import check_denoiser_options
from denoiserlab.errors import DenoiserLabError

N_TRAIN = 13  # odd: the shards differ in size (6 and 7 images)
SIGMAS = torch.tensor([0.002, 0.05, 0.4, 3.0, 80.0], dtype=torch.float64)  # one per query
TIMEOUT_SECONDS = 300  # a hung rank fails the test instead of blocking the suite


def training_sets() -> tuple[torch.Tensor, ImageSet]:
    """The same N_TRAIN images 1x6x5 as a float tensor in [-1, 1] and as a uint8 ImageSet (read in chunks)."""
    pixels = torch.randint(0, 256, (N_TRAIN, 1, 6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return pixels.float() / 127.5 - 1, ImageSet(pixels, None, "random")


def results(distributed: bool) -> dict[str, np.ndarray]:
    """name -> float64 array: mean, eigenvalues, outputs at SIGMAS and the linear map at sigma = 0.3, for a float
    tensor, a uint8 set with xflip and rank 7, and cache=True (see `main` for what the ranks' caches hold)."""
    floats, stored = training_sets()
    x = torch.randn(len(SIGMAS), 1, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cases = {"float": GaussianDenoiser(floats, distributed=distributed),
             "stream_xflip_rank": GaussianDenoiser(stored, xflip=True, rank=7, distributed=distributed),
             "cached": GaussianDenoiser(floats, cache=True, distributed=distributed)}
    out = {}
    for name, den in cases.items():
        out.update({f"{name}/mean": den.mean_.numpy(), f"{name}/eigvals": den.eigvals_.numpy(),
                    f"{name}/outputs": den(x, SIGMAS).numpy(), f"{name}/linear_map": den.linear_map(0.3).numpy()})
    return out


def test_two_gloo_processes_equal_one_process(tmp_path, monkeypatch):
    init_method = f"file://{tmp_path / 'rendezvous'}"
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    ranks = [subprocess.Popen([sys.executable, __file__, str(rank), "2", init_method, str(tmp_path)],
                              env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    try:
        logs = [process.communicate(timeout=TIMEOUT_SECONDS)[0] for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    assert [process.returncode for process in ranks] == [0, 0], logs
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path / "one-process-cache"))
    expected = results(distributed=False)
    for rank in range(2):
        with np.load(tmp_path / f"rank-{rank}.npz") as saved:
            assert sorted(saved.files) == sorted(expected)
            for name, reference in expected.items():
                np.testing.assert_allclose(saved[name], reference, rtol=0, atol=1e-6, err_msg=f"rank {rank} {name}")
    # each rank wrote the entry it computed: both times on rank 1 (its file removed in between), once on rank 0
    assert [len(list((tmp_path / f"cache-{rank}" / "gaussian").glob("*.safetensors"))) for rank in range(2)] == [1, 1]


def test_distributed_needs_a_process_group_and_a_flag():
    train = torch.zeros(4, 1, 3, 3)
    with pytest.raises(DenoiserLabError, match="initialised torch.distributed process group"):
        GaussianDenoiser(train, distributed=True)
    with pytest.raises(DenoiserLabError, match="distributed"):
        check_denoiser_options("gaussian", {"distributed": "yes"})


def main(rank: int, world_size: int, init_method: str, out: str) -> None:
    """One rank: the results twice, each rank with its own cache folder. The first run writes an entry on both
    ranks; rank 1 then loses its entry, so in the second run rank 0 finds the entry and rank 1 does not: both must
    compute it again together (the covariance pass is collective), not hang."""
    torch.set_num_threads(1)
    os.environ["DENOISERLAB_CACHE"] = f"{out}/cache-{rank}"
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    results(distributed=True)
    if rank == 1:
        for path in Path(f"{out}/cache-1/gaussian").glob("*.safetensors"):
            path.unlink()
    np.savez(f"{out}/rank-{rank}.npz", **results(distributed=True))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
