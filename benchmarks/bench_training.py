"""CPU training throughput (images/s) of each small network preset on 1x28x28 images, in float32 and under
bfloat16 autocast (`denoiserlab train --precision bfloat16`) side by side, with their ratio.

One training step = EDM loss forward + backward + Adam update, as in `denoiserlab train`. Also reports sampling
throughput (one no-grad float32 denoiser call per image). On a shared machine run it with OMP_NUM_THREADS=1: two
OpenMP threads spin-waiting for a busy core can be several times slower than one. bfloat16 pays off on CPUs with
bfloat16 units (AVX-512 BF16, AMX); elsewhere it can be slower than float32.

Usage: python benchmarks/bench_training.py [--batch-size 128] [--steps 3] [--presets unet-small dit-small]
                                           [--network model_channels=96]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from denoiserlab.cli.common import parse_key_values
from denoiserlab.networks import build_denoiser, count_parameters
from denoiserlab.networks.loss import edm_loss

SMALL_PRESETS = ("unet-small", "ncsnpp-small", "dit-small", "mixer-small")


def seconds_per_call(function, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_preset(name: str, batch_size: int, steps: int, network: dict) -> dict:
    """Training (float32 and bfloat16 autocast) and sampling images/s of preset `name` (with `network` overrides)
    at batch_size on 1x28x28 random images."""
    torch.manual_seed(0)
    den = build_denoiser(name, 1, 28, network)
    optimizer = torch.optim.Adam(den.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch_size, 1, 28, 28, generator=generator) * 2 - 1

    def train_step(bfloat16: bool):
        # as `denoiserlab train`: autocast entered only for bfloat16 (networks.training.training_step)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16 else contextlib.nullcontext():
            loss = edm_loss(den, x0, generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def denoise():
        den.eval()(x0, 1.0)
        den.train()

    return dict(preset=name, parameters=count_parameters(den),
                train_images_per_second=batch_size / seconds_per_call(lambda: train_step(False), steps),
                train_bfloat16_images_per_second=batch_size / seconds_per_call(lambda: train_step(True), steps),
                denoise_images_per_second=batch_size / seconds_per_call(denoise, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset (best one is reported)")
    parser.add_argument("--presets", nargs="+", default=list(SMALL_PRESETS))
    parser.add_argument("--network", action="append", default=[], metavar="KEY=VALUE",
                        help="network config override for every preset, VALUE in JSON (e.g. model_channels=96)")
    args = parser.parse_args()
    network = parse_key_values(args.network, "--network")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch_size}, 1x28x28"
          + (f", {network}" if network else ""))
    print(f"{'preset':<14}{'params (M)':>11}{'train img/s':>13}{'bf16 img/s':>12}{'ratio':>7}{'denoise img/s':>15}")
    for name in args.presets:
        result = bench_preset(name, args.batch_size, args.steps, network)
        ratio = result["train_bfloat16_images_per_second"] / result["train_images_per_second"]
        print(f"{name:<14}{result['parameters'] / 1e6:>11.2f}{result['train_images_per_second']:>13.1f}"
              f"{result['train_bfloat16_images_per_second']:>12.1f}{ratio:>7.2f}"
              f"{result['denoise_images_per_second']:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
