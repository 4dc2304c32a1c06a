"""Seconds per noisy image z of a network's gradient heatmaps on a CPU for several (batch size, products per pass)
chunkings, against the chunking the heatmaps command used before (8 z x 64 products per vmapped pass), in float32 and
with the raw network in bfloat16 (networks.with_precision).

    .venv/bin/python benchmarks/bench_heatmaps_chunking.py [--network shipped:unet-small-emoji] [--seconds 6]

Each chunking times vmapped vector-Jacobian passes (as analysis.heatmaps.summed_abs_readings makes them) for about
--seconds and scales to the C*H*W products of a z; the chunking the library now picks when none is given
(default_products_per_pass: 32 z x products per pass on a CPU) is marked. One thread, as the heatmaps runs use.
"""

from __future__ import annotations

import argparse
import time

import torch

from denoiserlab.analysis.heatmaps import default_products_per_pass
from denoiserlab.data import load
from denoiserlab.networks import load as load_network
from denoiserlab.networks.precision import with_precision

CHUNKINGS = ((8, 64), (8, 16), (8, 4), (4, 16), (4, 8), (2, 16), (1, 32), (1, 64))  # (z per batch, products)
BEFORE = (8, 64)


def seconds_per_z(den, z: torch.Tensor, products: int, sigma: float, budget: float) -> float:
    """Time vmapped passes of `products` one-hot cotangents through den's VJP at z [B, C, H, W] for about budget
    seconds; returns the seconds all C*H*W products of one z would take."""
    output, vjp_fn = torch.func.vjp(lambda inputs: den(inputs, sigma), z)
    dim = z[0].numel()
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < budget:
        rows = torch.arange(done % dim, done % dim + products) % dim
        one_hot = torch.zeros(products, dim, dtype=output.dtype)
        one_hot[torch.arange(products), rows] = 1
        cotangents = one_hot.reshape(-1, 1, *z.shape[1:]).expand(-1, *z.shape).contiguous()
        torch.func.vmap(vjp_fn)(cotangents)
        done += products
    return (time.perf_counter() - started) / done * dim / z.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="shipped:unet-small-emoji")
    parser.add_argument("--sigma", type=float, default=1.92)
    parser.add_argument("--seconds", type=float, default=6.0, help="timing budget per chunking and precision")
    args = parser.parse_args()
    torch.set_num_threads(1)
    network = load_network(args.network).eval().requires_grad_(False)
    lowered = with_precision(network, "bfloat16")
    train = load(**network.training_data).as_float()
    generator = torch.Generator().manual_seed(0)
    print(f"{args.network} ({tuple(train.shape[1:])}), sigma {args.sigma}, seconds per z, one thread")
    table = {}
    for batch, products in CHUNKINGS:
        z = train[:batch] + args.sigma * torch.randn(train[:batch].shape, generator=generator)
        table[batch, products] = [seconds_per_z(den, z, products, args.sigma, args.seconds)
                                  for den in (network, lowered)]
        chosen = " (default now)" if products == default_products_per_pass(batch, torch.device("cpu")) else ""
        exact, fast = table[batch, products]
        print(f"  {batch} z x {products} products: float32 {exact:.1f}, bfloat16 {fast:.1f}{chosen}", flush=True)
    default = (8, default_products_per_pass(8, torch.device("cpu")))
    best_exact = min(value[0] for value in table.values())
    print(f"before ({BEFORE[0]} x {BEFORE[1]}) / default now ({default[0]} x {default[1]}), float32: "
          f"{table[BEFORE][0] / table[default][0]:.2f}x; bfloat16 speed-up over the best float32 chunking: "
          f"{best_exact / min(value[1] for value in table.values()):.2f}x")


if __name__ == "__main__":
    main()
