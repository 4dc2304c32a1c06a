"""Analytical denoisers over the processes of torch.distributed: one shard of the training set per process, and the
exact merge of their partial softmax sums.

Rank r of W holds the stored images [r N // W, (r + 1) N // W) (with xflip, also their flips). A call is collective:
every rank passes the same queries and noise levels, sums over its own shard, and `merge_nearest_sums_across` gives
every rank the one-process result. Each rank's partial state is a smallest distance m_r and sums taken relative to
it, s_r = sum_n exp(-(d_n - m_r) g) (g = 1 / (2 sigma^2)); the merge is an all_reduce MIN giving m = min_r m_r, then
one all_reduce SUM of the rescaled float64 sums s_r exp(-(m_r - m) g). Every exponent is <= 0, so no sigma
overflows, and the result equals the one-process sums up to the order of float64 additions (as
`streaming_softmax.merge_nearest_sums` does between chunks of one process).

Any backend works: tensors stay on their device (gloo for CPU tensors, NCCL for CUDA ones).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from denoiserlab.denoisers.training_set import TrainingImages
from denoiserlab.errors import DenoiserLabError

# Queries that differ between ranks by more than this (relative, in their float64 sums) are refused.
SAME_QUERIES_TOLERANCE = 1e-9


def require_process_group() -> None:
    """Refuse distributed=True when torch.distributed has no initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DenoiserLabError("distributed=True needs an initialised torch.distributed process group: run under "
                               "torchrun, or call torch.distributed.init_process_group first")


def shard_bounds(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop) of rank's contiguous share of n_items: [rank n // W, (rank + 1) n // W)."""
    return rank * n_items // world_size, (rank + 1) * n_items // world_size


def shard(source: TrainingImages) -> TrainingImages:
    """This rank's contiguous shard of the stored training images (a view: nothing is read), flips included as in
    `source`. Every rank must hold at least one image."""
    require_process_group()
    n_stored, world_size = source.storage.shape[0], dist.get_world_size()
    if n_stored < world_size:
        raise DenoiserLabError(f"a training set of {n_stored} images cannot be split over {world_size} processes; "
                               "use fewer processes or more images")
    start, stop = shard_bounds(n_stored, dist.get_rank(), world_size)
    return TrainingImages(source.storage[start:stop], source.xflip)


def shard_indices(n_stored: int, xflip: bool, rank: int, world_size: int) -> Tensor:
    """Indices int64 [n_r] in the whole training set (N stored images, then their N flips with xflip) of the images
    of rank's shard, in the shard's own order (its stored images, then their flips)."""
    start, stop = shard_bounds(n_stored, rank, world_size)
    own = torch.arange(start, stop)
    return torch.cat([own, own + n_stored]) if xflip else own


def gather_shards(local: Tensor, n_stored: int, xflip: bool) -> Tensor:
    """Per-image values of every rank's shard (local: [n_r, ...] in this shard's order) at their images' indices in
    the whole set: [N, ...] (2N with xflip), the same on every rank. One all_gather."""
    world_size = dist.get_world_size()
    indices = [shard_indices(n_stored, xflip, rank, world_size) for rank in range(world_size)]
    padded = local.new_zeros((max(len(index) for index in indices), *local.shape[1:]))
    padded[: len(local)] = local
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded)
    whole = local.new_empty((sum(len(index) for index in indices), *local.shape[1:]))
    for piece, index in zip(pieces, indices):
        whole[index.to(whole.device)] = piece[: len(index)]
    return whole


def check_same_queries(x: Tensor, sigma: Tensor) -> None:
    """Refuse a collective call whose queries x [B, C, H, W] or noise levels sigma [B] differ between ranks (batch
    size, or float64 sums beyond SAME_QUERIES_TOLERANCE); every rank raises alike. One small all_reduce."""
    batch = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
    summary = torch.stack([batch, x.double().sum(), sigma.double().sum().to(x.device)])
    extremes = torch.cat([summary, -summary])  # max of -v is -min of v: both from one all_reduce MAX
    dist.all_reduce(extremes, dist.ReduceOp.MAX)
    largest, smallest = extremes[:3], -extremes[3:]
    if ((largest - smallest) > SAME_QUERIES_TOLERANCE * (1 + largest.abs())).any():
        raise DenoiserLabError("a distributed denoiser was called with different queries on different ranks (batch"
                               f" sizes {int(smallest[0])}..{int(largest[0])}); every rank must pass the same x and "
                               "sigma")


def merge_nearest_sums_across(nearest: Tensor, inv_two_var: Tensor, *sums: Tensor) -> tuple[Tensor, ...]:
    """The union over ranks of partial softmax states (see the module docstring); returns (m, *sums) merged.

    nearest: this rank's smallest distances m_r, any float dtype and shape S (e.g. [B, 1] or [B, K]); inv_two_var:
    g as float64, broadcastable to S; sums: float64 tensors taken relative to m_r whose leading dims broadcast
    against S (normalisers [*S], numerators [B, D] for S = [B, 1]). Two all_reduces.
    """
    merged_nearest = nearest.clone()
    dist.all_reduce(merged_nearest, dist.ReduceOp.MIN)
    rescale = torch.exp(-(nearest - merged_nearest).double() * inv_two_var)  # [*S], in [0, 1]
    rescaled = [rescale * part for part in sums]
    flat = torch.cat([part.flatten() for part in rescaled])  # one all_reduce for all sums
    dist.all_reduce(flat)
    pieces = flat.split([part.numel() for part in rescaled])
    return merged_nearest, *(piece.reshape(part.shape) for piece, part in zip(pieces, rescaled))


def sum_across(tensor: Tensor) -> Tensor:
    """The sum over ranks of `tensor` (a new tensor; the argument is left as it is). One all_reduce."""
    total = tensor.clone()
    dist.all_reduce(total)
    return total
