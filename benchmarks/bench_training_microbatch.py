"""Training steps on a CPU in one pass against micro-batches (TrainConfig.micro_batch_size), ms per image.

A training step's activations grow with the images in one forward/backward pass, and once they outgrow the CPU's
caches every image costs more. `training_step` therefore runs a batch in micro-batches of at most
networks.training.CPU_MICRO_BATCH images on a CPU (gradients added: the same step). Measured here (AMD EPYC, one
thread, the other core busy), ms per image at batch 128, one pass / micro-batches of 32: unet-small 3x32x32 18.3 /
14.0 (1.30x), 1x28x28 11.7 / 10.6 (1.11x), dit-small 3x32x32 16.8 / 16.9 (1.00x). This times real
`training_step`s (EDM loss, backward, Adam, EMA) of fresh networks on random images with the whole batch in one pass
(the behaviour before micro-batches) and with each micro-batch size, and checks that the first step's loss is the
same.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training_microbatch.py [--batch-sizes 64 128] [--steps 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from denoiserlab.networks.training import CPU_MICRO_BATCH, new_run, training_step
from denoiserlab.networks.training_config import TrainConfig

CASES = (("unet-small", (1, 28, 28)), ("unet-small", (3, 32, 32)), ("dit-small", (3, 32, 32)))


def ms_per_image(arch: str, shape: tuple[int, int, int], batch_size: int, micro: int,
                 steps: int) -> tuple[float, float]:
    """(best ms per image of `steps` training steps after one warm-up step, the warm-up step's loss)."""
    network = {"attn_resolutions": [shape[1] // 4]} if arch == "unet-small" else {}
    config = TrainConfig(out="(nothing is written)", arch=arch, batch_size=batch_size, micro_batch_size=micro,
                         network=network, seed=0)
    run = new_run(config, shape, None, torch.device("cpu"))
    train = torch.rand(256, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    first_loss = training_step(run, config, train)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        training_step(run, config, train)
        times.append(time.perf_counter() - started)
    return 1e3 * min(times) / batch_size, first_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--micro", type=int, nargs="+", default=[16, CPU_MICRO_BATCH, 64])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ms per image, best of {args.steps} steps")
    for arch, shape in CASES:
        for batch_size in args.batch_sizes:
            whole, whole_loss = ms_per_image(arch, shape, batch_size, batch_size, args.steps)
            cells = []
            for micro in (size for size in args.micro if size < batch_size):
                value, loss = ms_per_image(arch, shape, batch_size, micro, args.steps)
                assert abs(loss - whole_loss) <= 1e-5 * abs(whole_loss), (loss, whole_loss)
                cells.append(f"micro {micro}: {value:6.1f} ({whole / value:.2f}x)")
            print(f"{arch:10s} {'x'.join(map(str, shape)):8s} batch {batch_size:3d}: one pass {whole:6.1f} | "
                  + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
