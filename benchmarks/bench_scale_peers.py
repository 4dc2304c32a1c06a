"""Memory independent of N for the peers (issue 13): each streamed from a memory-mapped uint8 set against its in-RAM
path, same inputs, one process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale_peers.py              # N = 20,000 of 1x28x28
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale_peers.py --n 2000     # a quick run

Writes the synthetic uint8 .npy of bench_scale.py (N images of 1x28x28) to a temporary folder, loads it memory-
mapped and builds each peer twice, storage="stream" and storage="ram" (CFDM K = 4, kNN k = n_random = 256,
DataLocality threshold 0.1 and LS P = 5 on --n-local images, ELS P = 3 on --n-els: their cost grows as N D^2 and
N (H W)^2), calls each twice with B = 10 queries (sigma log-spaced 0.002 .. 80), and prints the seconds of the second
call of both paths, their ratio, the largest |stream - ram| and the RssAnon the streamed call added at its peak; then the
Gaussian mixture (10 k-means clusters, fitted from the storage in both cases) and patch_posterior (a 5 x 5 crop)
against the float tensor of the set.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from bench_scale import IMAGE_SHAPE, PeakRssAnon, mib, queries, rss_anon_bytes, write_synthetic_npy

from denoiserlab import data
from denoiserlab.denoisers import CFDM, ELS, LS, DataLocality, GaussianMixture, KNNDenoiser, patch_posterior


def timed(function) -> tuple[object, float, int]:
    """(result, seconds, RssAnon added at the peak, in bytes) of one call of function()."""
    before = rss_anon_bytes()
    with PeakRssAnon() as peak:
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
    return result, seconds, peak.peak - before


def compare(name: str, build, x: torch.Tensor, sigma: torch.Tensor) -> None:
    """Call build("stream") and build("ram") on (x, sigma) and print one row: the second call of each (the first
    builds what a denoiser makes on first use, such as the C kernel's layout of the in-RAM set)."""
    streamed, ram = build("stream"), build("ram")
    streamed(x, sigma), ram(x, sigma)
    out, stream_seconds, added = timed(lambda: streamed(x, sigma))
    reference, ram_seconds, _ = timed(lambda: ram(x, sigma))
    print(f"| {name} | {stream_seconds:.3f} | {ram_seconds:.3f} | {stream_seconds / ram_seconds:.2f} | "
          f"{(out - reference).abs().max().item():.1e} | {mib(added)} |")


def subset(train: data.ImageSet, n_images: int) -> data.ImageSet:
    return dataclasses.replace(train, uint8=train.uint8[:n_images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="training images (default 20,000)")
    parser.add_argument("--n-local", type=int, default=2_000, help="images for DataLocality and LS (default 2,000)")
    parser.add_argument("--n-els", type=int, default=200, help="images for ELS (default 200)")
    args = parser.parse_args()
    print(f"N = {args.n:,} images of {IMAGE_SHAPE}, B = 10, torch threads = {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "images.npy"
        write_synthetic_npy(path, args.n)
        train = data.load(path)
        x, sigma = queries(train)
        local, els_set = subset(train, args.n_local), subset(train, args.n_els)
        print("| denoiser | stream s / call | ram s / call | ratio | max abs diff | RssAnon added (stream call) |")
        print("|---|---|---|---|---|---|")
        compare(f"CFDM K = 4, N = {args.n:,}", lambda s: CFDM(train, n_noise=4, storage=s), x, sigma)
        compare(f"kNN k = 256, N = {args.n:,}", lambda s: KNNDenoiser(train, storage=s), x, sigma)
        compare(f"DataLocality, N = {args.n_local:,}", lambda s: DataLocality(local, 0.1, storage=s), x, sigma)
        compare(f"LS P = 5, N = {args.n_local:,}", lambda s: LS(local, 5, storage=s), x, sigma)
        compare(f"ELS P = 3, N = {args.n_els:,}", lambda s: ELS(els_set, 3, storage=s), x, sigma)
        floats = train.as_float()  # the float tensor the remaining rows compare with (RssAnon grows from here)
        mixture, seconds, added = timed(lambda: GaussianMixture(train, components=10))
        _, float_seconds, _ = timed(lambda: GaussianMixture(floats, components=10))
        print(f"GaussianMixture K = 10 (k-means), N = {args.n:,}: built in {seconds:.2f} s from the memmap "
              f"({float_seconds:.2f} s from the float tensor), RssAnon added {mib(added)}")
        crop = torch.zeros(IMAGE_SHAPE[1:], dtype=torch.bool)
        crop[10:15, 10:15] = True
        out, seconds, added = timed(lambda: patch_posterior(x, sigma, train, crop))
        reference, float_seconds, _ = timed(lambda: patch_posterior(x, sigma, floats, crop))
        print(f"patch_posterior 5 x 5, N = {args.n:,}: {seconds:.3f} s from the memmap, {float_seconds:.3f} s from "
              f"the float tensor, max abs diff {(out - reference).abs().max().item():.1e}, RssAnon added {mib(added)}")


if __name__ == "__main__":
    main()
