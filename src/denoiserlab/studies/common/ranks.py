"""Both studies under torchrun (`torchrun --nproc-per-node K -m denoiserlab study ...`): every rank runs the same
study code on the same inputs, and three things make the K processes one study.

- Stages (`StageCache.run`): rank 0 alone reads and writes the stage files; whether a stage is finished is rank 0's
  answer, and a stage's value, loaded or computed, is rank 0's value broadcast to every rank (`broadcast_value`:
  a JSON tree plus raw tensors, no pickle). So every rank continues from identical values, even where a GPU's
  kernels are not deterministic, and other machines need no copy of the output folder.
- Networks run data-parallel over the rows of each batch (`RowParallelNetwork`): each rank evaluates its
  contiguous share and every rank receives the whole batch's outputs.
- Analytical denoisers shard their training set (`distributed=True`, see `denoiserlab.denoisers.distributed`):
  each rank holds one shard and an exact log-sum-exp merge gives every rank the one-process posterior.

Only rank 0 writes outputs (results.json, figures, report, resolved config) and shows progress. Without a process
group every function here is the identity and the studies run as one process.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from denoiserlab.process_group import in_process_group, is_main_process, parallel_over_rows

WIRE_DTYPES = {"float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool"}


def broadcast_bytes(payload: bytes | None) -> bytes:
    """Rank 0's bytes on every rank (`payload` is ignored elsewhere)."""
    length = torch.tensor([len(payload) if is_main_process() else 0], dtype=torch.int64)
    dist.broadcast(length, 0)
    if not int(length):
        return b""
    buffer = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if is_main_process()
              else torch.empty(int(length), dtype=torch.uint8))
    dist.broadcast(buffer, 0)
    return buffer.numpy().tobytes()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's flag on every rank."""
    return json.loads(broadcast_bytes(json.dumps(bool(flag)).encode() if is_main_process() else None))


def broadcast_value(value: Any) -> Any:
    """Rank 0's value on every rank, as the stage cache would read it back: tensors on the CPU, numpy arrays,
    numbers, strings, None and dicts / lists / tuples of them (`studies.common.cache.encode_value`). Every rank
    gets a decoded copy, rank 0 included, so all ranks continue from the same objects. Without a group, `value`."""
    from denoiserlab.studies.common.cache import decode_value, encode_value

    if not in_process_group():
        return value
    tensors: dict[str, Tensor] = {}
    header = None
    if is_main_process():
        tree = encode_value(value, tensors)
        listing = [[name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]
                   for name, tensor in tensors.items()]
        header = json.dumps({"tree": tree, "tensors": listing}).encode()
    header = json.loads(broadcast_bytes(header))
    received = {}
    for name, dtype, shape in header["tensors"]:
        if dtype not in WIRE_DTYPES:
            raise TypeError(f"cannot broadcast a {dtype} tensor")
        tensor = tensors[name] if is_main_process() else torch.empty(shape, dtype=getattr(torch, dtype))
        if tensor.numel():
            dist.broadcast(tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor, 0)
        received[name] = tensor
    return decode_value(header["tree"], received)


class RowParallelNetwork(nn.Module):
    """A network evaluated data-parallel over the ranks of the process group: den(x [B, C, H, W], sigma float or
    [B]) runs each rank's contiguous share of the B rows, and every rank gets all B outputs (all_gather). Other
    attributes (img_channels, training_data, ...) are the wrapped network's. Not differentiable through the
    gather: gradient heatmaps take `unwrapped(module)`."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, sigma) -> Tensor:
        if isinstance(sigma, Tensor) and sigma.ndim == 1 and sigma.shape[0] == x.shape[0]:
            return parallel_over_rows(lambda rows, sigmas: self.network(rows, sigmas), x, sigma)
        return parallel_over_rows(lambda rows: self.network(rows, sigma), x)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("network"), name)


def row_parallel(network: nn.Module) -> nn.Module:
    """`network` as the ranks evaluate it in a study: RowParallelNetwork in a process group, else itself."""
    return RowParallelNetwork(network) if in_process_group() else network


def unwrapped(network: nn.Module) -> nn.Module:
    """The network a RowParallelNetwork wraps (for autograd, e.g. gradient heatmaps), or `network` itself."""
    return network.network if isinstance(network, RowParallelNetwork) else network
