"""PSPC-Square and PSPC-Flex: naive patch loop (as in the research code) against ours, same inputs, one process.

    .venv/bin/python benchmarks/bench_pspc.py            # N=2000, 3x32x32, B=8, sigma=1, s=11; Flex lambda=0.4
    .venv/bin/python benchmarks/bench_pspc.py --large    # also N=60k (1x28x28) and N=100k (3x32x32), B=10

PSPC-Flex runs twice: on masks from a random heatmap (3x32x32; crops scattered over the image) and from the shipped
unet-small heatmap at sigma = 1.92 (1x28x28; local crops, as a network's are).

The naive version loops over crop positions and, per crop, gathers the co-located training patches and computes a
full empirical posterior with a running log-sum-exp over chunks of 100 training images (float32), like
plai-group/pspc. It runs on one thread: its ops are too small to gain from two, and on a machine shared with other
jobs torch's two-thread ops stall (10x slower here). Ours is timed on one thread and on --threads threads.
Each figure: wall-clock seconds and process CPU seconds (robust to other jobs on the machine), best of --repeats
calls after a warm-up call; the naive loop runs once. Below each, the floors of one call on one thread: its exps at
the kernel's measured exp rate, and its memory traffic at the measured read bandwidth of one thread.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from denoiserlab.denoisers import OptimalDenoiser, PSPCFlex, PSPCSquare, els_kernel, flex_masks
from denoiserlab.assets import shipped_path
from denoiserlab.denoisers.pspc_flex import unique_crops
from denoiserlab.studies.locality.heatmaps import read_heatmaps_file


def naive_posterior_mean(queries: torch.Tensor, sigma: torch.Tensor, patches: torch.Tensor, chunk: int = 100):
    """Empirical posterior mean over the rows of patches [N, D] for queries [B, D], running log-sum-exp."""
    running_max = torch.full((queries.shape[0], 1), -torch.inf)
    normaliser = torch.zeros(queries.shape[0], 1)
    mean = torch.zeros_like(queries)
    for start in range(0, patches.shape[0], chunk):
        batch = patches[start : start + chunk]
        scores = (queries[:, None] - batch[None]).square().sum(-1) / (-2 * sigma[:, None] ** 2)  # [B, n]
        new_max = torch.maximum(scores.max(1, keepdim=True).values, running_max)
        weights = (scores - new_max).exp()
        rescale = (running_max - new_max).exp()
        new_normaliser = normaliser * rescale + weights.sum(1, keepdim=True)
        mean = (mean * normaliser * rescale + weights @ batch) / new_normaliser
        running_max, normaliser = new_max, new_normaliser
    return mean


def naive_composite(x: torch.Tensor, sigma: torch.Tensor, train: torch.Tensor, masks) -> torch.Tensor:
    """Loop over crops (bool [H, W] each): gather, posterior mean, scatter back, average."""
    composite, count = torch.zeros_like(x), torch.zeros_like(x)
    for mask in masks:
        mean = naive_posterior_mean(x[:, :, mask].flatten(1), sigma, train[:, :, mask].flatten(1))
        composite[:, :, mask] += mean.reshape(x.shape[0], x.shape[1], -1)
        count[:, :, mask] += 1
    return torch.where(count > 0, composite / count.clamp(min=1), x)


def square_masks(height: int, width: int, size: int):
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            mask = torch.zeros(height, width, dtype=torch.bool)
            mask[top : top + size, left : left + size] = True
            yield mask


def timed(function, repeats: int, threads: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) of `repeats` calls on `threads` threads; repeats=0: one call, no warm-up."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if repeats:
            function()  # warm-up: builds the kernel and the lane layout, touches memory
        walls, cpus = [], []
        for _ in range(max(repeats, 1)):
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    finally:
        torch.set_num_threads(previous)
    return min(walls), min(cpus)


def describe(name: str, naive: tuple[float, float], one: tuple[float, float], many: tuple[float, float],
             threads: int, error: float) -> str:
    return (f"  naive {naive[0]:.2f} s wall ({naive[1]:.2f} s CPU), 1 thread\n"
            f"  {name} {one[0] * 1e3:.1f} ms wall ({one[1] * 1e3:.1f} ms CPU), 1 thread; "
            f"{many[0] * 1e3:.1f} ms wall, {threads} threads\n"
            f"  ratio: {naive[1] / one[1]:.0f}x in CPU time (1 thread each), {naive[0] / many[0]:.0f}x in wall time "
            f"(naive on 1 thread, ours on {threads}); max |ours - naive| = {error:.1e}")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def random_problem(n_train: int, shape: tuple[int, int, int], batch: int, sigma: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(n_train, *shape, generator=generator) * 2 - 1
    x = train[:batch] + sigma * torch.randn(batch, *shape, generator=generator)
    return train, x, torch.full((batch,), sigma)


def exp_rate(repeats: int = 2000) -> float:
    """Exps per CPU second of the kernels' exp (exp2_bounded in kernels/common.h, which the ELS library exports as
    els_exp2_sum) on 4096 cache-resident float32 values, one thread."""
    import ctypes

    values = -40 * torch.rand(4096)
    library = els_kernel.load_library()
    cpu = timed(lambda: library.els_exp2_sum(ctypes.c_void_p(values.data_ptr()), values.numel(), repeats), 2, 1)[1]
    return repeats * values.numel() / cpu


def read_bandwidth(megabytes: int = 256) -> float:
    """Bytes per second that one thread reads from memory (torch sum over a float32 tensor far larger than caches)."""
    values = torch.rand(megabytes * 2**18)
    return values.numel() * 4 / timed(lambda: values.sum(), 3, 1)[0]


def floors(batch: int, n_train: int, n_crops: int, values_per_image: int, seconds: float) -> str:
    """What one call cannot go below on one thread: one exp per (query, crop, training image) in each pass, and the
    memory traffic: the training lanes read in both passes, pass 1's crop distances written and read back."""
    exps = 2 * batch * n_crops * n_train
    traffic = 2 * 4 * n_train * values_per_image + 2 * 4 * batch * n_crops * n_train
    exp_seconds, memory_seconds = exps / exp_rate(), traffic / read_bandwidth()
    return (f"  floors on one thread: {exps:.2e} exps = {exp_seconds * 1e3:.1f} ms at the kernel's exp rate; "
            f"{traffic / 1e6:.0f} MB of memory traffic = {memory_seconds * 1e3:.1f} ms at the read bandwidth; ours "
            f"{seconds * 1e3:.1f} ms = {seconds / max(exp_seconds, memory_seconds):.1f}x the larger")


