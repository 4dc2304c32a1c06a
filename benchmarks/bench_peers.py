"""The peer denoisers (ELS, LS, CFDM, DataLocality, GaussianMixture, kNN): fast paths against naive loops, same inputs,
one process (STYLE section 11). Fashion-MNIST, B = 8, one thread unless --threads.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_peers.py                     # every section
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_peers.py --only els --els-sizes 2000,10000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_peers.py --only knn --knn-synthetic 1000000

Each naive version is the obvious loop: per output pixel (ELS, LS), per output coordinate (DataLocality), per
sample and perturbation (CFDM), per sample and component with explicit [D, D] matrices (GaussianMixture). Times are
process CPU seconds (robust to other jobs on a shared machine) and wall seconds; the naive loop runs once, the fast
path is the best of --repeats calls after a warm-up call.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from denoiserlab.data import load
from denoiserlab.denoisers import CFDM, ELS, LS, DataLocality, GaussianMixture, KNNDenoiser, OptimalDenoiser
from denoiserlab.denoisers.local_score import circular_axis, zero_padded_axis

SECTIONS = ("els", "ls", "cfdm", "data_locality", "gaussian_mixture", "knn")


def timed(function, repeats: int) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) of `repeats` calls after a warm-up; repeats=0: one call, no warm-up."""
    if repeats:
        function()
    cpus, walls = [], []
    for _ in range(max(repeats, 1)):
        cpu, wall = time.process_time(), time.perf_counter()
        function()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return min(cpus), min(walls)


def report(name: str, naive: tuple[float, float], fast: tuple[float, float], error: float) -> None:
    print(f"  {name}: naive {naive[0]:.2f} s CPU ({naive[1]:.2f} s wall), fast {fast[0]:.3f} s CPU "
          f"({fast[1]:.3f} s wall): {naive[0] / fast[0]:.0f}x in CPU time; max |fast - naive| = {error:.1e}")


