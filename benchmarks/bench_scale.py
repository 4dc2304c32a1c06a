"""Memory independent of N (issue 13): the optimal denoiser and PSPC-Square on a memory-mapped uint8 training set.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py              # N = 1,000,000 of 1x28x28 (784 MB)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --n 50000 --storage stream    # a quick run

Writes a synthetic uint8 .npy of N images of 1x28x28 to a temporary folder (under --dir), loads it with `data.load`
(memory-mapped) and builds OptimalDenoiser and PSPCSquare from it with --storage (default "auto", which streams
at this size). Prints RssAnon (anonymous memory: what a float copy of the set would take; the mapped file's pages
are file-backed and count under RssFile) before and after each step and its peak during the calls, the seconds per
call with B = 10 queries (one sigma each, 0.002 .. 80), and the memory-bandwidth floor: a plain numpy sum over the
mapped file (every byte read once; a streamed call reads it once per pass: once for the optimal denoiser, twice for
PSPC-Square). Then checks on the first --subset images that the streamed path equals the in-RAM path
(storage="ram", float copies in memory). Target: peak RssAnon under 1 GiB at N = 1,000,000.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from denoiserlab import data
from denoiserlab.denoisers import OptimalDenoiser, PSPCSquare

IMAGE_SHAPE = (1, 28, 28)
BATCH = 10
WRITE_CHUNK = 20_000  # images generated and written at a time


def rss_anon_bytes() -> int:
    """RssAnon of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon line in /proc/self/status (Linux only)")


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


class PeakRssAnon:
    """Context manager sampling RssAnon every `interval` seconds on a thread; `.peak` is the largest value seen."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak = interval, rss_anon_bytes()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_anon_bytes())

    def __enter__(self) -> "PeakRssAnon":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_bytes())


def write_synthetic_npy(path: Path, n_images: int, seed: int = 0) -> None:
    """A uint8 .npy [N, 1, 28, 28] of smooth random blobs, written chunk by chunk (never whole in memory)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:28, 0:28].astype(np.float32)
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (n_images, *IMAGE_SHAPE)})
        for start in range(0, n_images, WRITE_CHUNK):
            n = min(WRITE_CHUNK, n_images - start)
            centre = rng.uniform(6, 22, size=(n, 2, 1, 1)).astype(np.float32)
            width = rng.uniform(3, 9, size=(n, 1, 1)).astype(np.float32)
            blob = np.exp(-((rows - centre[:, 0]) ** 2 + (cols - centre[:, 1]) ** 2) / (2 * width**2))
            noise = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
            images = np.clip(blob * 215, 0, 215).astype(np.uint8) + noise  # [n, 28, 28]
            handle.write(images[:, None].tobytes())


def bandwidth_floor(images: np.ndarray, chunk: int = 50_000) -> float:
    """Seconds of a plain numpy sum over the memory-mapped images (each byte read once), best of two."""
    best = float("inf")
    for _ in range(2):
        start, total = time.perf_counter(), 0
        for first in range(0, len(images), chunk):
            total += int(images[first : first + chunk].sum(dtype=np.uint64))
        best = min(best, time.perf_counter() - start)
    return best


def timed_call(denoiser, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """(output, seconds, peak RssAnon in bytes) of one call."""
    with PeakRssAnon() as peak:
        start = time.perf_counter()
        out = denoiser(x, sigma)
        seconds = time.perf_counter() - start
    return out, seconds, peak.peak


def queries(train: data.ImageSet, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B noisy training images (one per sigma, sigma log-spaced in 0.002 .. 80) and their sigmas [B]."""
    generator = torch.Generator().manual_seed(seed)
    sigma = torch.logspace(np.log10(0.002), np.log10(80.0), BATCH, dtype=torch.float64)
    index = torch.randint(len(train), (BATCH,), generator=generator)
    x0 = torch.cat([train.as_float(int(i), int(i) + 1) for i in index])
    return x0 + sigma.float().view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator), sigma


def run_method(name: str, build, x: torch.Tensor, sigma: torch.Tensor, floor_seconds: float, passes: int) -> None:
    """Build a denoiser on the memory-mapped set, call it twice, print memory and time against the floor."""
    before = rss_anon_bytes()
    with PeakRssAnon() as peak:
        denoiser = build()
    print(f"{name}: storage={denoiser.storage_}; built: RssAnon {mib(before)} -> {mib(rss_anon_bytes())}"
          f" (peak {mib(peak.peak)})")
    for call in (1, 2):
        _, seconds, call_peak = timed_call(denoiser, x, sigma)
        print(f"  call {call}: {seconds:7.2f} s  (floor {passes} x {floor_seconds:.2f} s = "
              f"{passes * floor_seconds:.2f} s, ratio {seconds / (passes * floor_seconds):.1f}x); "
              f"RssAnon peak {mib(call_peak)}, after {mib(rss_anon_bytes())}")


def compare_with_ram(train: data.ImageSet, x: torch.Tensor, sigma: torch.Tensor, n_subset: int) -> None:
    """Streamed and in-RAM paths on the first n_subset images: largest absolute difference of the outputs."""
    subset = dataclasses.replace(train, uint8=train.uint8[:n_subset])
    x = x.clone()
    x[:2] = subset.as_float(0, 2) + 0.002 * torch.randn(2, *IMAGE_SHAPE)  # two queries at a training image
    for name, build in (("optimal", lambda storage: OptimalDenoiser(subset, storage=storage)),
                        ("pspc_square s=5", lambda storage: PSPCSquare(subset, 5, storage=storage))):
        streamed, ram = build("stream")(x, sigma), build("ram")(x, sigma)
        print(f"  {name:16s} N = {n_subset:,}: max |stream - ram| = {(streamed - ram).abs().max().item():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="training images (default 1,000,000)")
    parser.add_argument("--subset", type=int, default=20_000, help="images for the stream-vs-RAM check")
    parser.add_argument("--dir", default=None, help="folder for the temporary .npy (default: the system's)")
    parser.add_argument("--storage", default="auto", choices=("auto", "ram", "stream"),
                        help="the denoisers' storage option (default auto: streams at N = 1,000,000)")
    args = parser.parse_args()
    print(f"N = {args.n:,} images of {IMAGE_SHAPE}, B = {BATCH}, torch threads = {torch.get_num_threads()}")
    print(f"RssAnon at start: {mib(rss_anon_bytes())}")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "images.npy"
        start = time.perf_counter()
        write_synthetic_npy(path, args.n)
        print(f"wrote {path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - start:.1f} s;"
              f" RssAnon {mib(rss_anon_bytes())}")
        train = data.load(path)
        print(f"data.load: {len(train):,} images memory-mapped; RssAnon {mib(rss_anon_bytes())}")
        floor = bandwidth_floor(train.uint8.numpy())
        print(f"bandwidth floor: numpy sum over the mapped file {floor:.2f} s"
              f" ({path.stat().st_size / floor / 1e9:.2f} GB/s); RssAnon {mib(rss_anon_bytes())}")
        x, sigma = queries(train)
        run_method("OptimalDenoiser", lambda: OptimalDenoiser(train, storage=args.storage), x, sigma, floor, passes=1)
        run_method("PSPCSquare s=5", lambda: PSPCSquare(train, 5, storage=args.storage), x, sigma, floor, passes=2)
        print("stream vs RAM on a subset (RAM path holds float copies, so RssAnon grows from here):")
        compare_with_ram(train, x, sigma, min(args.subset, args.n))


if __name__ == "__main__":
    main()