def compare_square(args) -> float:
    """Naive loop vs ours for PSPC-Square; returns ours' wall seconds on args.threads threads."""
    train, x, sigma = random_problem(args.n, (3, 32, 32), args.batch, args.sigma)
    ours = PSPCSquare(train, args.patch_size)
    naive_result = []
    naive = timed(lambda: naive_result.append(naive_composite(x, sigma, train, square_masks(32, 32, args.patch_size))),
                  0, 1)
    one, many = timed(lambda: ours(x, sigma), args.repeats, 1), timed(lambda: ours(x, sigma), args.repeats, args.threads)
    eager = timed(lambda: PSPCSquare(train, args.patch_size, kernel="eager")(x, sigma), 1, args.threads)
    error = (ours(x, sigma) - naive_result[0]).abs().max().item()
    print(f"PSPC-Square N={args.n} 3x32x32 B={args.batch} sigma={args.sigma} s={args.patch_size}:")
    print(describe("ours", naive, one, many, args.threads, error))
    print(f"  eager PyTorch path: {eager[0]:.2f} s wall, {args.threads} threads")
    print(floors(args.batch, args.n, (32 - args.patch_size + 1) ** 2, x[0].numel(), one[1]))
    return many[0]


def compare_flex(args, heatmap_source: str) -> None:
    """Naive loop vs ours for PSPC-Flex on masks from a random heatmap (3x32x32: crops scattered over the image,
    the hard case) or from the shipped unet-small heatmap at sigma = 1.92 (1x28x28: the local crops users meet)."""
    if heatmap_source == "random":
        shape, heatmap = (3, 32, 32), torch.rand(32, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    else:
        table = read_heatmaps_file(shipped_path("unet-small.npz", "heatmaps"))
        level = int((table["sigmas"] - 1.92).abs().argmin())
        shape, heatmap = (1, 28, 28), table["same_channel"][level].float()
    train, x, sigma = random_problem(args.n, shape, args.batch, args.sigma)
    masks = flex_masks(heatmap, args.lam)
    ours = PSPCFlex(train, masks)
    naive_result = []
    naive = timed(lambda: naive_result.append(naive_composite(x, sigma, train, masks)), 0, 1)
    one, many = timed(lambda: ours(x, sigma), args.repeats, 1), timed(lambda: ours(x, sigma), args.repeats, args.threads)
    error = (ours(x, sigma) - naive_result[0]).abs().max().item()
    print(f"PSPC-Flex N={args.n} {'x'.join(map(str, shape))} B={args.batch} sigma={args.sigma} lambda={args.lam}, "
          f"{heatmap_source} heatmap ({unique_crops(masks).masks.shape[0]} distinct crops, "
          f"{masks.flatten(1).sum(1).float().mean():.0f} pixels each on average):")
    print(describe("ours", naive, one, many, args.threads, error))
    print(floors(args.batch, args.n, unique_crops(masks).masks.shape[0], x[0].numel(), one[1]))


def large(args, small_seconds: float) -> None:
    """Ours at N=60k (1x28x28) and N=100k (3x32x32), B=10: projected from the small run, measured, peak memory."""
    for n_train, shape in ((60_000, (1, 28, 28)), (100_000, (3, 32, 32))):
        train, x, sigma = random_problem(n_train, shape, 10, args.sigma)
        per_image = shape[0] * shape[1] * shape[2] / (3 * 32 * 32)
        projected = small_seconds * (n_train / args.n) * (10 / args.batch) * per_image
        rss_before = peak_rss_gib()
        ours = PSPCSquare(train, args.patch_size)
        wall, cpu = timed(lambda: ours(x, sigma), args.repeats, args.threads)
        rss_ours = peak_rss_gib()
        optimal = OptimalDenoiser(train)
        optimal_wall = timed(lambda: optimal(x, sigma), 1, args.threads)[0]
        print(f"PSPC-Square N={n_train} {'x'.join(map(str, shape))} B=10 s={args.patch_size}: projected {projected:.2f} s, "
              f"measured {wall:.2f} s wall ({cpu:.2f} s CPU), {args.threads} threads; optimal denoiser {optimal_wall:.2f} s "
              f"wall\n  peak RSS {rss_before:.2f} GiB before building it (training set {train.numel() * 4 / 2**30:.2f} "
              f"GiB), {rss_ours:.2f} GiB after its calls")
        del train, ours, optimal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="training images in the naive comparison")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--patch-size", type=int, default=11)
    parser.add_argument("--lam", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for ours")
    parser.add_argument("--skip-flex", action="store_true", help="skip the (slow) naive PSPC-Flex loop")
    parser.add_argument("--large", action="store_true", help="also time N=60k (1x28x28) and N=100k (3x32x32)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads for ours, load average {load:.1f} before starting")
    small_seconds = compare_square(args)
    if not args.skip_flex:
        compare_flex(args, "random")
        compare_flex(args, "unet-small")
    if args.large:
        large(args, small_seconds)


if __name__ == "__main__":
    main()
