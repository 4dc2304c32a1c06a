"""gradient_heatmaps (one forward pass, vmapped vector-Jacobian products shared by a batch of z) vs a naive
per-sample torch.autograd.functional.jacobian loop: seconds per noisy image z, ratio, agreement.

    .venv/bin/python benchmarks/bench_heatmaps.py [--n-train 1000] [--n-samples 8] [--batch-size 8]

Denoisers: OptimalDenoiser and GaussianDenoiser on the vendored Fashion-MNIST subset (1x28x28), sigma = 1.0.
"""

from __future__ import annotations

import argparse
import time

import torch

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.analysis.noisy_inputs import noisy_batches
from denoiserlab.data import load
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser

SIGMA = 1.0


def naive_same_channel(den, images: torch.Tensor, n_samples: int, batch_size: int) -> torch.Tensor:
    """The same z as gradient_heatmaps (seed 0); one full Jacobian per z via autograd, |.| averaged: [H, W, H, W]."""
    height, width = images.shape[-2:]
    total = torch.zeros(height * width, height * width, dtype=torch.float64)
    for z in torch.cat(list(noisy_batches(images, SIGMA, n_samples, batch_size, 0))):
        jacobian = torch.autograd.functional.jacobian(lambda v: den(v[None], SIGMA).flatten(), z)
        total += jacobian.reshape(height * width, height * width).abs().double()
    return (total / n_samples).reshape(height, width, height, width)


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    train = load("fashion-mnist", subset=args.n_train).as_float()
    for name, den in (("optimal", OptimalDenoiser(train)), ("gaussian", GaussianDenoiser(train, cache=False))):
        fast, fast_seconds = timed(lambda: gradient_heatmaps(den, train, SIGMA, args.n_samples,
                                                             batch_size=args.batch_size).same_channel)
        naive, naive_seconds = timed(lambda: naive_same_channel(den, train, args.n_samples, args.batch_size))
        error = ((fast - naive).abs().max() / naive.abs().max()).item()
        print(f"{name:9s} N={len(train)} z={args.n_samples}: fast {fast_seconds / args.n_samples:.3f} s/z, naive"
              f" {naive_seconds / args.n_samples:.3f} s/z, speed-up x{naive_seconds / fast_seconds:.1f},"
              f" max relative difference {error:.1e}")


if __name__ == "__main__":
    main()
