"""Sharding over processes (issue 13 part 2): the optimal denoiser and PSPC-Square in 1 process against K gloo
processes (distributed=True), one thread each, on a memory-mapped uint8 training set.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed.py              # N = 200,000 of 1x28x28, K = 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed.py --n 20000    # a quick run

Writes a synthetic uint8 .npy of N images of 1x28x28 (as bench_scale.py) to a temporary folder and times, with
B = 10 queries (one sigma each, 0.002 .. 80) and --storage (default "stream": the same path in 1 and K processes,
whose shards would otherwise fall on either side of storage="auto"'s threshold): one process of this script, then K
processes started by it (rank mode: --rank), joined in a gloo group through a file:// rendezvous in the same folder,
each holding 1/K of the set. Every rank times the same calls after a barrier (a warm-up call first); the time of a
call is rank 0's, which ends with the last all_reduce. Prints the seconds per call (best of --calls), the ratio
1-process / K-process time, and the largest difference between the outputs. Prints the load average before and
after: other jobs on the machine take cores from the K processes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bench_scale import queries, write_synthetic_npy  # same folder: the synthetic set and queries of bench_scale
from denoiserlab import data
from denoiserlab.denoisers import OptimalDenoiser, PSPCSquare

METHODS = ("optimal", "pspc_square s=5")
RANK_TIMEOUT_SECONDS = 1800  # a rank that hangs ends the benchmark with an error


def build(method: str, train: data.ImageSet, storage: str, distributed: bool):
    """The denoiser `method` (one of METHODS) on `train`."""
    if method == "optimal":
        return OptimalDenoiser(train, storage=storage, distributed=distributed)
    return PSPCSquare(train, 5, storage=storage, distributed=distributed)


def best_call_seconds(denoiser, x: torch.Tensor, sigma: torch.Tensor, calls: int) -> tuple[torch.Tensor, float, float]:
    """(output, best wall seconds, best CPU seconds of this process) of `calls` timed calls after one warm-up call;
    in a process group every rank starts each call together (barrier)."""
    out = denoiser(x, sigma)
    best_wall = best_cpu = float("inf")
    for _ in range(calls):
        if dist.is_initialized():
            dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        out = denoiser(x, sigma)
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return out, best_wall, best_cpu


def time_methods(train: data.ImageSet, storage: str, calls: int, distributed: bool) -> dict[str, np.ndarray]:
    """For each method: its output [B, 1, 28, 28] and best wall and CPU seconds per call, as arrays keyed name,
    name/seconds and name/cpu_seconds."""
    x, sigma = queries(train)
    results = {}
    for method in METHODS:
        out, wall, cpu = best_call_seconds(build(method, train, storage, distributed), x, sigma, calls)
        results[method], results[f"{method}/seconds"], results[f"{method}/cpu_seconds"] = out.numpy(), wall, cpu
    return results


def run_rank(args: argparse.Namespace) -> None:
    """Rank mode: join the group, time every method on this rank's shard, write this rank's results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.folder}/rendezvous", rank=args.rank,
                            world_size=args.processes, timeout=datetime.timedelta(seconds=RANK_TIMEOUT_SECONDS))
    results = time_methods(data.load(Path(args.folder) / "images.npy"), args.storage, args.calls, distributed=True)
    np.savez(Path(args.folder) / f"rank-{args.rank}.npz", **results)
    dist.destroy_process_group()


def run_ranks(args: argparse.Namespace, folder: str) -> list[dict[str, np.ndarray]]:
    """Start the K rank processes of this script on `folder`, wait for them, and read every rank's results."""
    common = ["--processes", str(args.processes), "--storage", args.storage, "--calls", str(args.calls),
              "--folder", folder]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, __file__, "--rank", str(rank), *common], env=environment)
             for rank in range(args.processes)]
    try:
        codes = [process.wait(timeout=RANK_TIMEOUT_SECONDS) for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    if any(codes):
        raise SystemExit(f"a rank failed: exit codes {codes}")
    ranks = []
    for rank in range(args.processes):
        with np.load(Path(folder) / f"rank-{rank}.npz") as saved:
            ranks.append({name: saved[name] for name in saved.files})
    return ranks


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="training images (default 200,000)")
    parser.add_argument("--processes", type=int, default=2, help="K, the gloo processes (default 2)")
    parser.add_argument("--storage", default="stream", choices=("auto", "ram", "stream"),
                        help="the denoisers' storage option (default stream)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per method, best reported (default 3)")
    parser.add_argument("--dir", default=None, help="folder for the temporary .npy (default: the system's)")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)  # rank mode, started by main
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)  # rank mode: the temporary folder
    args = parser.parse_args()
    if args.rank is not None:
        return run_rank(args)
    torch.set_num_threads(1)
    print(f"N = {args.n:,} images of 1x28x28, B = 10, storage = {args.storage}, 1 thread per process, "
          f"{os.cpu_count()} cores; load average {load_average()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        write_synthetic_npy(Path(folder) / "images.npy", args.n)
        one = time_methods(data.load(Path(folder) / "images.npy"), args.storage, args.calls, distributed=False)
        start = time.perf_counter()
        several = run_ranks(args, folder)
        print(f"{args.processes} processes ran in {time.perf_counter() - start:.1f} s (start-up included)")
    for method in METHODS:
        wall_one, wall_several = float(one[f"{method}/seconds"]), float(several[0][f"{method}/seconds"])
        cpu_several = max(float(rank[f"{method}/cpu_seconds"]) for rank in several)
        difference = max(np.abs(one[method] - rank[method]).max() for rank in several)
        print(f"{method:16s} wall: 1 process {wall_one:7.3f} s, {args.processes} processes {wall_several:7.3f} s, "
              f"ratio {wall_one / wall_several:5.2f}x;  CPU per process: {float(one[f'{method}/cpu_seconds']):7.3f} s"
              f" vs {cpu_several:7.3f} s (busiest rank);  max |difference| over ranks {difference:.2e}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
