"""Inference of the shipped networks on a CPU: one raw-network call per batch (naive) against EDMPrecond's calls of at
most CPU_CALL_IMAGES images (what every study and sampler now gets), milliseconds per image and their ratio.

    .venv/bin/python benchmarks/bench_network_chunking.py [--batch 256] [--seconds 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from denoiserlab.networks import load as load_network
from denoiserlab.networks.precond import CPU_CALL_IMAGES

NETWORKS = ("unet-small-fashion-mnist", "mixer-small-fashion-mnist", "unet-small-emoji", "dit-small-emoji")


def ms_per_image(call, x: torch.Tensor, seconds: float) -> float:
    call(x)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        call(x)
        images += x.shape[0]
    return (time.perf_counter() - started) / images * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, calls of {CPU_CALL_IMAGES}, {args.threads} thread(s), ms per image")
    for name in NETWORKS:
        den = load_network(f"shipped:{name}").eval()
        x = torch.randn(args.batch, den.img_channels, den.img_resolution, den.img_resolution)
        c_noise = torch.full((args.batch,), 0.1)
        with torch.no_grad():
            naive = ms_per_image(lambda images: den.net(images, c_noise), x, args.seconds)
            chunked = ms_per_image(lambda images: den(images, 1.5), x, args.seconds)
        print(f"  {name}: one call {naive:.1f}, chunked {chunked:.1f}, ratio {naive / chunked:.2f}", flush=True)


if __name__ == "__main__":
    main()
