"""OptimalDenoiser vs a straightforward chunked float32 implementation: seconds per call, ratio, exactness.

    .venv/bin/python benchmarks/bench_denoisers.py [--quick]

Sizes: N = 2,000 and 60,000 training images of 1x28x28 (Fashion-MNIST: the full set from Debian's package when
installed, else the vendored subset repeated with small jitter) and 3x32x32 (uniform random), batch 16.
Exactness: max |error| against a float64 softmax over all N, on queries that sit exactly midway between two
training images (at sigma = 0.002 the two logits are equal, so a distance error of 1e-4 flips the answer).
"""

from __future__ import annotations

import argparse
import time

import torch

from denoiserlab.data import load
from denoiserlab.denoisers import OptimalDenoiser


def straightforward_optimal(train_flat: torch.Tensor, x: torch.Tensor, sigma: float, chunk: int = 8192):
    """Chunked float32: logits from torch.cdist (the |a|^2 - 2ab + |b|^2 expansion), softmax, weighted sum."""
    queries = x.reshape(x.shape[0], -1)
    logits = torch.cat([-torch.cdist(queries, train_flat[i : i + chunk]) ** 2 / (2 * sigma**2)
                        for i in range(0, len(train_flat), chunk)], 1)
    weights = logits.softmax(1)
    out = sum(weights[:, i : i + chunk] @ train_flat[i : i + chunk] for i in range(0, len(train_flat), chunk))
    return out.reshape(x.shape)


def float64_reference(train_flat: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Differences (not the expansion) in float64, softmax over all N."""
    queries = x.reshape(x.shape[0], -1).double()
    train = train_flat.double()
    logits = torch.stack([-((q - train) ** 2).sum(1) / (2 * sigma**2) for q in queries])
    return (logits.softmax(1) @ train).reshape(x.shape)


def training_set(n_images: int, shape: tuple[int, int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if shape != (1, 28, 28):
        return torch.rand(n_images, *shape, generator=generator) * 2 - 1
    try:
        images = load("fashion-mnist-full").as_float()
    except Exception:
        base = load("fashion-mnist").as_float()
        repeats = -(-n_images // len(base))
        images = (base.repeat(repeats, 1, 1, 1) + 0.01 * torch.randn(len(base) * repeats, *shape,
                                                                         generator=generator)).clamp(-1, 1)
    return images[:n_images].contiguous()


def seconds_per_call(function, repeats: int) -> float:
    function()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only N = 2,000")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 16")
    print(f"{'shape':>9} {'N':>6} {'sigma':>6} {'ours s':>8} {'naive s':>8} {'naive/ours':>10} {'ours err':>9} {'naive err':>9}")
    for shape in ((1, 28, 28), (3, 32, 32)):
        for n_images in (2000,) if args.quick else (2000, 60000):
            train = training_set(n_images, shape)
            train_flat = train.reshape(n_images, -1)
            denoiser = OptimalDenoiser(train)
            generator = torch.Generator().manual_seed(1)
            for sigma in (0.002, 1.0):
                x = train[:16] + sigma * torch.randn(16, *shape, generator=generator)
                repeats = 5 if n_images <= 2000 else 2
                ours = seconds_per_call(lambda: denoiser(x, sigma), repeats)
                naive = seconds_per_call(lambda: straightforward_optimal(train_flat, x, sigma), repeats)
                midway = (train[0:8:2] + train[1:8:2]) / 2
                reference = float64_reference(train_flat, midway, sigma)
                ours_error = (denoiser(midway, sigma).double() - reference).abs().max().item()
                naive_error = (straightforward_optimal(train_flat, midway, sigma).double() - reference).abs().nan_to_num(
                    nan=float("inf")).max().item()
                print(f"{'x'.join(map(str, shape)):>9} {n_images:>6} {sigma:>6} {ours:>8.4f} {naive:>8.4f} "
                      f"{naive / ours:>10.2f} {ours_error:>9.1e} {naive_error:>9.1e}")


if __name__ == "__main__":
    main()
