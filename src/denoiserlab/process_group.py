"""The command line under torchrun (`torchrun --nproc-per-node K -m denoiserlab ...`): joining the process group that
torchrun describes in the environment, and the few collective helpers the commands need.

torchrun starts K copies of the command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Each
joins one group: gloo for CPU tensors, plus NCCL for CUDA tensors when this PyTorch build has CUDA. Collectives time
out after COLLECTIVE_TIMEOUT_SECONDS, so a rank that crashed or hangs ends the run with an error, not a hang
(a crashed rank usually ends it at once: its peers' connections close). Only rank 0 writes outputs.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from denoiserlab.denoisers.distributed import shard_bounds, sum_across
from denoiserlab.errors import DenoiserLabError

# A collective waits at most this long for the other ranks (torch's default is 30 min): far longer than what one rank
# does alone (rank 0 writing outputs), and every rank does the same computation between collectives.
COLLECTIVE_TIMEOUT_SECONDS = 600
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or a launcher like it) started: RANK and WORLD_SIZE
    are in the environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def joined_from_environment() -> Iterator[None]:
    """Join the process group of TORCHRUN_VARIABLES for the duration of the block; leave it afterwards."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DenoiserLabError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} are not: start the processes "
                               "with torchrun, or set all of " + ", ".join(TORCHRUN_VARIABLES))
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
    try:
        yield
    finally:
        dist.destroy_process_group()


def in_process_group() -> bool:
    """Whether a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0 of the group, or the only process: the one that writes outputs and shows progress."""
    return not in_process_group() or dist.get_rank() == 0


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if in_process_group() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if in_process_group() else 1


def local_rank() -> int:
    """This process's index on its machine, as torchrun numbers them."""
    return int(os.environ.get("LOCAL_RANK", 0))


def rank_device(device: str) -> str:
    """The device this rank computes on: in a process group a bare "cuda" is this rank's GPU, cuda:LOCAL_RANK (one
    GPU per process); every other name as given."""
    if device == "cuda" and in_process_group():
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return device


def rank_rows(n_rows: int) -> slice:
    """This rank's contiguous share of n_rows (`shard_bounds`; all of them without a group)."""
    if not in_process_group():
        return slice(0, n_rows)
    return slice(*shard_bounds(n_rows, dist.get_rank(), dist.get_world_size()))


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The sum of `tensor` over the ranks (itself without a group)."""
    return sum_across(tensor) if in_process_group() else tensor


def parallel_over_rows(function: Callable[..., Tensor], rows: Tensor, *per_row: Tensor) -> Tensor:
    """function(rows, *per_row) computed data-parallel: each rank maps its contiguous share of the rows [n, ...]
    (`shard_bounds`; possibly none), with the same share of every per_row tensor [n, ...] (e.g. one sigma per row),
    and every rank gets the concatenation [n, ...]. function must return a tensor of the rows' shape, dtype and
    device (a sampler: noise -> images). Without a group, simply function(rows, *per_row)."""
    if not in_process_group():
        return function(rows, *per_row)
    size, n_rows, mine = dist.get_world_size(), rows.shape[0], rank_rows(rows.shape[0])
    padded = rows.new_zeros(-(-n_rows // size), *rows.shape[1:])  # all_gather takes equal shapes
    if mine.stop > mine.start:
        padded[: mine.stop - mine.start] = function(rows[mine], *(values[mine] for values in per_row))
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    bounds = [shard_bounds(n_rows, rank, size) for rank in range(size)]
    return torch.cat([piece[: stop - start] for piece, (start, stop) in zip(pieces, bounds)])