def fashion(n_train: int, batch: int, sigma: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n_train Fashion-MNIST training images (the full 60k set beyond 10k) and a batch of held-out test
    images with noise sigma."""
    source = "fashion-mnist" if n_train <= 10_000 else "fashion-mnist-full"
    train = load(source).as_float()[:n_train]
    test = load("fashion-mnist", split="test").as_float()[:batch]
    return train, test + sigma * torch.randn(test.shape, generator=torch.Generator().manual_seed(seed))


def naive_posterior(queries: torch.Tensor, sigma: float, candidates: torch.Tensor, values: torch.Tensor,
                    chunk: int = 4096) -> torch.Tensor:
    """Softmax-weighted mean of values [M, V] with logits -|q - c|^2 / (2 sigma^2), queries [B, K], candidates [M, K],
    running log-sum-exp over chunks of candidates (float32, as research code does)."""
    running_max = torch.full((queries.shape[0], 1), -torch.inf)
    normaliser = torch.zeros(queries.shape[0], 1)
    numerator = torch.zeros(queries.shape[0], values.shape[1])
    for start in range(0, candidates.shape[0], chunk):
        logits = -(queries[:, None] - candidates[None, start : start + chunk]).square().sum(-1) / (2 * sigma**2)
        new_max = torch.maximum(running_max, logits.max(1, keepdim=True).values)
        weights, rescale = torch.exp(logits - new_max), torch.exp(running_max - new_max)
        normaliser = normaliser * rescale + weights.sum(1, keepdim=True)
        numerator = numerator * rescale + weights @ values[start : start + chunk]
        running_max = new_max
    return numerator / normaliser


def naive_local(x: torch.Tensor, sigma: float, train: torch.Tensor, size: int, candidates_of) -> torch.Tensor:
    """Per output pixel: its query window, the windows of its candidate positions, a posterior over them."""
    radius, (batch, channels, height, width) = size // 2, x.shape
    mode = "circular" if candidates_of is circular_candidates else "constant"
    windows = F.unfold(F.pad(train, (radius,) * 4, mode=mode), size).transpose(1, 2)  # [N, H*W, C*P*P]
    queries = F.unfold(F.pad(x, (radius,) * 4, mode=mode), size).transpose(1, 2)  # [B, H*W, C*P*P]
    centres = train.flatten(2).transpose(1, 2)  # [N, H*W, C]
    out = torch.zeros(batch, height * width, channels)
    for y in range(height):
        for col in range(width):
            positions = torch.tensor(candidates_of(y, col, height, width, radius))
            out[:, y * width + col] = naive_posterior(queries[:, y * width + col], sigma,
                                                      windows[:, positions].flatten(0, 1),
                                                      centres[:, positions].flatten(0, 1))
    return out.transpose(1, 2).reshape(x.shape)


def circular_candidates(y, col, height, width, radius):
    return list(range(height * width))


def zero_padded_candidates(y, col, height, width, radius):
    rows = [y] if y < radius or y > height - radius - 1 else range(radius, height - radius)
    cols = [col] if col < radius or col > width - radius - 1 else range(radius, width - radius)
    return [r * width + c for r in rows for c in cols]


def co_located_candidates(y, col, height, width, radius):
    return [y * width + col]


def candidate_pairs(padding: str, height: int, width: int, size: int) -> int:
    """(output pixel, candidate position) pairs per training image."""
    make = circular_axis if padding == "circular" else zero_padded_axis

    def per_axis(length):
        axis = make(length, size // 2)
        return sum(last - first + 1 for first, last in zip(axis.first, axis.last))

    return per_axis(height) * per_axis(width)


def exp_throughput() -> float:
    """torch.exp on float32, one thread, cache-resident: exps per CPU second."""
    values = -torch.rand(1 << 16)
    cpu, _ = timed(lambda: [torch.exp(values) for _ in range(200)], 3)
    return 200 * values.numel() / cpu


def kernel_exp_throughput(repeats: int = 2000) -> float | None:
    """The ELS kernel's own exp (its fold's exp alone, `els_exp2_sum`) on 4096 cache-resident float32 values, one
    thread: exps per CPU second; None without a C compiler."""
    import ctypes

    from denoiserlab.denoisers import els_kernel, pspc_kernel

    try:
        library = els_kernel.load_library()
    except pspc_kernel.KernelUnavailable:
        return None
    values = -40 * torch.rand(4096)
    pointer = ctypes.c_void_p(values.data_ptr())
    cpu, _ = timed(lambda: library.els_exp2_sum(pointer, values.numel(), repeats), 2)
    return repeats * values.numel() / cpu


def bench_els(args) -> None:
    sigma, sizes = args.sigma, (3, 5, 9)
    train, x = fashion(args.els_naive_n, args.batch, sigma)
    print(f"ELS, Fashion-MNIST 1x28x28, B={args.batch}, sigma={sigma}; naive per-pixel loop at N={args.els_naive_n}")
    for padding in ("zeros", "circular"):
        for size in sizes:
            naive_out = []
            naive = timed(lambda: naive_out.append(naive_local(x, sigma, train, size, {
                "zeros": zero_padded_candidates, "circular": circular_candidates}[padding])), 0)
            den = ELS(train, size, padding=padding)
            fast = timed(lambda: den(x, sigma), args.repeats)
            report(f"padding={padding} P={size}", naive, fast, (den(x, sigma) - naive_out[0]).abs().max().item())
    torch_rate, rate = exp_throughput(), kernel_exp_throughput()
    rate = rate or torch_rate
    print(f"  floor: one exp per (query, output pixel, candidate window), B N (HW)^2 of them with circular padding "
          "(fewer with zeros); the naive loop's N (HW)^2 P^2 window arithmetic is gone (window sums give every "
          f"distance in O(1) for any P). The kernel's exp runs {rate / 1e9:.2f} G exp/s on this thread (torch.exp "
          f"{torch_rate / 1e9:.2f} G exp/s); floor = exps / that rate")
    for n_train in args.els_sizes:
        train, x = fashion(n_train, args.batch, sigma)
        for padding in ("zeros", "circular"):
            for size in sizes:
                exps = args.batch * n_train * candidate_pairs(padding, 28, 28, size)
                den = ELS(train, size, padding=padding)
                cpu, wall = timed(lambda: den(x, sigma), 0)
                print(f"  N={n_train} padding={padding} P={size}: {cpu:.2f} s CPU ({wall:.2f} s wall) per call; "
                      f"{exps:.2e} exps, floor {exps / rate:.2f} s ({cpu * rate / exps:.1f}x the floor); "
                      f"{cpu / exps * 1e9:.2f} ns CPU per (query, pixel, candidate)")


def bench_ls(args) -> None:
    train, x = fashion(args.ls_n, args.batch, args.sigma)
    print(f"LS, Fashion-MNIST N={args.ls_n}, B={args.batch}, sigma={args.sigma}; naive per-pixel loop")
    for size in (3, 9):
        naive_out = []
        naive = timed(lambda: naive_out.append(naive_local(x, args.sigma, train, size, co_located_candidates)), 0)
        den = LS(train, size)
        fast = timed(lambda: den(x, args.sigma), args.repeats)
        report(f"P={size}", naive, fast, (den(x, args.sigma) - naive_out[0]).abs().max().item())


def bench_cfdm(args) -> None:
    train, x = fashion(args.n, args.batch, args.sigma)
    n_noise, smoothing = 10, 0.1
    den = CFDM(train, smoothing=smoothing, n_noise=n_noise)
    optimal = OptimalDenoiser(train)

    def naive():  # one optimal-denoiser pass per (sample, perturbation)
        return torch.stack([torch.stack([optimal((x[b] + smoothing * eps.reshape(x.shape[1:]))[None], args.sigma)[0]
                                         for eps in den.eps_.float()]).mean(0) for b in range(x.shape[0])])

    print(f"CFDM, Fashion-MNIST N={args.n}, B={args.batch}, K={n_noise}, smoothing={smoothing}, sigma={args.sigma}; "
          "naive: one pass over the training set per (sample, perturbation)")
    naive_out = []
    naive_time = timed(lambda: naive_out.append(naive()), 0)
    fast = timed(lambda: den(x, args.sigma), args.repeats)
    report("one pass for all B*K queries", naive_time, fast, (den(x, args.sigma) - naive_out[0]).abs().max().item())


def bench_data_locality(args) -> None:
    train, x = fashion(args.n, args.batch, args.sigma)
    den = DataLocality(train, threshold=0.05)
    mask = den.mask(args.sigma)
    flat, queries = train.flatten(1), x.flatten(1)

    def naive():  # per output coordinate: its masked inputs, a softmax over the training set
        out = torch.zeros_like(queries)
        for m in range(flat.shape[1]):
            inputs = mask[m].nonzero().flatten()
            out[:, m] = naive_posterior(queries[:, inputs], args.sigma, flat[:, inputs], flat[:, m : m + 1])[:, 0]
        return out.reshape(x.shape)

    print(f"DataLocality, Fashion-MNIST N={args.n}, B={args.batch}, threshold=0.05, sigma={args.sigma} (mask density "
          f"{mask.float().mean():.3f}); naive per-output-coordinate loop; fast: one dense GEMM per chunk")
    naive_out = []
    naive_time = timed(lambda: naive_out.append(naive()), 0)
    fast = timed(lambda: den(x, args.sigma), args.repeats)
    report("", naive_time, fast, (den(x, args.sigma) - naive_out[0]).abs().max().item())


def bench_gaussian_mixture(args) -> None:
    imageset = load("fashion-mnist")
    train = imageset.as_float()[: args.n]
    x = fashion(args.n, args.batch, args.sigma)[1]
    labels = imageset.labels[: args.n]
    den = GaussianMixture(train, labels=labels, cache=False)
    flat, dim = train.flatten(1).double(), train[0].numel()
    classes = [flat[labels == k] for k in labels.unique()]
    moments = [(rows.mean(0), torch.cov(rows.T, correction=0), len(rows) / len(flat)) for rows in classes]

    def naive():  # per sample and class: explicit solve and log-determinant of S_k + sigma^2 I
        out = []
        for query in x.flatten(1).double():
            log_weights, means = [], []
            for mean, covariance, weight in moments:
                spread = covariance + args.sigma**2 * torch.eye(dim, dtype=torch.float64)
                solved = torch.linalg.solve(spread, query - mean)
                log_weights.append(math.log(weight) - 0.5 * ((query - mean) @ solved + torch.linalg.slogdet(spread)[1]))
                means.append(mean + covariance @ solved)
            out.append(torch.stack(means).T @ torch.stack(log_weights).softmax(0))
        return torch.stack(out).reshape(x.shape)

    print(f"GaussianMixture, Fashion-MNIST N={args.n}, 10 classes, B={args.batch}, sigma={args.sigma}; naive: per "
          "sample and class, solve and slogdet of the [D, D] matrix")
    naive_out = []
    naive_time = timed(lambda: naive_out.append(naive()), 0)
    fast = timed(lambda: den(x, args.sigma), args.repeats)
    report("", naive_time, fast, (den(x.double(), args.sigma) - naive_out[0]).abs().max().item())  # both float64


def synthetic_images(n_images: int, seed: int = 0, chunk: int = 50_000) -> torch.Tensor:
    """n_images 1x28x28 images: Fashion-MNIST training images, each shifted by up to 2 pixels and given 0.05 noise
    (clamped to [-1, 1]), generated chunk by chunk into one float32 tensor."""
    base = load("fashion-mnist-full").as_float()
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(n_images, 1, 28, 28)
    for start in range(0, n_images, chunk):
        count = min(chunk, n_images - start)
        picks = base[torch.randint(len(base), (count,), generator=generator)]
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
        noise = 0.05 * torch.randn(picks.shape, generator=generator)
        out[start : start + count] = (picks.roll(shift, (2, 3)) + noise).clamp(-1, 1)
    return out


def compare_knn(train: torch.Tensor, label: str, args) -> None:
    test = load("fashion-mnist", split="test").as_float()[: args.batch]
    optimal, knn = OptimalDenoiser(train), KNNDenoiser(train)
    print(f"kNN (k=256, n_random=256, exact index) against the optimal denoiser, {label}, B={args.batch}")
    for sigma in (0.1, 0.5, 1.0, 2.0, 5.0, 20.0):
        x = test + sigma * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
        exact, estimate = optimal(x, sigma), knn(x, sigma)
        exact_time, knn_time = timed(lambda: optimal(x, sigma), 1), timed(lambda: knn(x, sigma), 1)
        error = (estimate - exact).flatten(1)
        relative = (error.norm(dim=1) / (exact - x).flatten(1).norm(dim=1)).max().item()
        print(f"  sigma={sigma}: optimal {exact_time[0]:.3f} s CPU, kNN {knn_time[0]:.3f} s CPU "
              f"({exact_time[0] / knn_time[0]:.1f}x); max |kNN - optimal| = {error.abs().max():.1e}, "
              f"RMS {error.square().mean().sqrt():.1e}, max |error| / |D - x| per sample {relative:.1e}")
    if knn_faiss_available():
        knn_faiss = KNNDenoiser(train, index="faiss")
        x = test + torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
        faiss_time = timed(lambda: knn_faiss(x, 1.0), 1)
        print(f"  index='faiss' (flat L2, float32) at sigma=1: {faiss_time[0]:.3f} s CPU; max |faiss - exact index| = "
              f"{(knn_faiss(x, 1.0) - knn(x, 1.0)).abs().max():.1e}")


def knn_faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def bench_knn(args) -> None:
    try:
        full = load("fashion-mnist-full").as_float()
        label = "N=60,000 Fashion-MNIST training images"
    except Exception as error:  # not installed: the vendored 10k, six times, each copy with small noise
        print(f"  fashion-mnist-full unavailable ({error}); using the vendored 10k x 6 with 0.01 noise per copy")
        base = load("fashion-mnist").as_float()
        generator = torch.Generator().manual_seed(0)
        full = torch.cat([(base + 0.01 * torch.randn(base.shape, generator=generator)).clamp(-1, 1) for _ in range(6)])
        label = "N=60,000 (vendored 10k x 6, 0.01 noise)"
    compare_knn(full, label, args)
    del full
    n_synthetic = args.knn_synthetic
    gib = n_synthetic * 784 / 2**30
    print(f"  synthetic set: {n_synthetic:,} images (the optimal denoiser holds them as float64: {8 * gib:.1f} GiB, "
          f"the kNN denoiser as float32: {4 * gib:.1f} GiB)")
    compare_knn(synthetic_images(n_synthetic), f"N={n_synthetic:,} synthetic (shifted, noisy Fashion-MNIST)", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=10_000, help="training images for CFDM, DataLocality, mixtures")
    parser.add_argument("--els-naive-n", type=int, default=100, help="training images of the naive ELS comparison")
    parser.add_argument("--els-sizes", type=lambda text: [int(v) for v in text.split(",") if v], default=[2000, 10_000],
                        help="training set sizes of the ELS per-call times ('' for none)")
    parser.add_argument("--ls-n", type=int, default=2000)
    parser.add_argument("--knn-synthetic", type=int, default=1_000_000, help="synthetic training images for kNN")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at the start")
    for section in args.only:
        globals()[f"bench_{section}"](args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other jobs slow both sides of every ratio)")


if __name__ == "__main__":
    main()
