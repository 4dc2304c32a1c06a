"""One table for a GPU machine (issue 13): seconds per call of the analytical denoisers, network heatmaps per z and
training images/s on --device, the CPU figures beside, and each method's agreement with a float64 CPU reference.

    .venv/bin/python benchmarks/bench_gpu.py --device cuda --out bench-gpu.json          # N = 100,000 3x32x32, B = 10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gpu.py --device cpu --n 2000      # CPU only: a few minutes

Rows (markdown on stdout, every number in the --out JSON file):
- optimal, Gaussian, PSPC-Square (s = 11), PSPC-Flex (lambda = 0.4; on CUDA both with the default fused Triton
  kernels and with the eager paths; Flex masks from a synthetic locality heatmap, an
  isotropic Gaussian falloff of width HEATMAP_WIDTH pixels around each output pixel) and ELS (P = 3, zero padding),
  each built once on N uniform random training images and called on B noisy training images at sigma = --sigma.
  ELS runs on --els-n images (default N / 10): its cost is B N (HW)^2 exponentials, 8e11 at N = 100,000.
- network heatmaps: analysis.gradient_heatmaps of a shipped network (default the U-Net, 1x28x28, on its own
  training set), seconds per noisy image z (the CPU column on CUDA with at most CPU_Z of them).
- training: images/s of networks.training.training_step (EDM loss, backward, Adam, EMA) of a fresh --train-arch
  network on min(N, 10,000) random images of the same shape (bfloat16 autocast on CUDA, as `denoiserlab train`).
Times: best of --repeats calls (fewer once they took REPEAT_BUDGET_SECONDS) after one warm-up call (0: one call, no
warm-up), wall clock, CUDA synchronised before
each clock read. On CUDA (or with --cpu-beside) the CPU column times the same objects on CPU tensors (torch's CPU
threads, --cpu-repeats).
Exactness ("max |diff|"): each denoiser is built again on the first --check-n training images (ELS: --check-n / 20)
and called on B of them with noise at sigmas from 0.05 to 5 (one per sample); the float64 CPU reference is written
here, the obvious way: softmax over all images, the Wiener filter C (C + sigma^2 I)^-1 in its N x N (push-through)
form, one posterior per crop averaged over the crops covering a pixel, one posterior per ELS output pixel over every
candidate window. Heatmaps: the rows of a few output pixels, by autograd of the float64 network on the same z.
Training: the first step's loss against the float64 loss of the same weights, batch, sigmas and noise.
Targets on an H100/H200 at N = 100,000 (issue 13; the research code took 107-193 s and 0.4-0.56 s there): PSPC-Square
<= 50 ms per call and the optimal denoiser <= 20 ms, shown beside the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from denoiserlab import data
from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.analysis.heatmaps import heatmap_inputs
from denoiserlab.atomic import atomic_write_text
from denoiserlab.denoisers import ELS, GaussianDenoiser, OptimalDenoiser, PSPCFlex, PSPCSquare, flex_masks
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import load as load_network
from denoiserlab.networks.build import resolve_preset
from denoiserlab.networks.loss import edm_loss
from denoiserlab.networks.training import new_run, training_step
from denoiserlab.networks.training_config import TrainConfig
from denoiserlab.validation import check_device

TARGETS_MS = {"optimal": 20.0, "PSPC-Square": 50.0}  # issue 13, on an H100/H200 at N = 100,000
HEATMAP_WIDTH = 3.0  # pixels: standard deviation of the synthetic heatmap's falloff
HEATMAP_SIGMA = 1.0  # noise level of the network heatmaps
CPU_Z = 2  # most z of the heatmaps' CPU column on CUDA
CHECK_SIGMAS = (0.05, 5.0)  # the exactness queries' sigmas run geometrically between these
REPEAT_BUDGET_SECONDS = 10.0  # timed repeats of one measurement stop once they have taken this long
SECTIONS = ("denoisers", "heatmaps", "training")


@dataclass
class Row:
    name: str  # what was measured
    n_train: int | None  # training images (None: not a denoiser row)
    unit: str  # "ms/call", "ms/z" or "images/s"
    device_value: float  # on --device
    cpu_value: float | None  # the same on the CPU with --cpu-beside (default on CUDA), else None
    max_abs_diff: float  # against the float64 CPU reference, on --device
    cpu_max_abs_diff: float | None  # the same for the CPU path with --cpu-beside, else None
    check: str  # what the reference is and on how much data


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a clock read counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable, repeats: int, device: torch.device,
          budget_seconds: float = REPEAT_BUDGET_SECONDS) -> tuple[float, object]:
    """(best wall seconds of up to `repeats` calls after one warm-up call, the first call's result); repeats = 0: one
    call and no warm-up. The repeats stop early once they have taken budget_seconds (slow paths get fewer)."""
    def once():
        synchronize(device)
        started = time.perf_counter()
        result = function()
        synchronize(device)
        return time.perf_counter() - started, result

    seconds, first = once()
    times, started = [], time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget_seconds):
        times.append(once()[0])
    return min(times or [seconds]), first


def random_images(n_images: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Uniform random images [n, C, H, W] in [-1, 1], float32."""
    return torch.rand(n_images, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def noisy_queries(train: torch.Tensor, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """Training images 0, 1, ... (cycling when there are fewer than B) plus noise of one sigma each: [B, C, H, W]."""
    eps = torch.randn(len(sigma), *train.shape[1:], generator=torch.Generator().manual_seed(seed))
    return train[torch.arange(len(sigma)) % len(train)] + sigma.view(-1, 1, 1, 1).to(train.dtype) * eps


def check_sigmas(batch: int) -> torch.Tensor:
    """float64 [B]: sigmas from CHECK_SIGMAS[0] to CHECK_SIGMAS[1], geometric."""
    return torch.logspace(math.log10(CHECK_SIGMAS[0]), math.log10(CHECK_SIGMAS[1]), batch, dtype=torch.float64)


def two_variance(sigma: torch.Tensor) -> torch.Tensor:
    """2 sigma^2 as [B, 1] for logits -|d|^2 / (2 sigma^2)."""
    return 2 * sigma.view(-1, 1) ** 2


def reference_optimal(train: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """sum_i softmax_i(-|x - x_i|^2 / 2 sigma^2) x_i with differences in float64. Returns [B, C, H, W]."""
    train_flat, queries = train.flatten(1).double(), x.flatten(1).double()
    distances = torch.stack([(query - train_flat).square().sum(1) for query in queries])  # [B, N]
    return ((-distances / two_variance(sigma)).softmax(1) @ train_flat).reshape(x.shape)


def reference_gaussian(train: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """mu + C (C + sigma^2 I)^-1 (x - mu), C = Xc^T Xc / N the biased covariance, as mu + Xc^T (Xc Xc^T + N sigma^2
    I)^-1 Xc (x - mu) (push-through identity: an N x N solve per sample). Float64; returns [B, C, H, W]."""
    flat = train.flatten(1).double()
    mean = flat.mean(0)
    centred = flat - mean  # Xc [N, D]
    gram = centred @ centred.T  # [N, N]
    identity = torch.eye(len(flat), dtype=torch.float64)
    out = [mean + centred.T @ torch.linalg.solve(gram + len(flat) * s**2 * identity, centred @ (query - mean))
           for query, s in zip(x.flatten(1).double(), sigma.tolist())]
    return torch.stack(out).reshape(x.shape)


def reference_composite(train: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, masks) -> torch.Tensor:
    """PSPC (Niedoba et al. 2025, eq. 9) the obvious way: per crop (bool [H, W]), the posterior mean of x's crop over
    the co-located crops of every training image; each pixel averages the crops that cover it. Float64."""
    train, x = train.double(), x.double()
    composite, count = torch.zeros_like(x), torch.zeros(x.shape[2:], dtype=torch.float64)
    for mask in masks:
        queries, crops = x[:, :, mask].flatten(1), train[:, :, mask].flatten(1)  # [B, C*k], [N, C*k]
        logits = -(queries[:, None] - crops[None]).square().sum(-1) / two_variance(sigma)  # [B, N]
        composite[:, :, mask] += (logits.softmax(1) @ crops).reshape(x.shape[0], x.shape[1], -1)
        count[mask] += 1
    return composite / count


def square_masks(height: int, width: int, size: int) -> list[torch.Tensor]:
    """Every size x size crop of an H x W image as a bool mask [H, W]."""
    masks = []
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            mask = torch.zeros(height, width, dtype=torch.bool)
            mask[top : top + size, left : left + size] = True
            masks.append(mask)
    return masks


def axis_candidates(coordinate: int, length: int, radius: int) -> list[int]:
    """ELS candidates along one axis with zero padding: the coordinate itself within `radius` of an edge, else every
    interior coordinate."""
    if coordinate < radius or coordinate >= length - radius:
        return [coordinate]
    return list(range(radius, length - radius))


def reference_els(train: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """ELS with zero padding (Kamb & Ganguli 2024): per output pixel, a softmax over the P x P windows of every
    training image at its candidate positions (axis_candidates along each axis), then the mean of those windows'
    centre pixels. Float64; returns [B, C, H, W]."""
    radius, (batch, channels, height, width) = size // 2, x.shape
    windows = F.unfold(F.pad(train.double(), (radius,) * 4), size).transpose(1, 2)  # [N, H*W, C*P*P]
    queries = F.unfold(F.pad(x.double(), (radius,) * 4), size).transpose(1, 2)  # [B, H*W, C*P*P]
    centres = train.double().flatten(2).transpose(1, 2)  # [N, H*W, C]
    out = torch.empty(batch, height * width, channels, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            positions = [r * width + c for r in axis_candidates(row, height, radius)
                         for c in axis_candidates(col, width, radius)]
            candidates = windows[:, positions].flatten(0, 1)  # [N * M, C*P*P]
            query = queries[:, row * width + col]  # [B, C*P*P]
            logits = -(query[:, None] - candidates[None]).square().sum(-1) / two_variance(sigma)  # [B, N * M]
            out[:, row * width + col] = logits.softmax(1) @ centres[:, positions].flatten(0, 1)
    return out.transpose(1, 2).reshape(x.shape)


def synthetic_heatmap(height: int, width: int, spread: float = HEATMAP_WIDTH) -> torch.Tensor:
    """A locality heatmap [H, W, H, W]: exp(-|(y, x) - (y', x')|^2 / (2 spread^2)) for output pixel (y, x)."""
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    row_falloff = (rows[:, None] - rows[None]).square()  # [H, H']
    col_falloff = (cols[:, None] - cols[None]).square()  # [W, W']
    squared = row_falloff[:, None, :, None] + col_falloff[None, :, None, :]  # [H, W, H', W']
    return torch.exp(-squared / (2 * spread**2))


def max_difference(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| in float64 on the CPU."""
    return (out.detach().cpu().double() - reference).abs().max().item()


def denoiser_row(name: str, make: Callable, reference: Callable, train: torch.Tensor, check_n: int,
                 args: argparse.Namespace, device: torch.device) -> Row:
    """Time make(train) ([N, C, H, W] -> den(x, sigma)) on B noisy training images on device (and on the CPU beside);
    check make(train[:check_n]) against reference(train, x, sigma) -> float64 [B, C, H, W]."""
    started = time.perf_counter()
    denoiser = make(train)
    print(f"  {name}: built in {time.perf_counter() - started:.1f} s", flush=True)
    x = noisy_queries(train, torch.full((args.batch,), args.sigma), seed=1)
    on_device, beside = x.to(device), args.cpu_beside
    seconds, _ = timed(lambda: denoiser(on_device, args.sigma), args.repeats, device)
    cpu_seconds = timed(lambda: denoiser(x, args.sigma), args.cpu_repeats, torch.device("cpu"))[0] if beside else None
    print(f"  {name}: timed by {time.perf_counter() - started:.1f} s", flush=True)
    del denoiser
    subset, sigma = train[:check_n], check_sigmas(args.batch)
    queries = noisy_queries(subset, sigma, seed=2)
    expected, checked = reference(subset, queries, sigma), make(subset)
    return Row(name, len(train), "ms/call", 1e3 * seconds, None if cpu_seconds is None else 1e3 * cpu_seconds,
               max_difference(checked(queries.to(device), sigma.to(device)), expected),
               max_difference(checked(queries, sigma), expected) if beside else None,
               f"float64 reference on {check_n} images, sigma {CHECK_SIGMAS[0]}..{CHECK_SIGMAS[1]}")


def denoiser_rows(args: argparse.Namespace, device: torch.device, emit: Callable[[Row], None]) -> None:
    """optimal, PSPC-Square, PSPC-Flex (on CUDA: the fused Triton kernels; the issue's targets first), Gaussian, on
    CUDA the eager PSPC paths, and ELS on N random images of --shape (ELS on the first --els-n); each row goes to
    emit as soon as it is measured."""
    train = random_images(args.n, args.shape, seed=0)
    height, width = args.shape[1:]
    size = min(args.patch_size, height, width)
    masks = flex_masks(synthetic_heatmap(height, width), args.lam)  # bool [H*W, H, W]
    check_n = min(args.check_n, args.n)
    square_reference = lambda *inputs: reference_composite(*inputs, square_masks(height, width, size))  # noqa: E731
    flex_reference = lambda *inputs: reference_composite(*inputs, masks)  # noqa: E731
    emit(denoiser_row("optimal", OptimalDenoiser, reference_optimal, train, check_n, args, device))
    emit(denoiser_row(f"PSPC-Square s={size}", lambda images: PSPCSquare(images, size), square_reference, train,
                      check_n, args, device))
    emit(denoiser_row(f"PSPC-Flex lambda={args.lam}", lambda images: PSPCFlex(images, masks), flex_reference, train,
                      check_n, args, device))
    emit(denoiser_row("Gaussian", lambda images: GaussianDenoiser(images, cache=False), reference_gaussian, train,
                      check_n, args, device))
    if device.type == "cuda":  # "auto" above runs the fused Triton kernels there; the eager paths beside them
        emit(denoiser_row(f"PSPC-Square s={size}, eager", lambda images: PSPCSquare(images, size, kernel="eager"),
                          square_reference, train, check_n, args, device))
        emit(denoiser_row(f"PSPC-Flex lambda={args.lam}, eager", lambda images: PSPCFlex(images, masks, kernel="eager"),
                          flex_reference, train, check_n, args, device))
    els_train = train[: args.els_n]
    emit(denoiser_row(f"ELS P={args.els_patch_size}", lambda images: ELS(images, args.els_patch_size),
                      lambda *inputs: reference_els(*inputs, args.els_patch_size), els_train,
                      min(args.els_n, max(2, check_n // 20)), args, device))


def reference_heatmap_rows(network, z: torch.Tensor, sigma: float, pixels: list[tuple[int, int]]) -> torch.Tensor:
    """Same-channel heatmap rows float64 [K, H, W] of the output pixels: mean over z of sum_c |dD_{c,y,x}/dz_c|,
    by autograd of the float64 network (on the CPU), one backward pass per (z, pixel, channel)."""
    rows = torch.zeros(len(pixels), *z.shape[2:], dtype=torch.float64)
    for sample in z:
        sample = sample[None].clone().requires_grad_(True)
        out = network(sample, sigma)
        for k, (y, x) in enumerate(pixels):
            for channel in range(z.shape[1]):
                (gradient,) = torch.autograd.grad(out[0, channel, y, x], sample, retain_graph=True)
                rows[k] += gradient[0, channel].abs()
    return rows / len(z)


def heatmap_seconds(args: argparse.Namespace, n_z: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds per z of gradient_heatmaps of --network on its training set with n_z noisy images z on device, the max
    |difference| of the same-channel rows of a few output pixels to the float64 CPU autograd reference)."""
    network = load_network(args.network, device=device).eval().requires_grad_(False)
    images = data.load(**network.training_data).as_float()
    on_device, batch = images.to(device), min(n_z, args.z_batch)
    seconds, result = timed(lambda: gradient_heatmaps(network, on_device, HEATMAP_SIGMA, n_z, args.seed, batch,
                                                      args.products_per_pass), repeats, device)
    height, width = images.shape[2:]
    pixels = [(0, 0), (height // 2, width // 2), (height - 1, width - 1), (3, width - 4)]
    reference_network = load_network(args.network).double().eval().requires_grad_(False)
    z = heatmap_inputs(images.double(), HEATMAP_SIGMA, n_z, args.seed, batch, "iid", None, False)  # the same z
    expected = reference_heatmap_rows(reference_network, z, HEATMAP_SIGMA, pixels)
    return seconds / n_z, max_difference(torch.stack([result.same_channel[y, x] for y, x in pixels]), expected)


def heatmap_row(args: argparse.Namespace, device: torch.device) -> Row:
    """Network heatmaps per z on device; on CUDA the CPU beside with at most CPU_Z of them (the CPU is slow)."""
    seconds, difference = heatmap_seconds(args, args.z, args.repeats, device)
    cpu_z = min(args.z, CPU_Z)
    cpu_seconds, cpu_difference = (heatmap_seconds(args, cpu_z, args.cpu_repeats, torch.device("cpu"))
                                   if args.cpu_beside else (None, None))
    counts = f"{args.z} z" + (f" (CPU: {cpu_z})" if args.cpu_beside else "")
    return Row(f"heatmaps {args.network}, {counts}", None, "ms/z", 1e3 * seconds,
               None if cpu_seconds is None else 1e3 * cpu_seconds, difference, cpu_difference,
               "float64 autograd rows of 4 output pixels, same z")


def training_seconds(config: TrainConfig, train: torch.Tensor, repeats: int, device: torch.device):
    """(best seconds per training step on device, the first step's loss)."""
    run = new_run(config, tuple(train.shape[1:]), None, device)
    on_device = train.to(device)
    return timed(lambda: training_step(run, config, on_device), repeats, device)


def reference_first_loss(config: TrainConfig, train: torch.Tensor) -> float:
    """The first training step's loss in float64 on the CPU: the same initial weights (new_run seeds them), the same
    batch indices, sigmas and noise (drawn in training_step's order from a generator seeded like the run's)."""
    network = new_run(config, tuple(train.shape[1:]), None, torch.device("cpu")).denoiser.double()
    generator = torch.Generator().manual_seed(config.seed)
    indices = torch.randint(len(train), (config.batch_size,), generator=generator)
    return edm_loss(network, train[indices].double(), generator, sigmas=config.sigma_distribution()).mean().item()


def lowest_resolution_attention(arch: str, side: int) -> dict:
    """Network overrides that keep a U-Net preset's attention at its lowest resolution (unet-small: 7 on 28x28) for
    images of this side; other presets need none."""
    architecture, config = resolve_preset(arch)
    if architecture != "unet" or not config.attn_resolutions:
        return {}
    return {"attn_resolutions": [side // 2 ** (len(config.channel_mult) - 1)]}


def training_row(args: argparse.Namespace, device: torch.device) -> Row:
    """Training images/s of a fresh --train-arch network on random images of --shape."""
    train = random_images(min(args.n, 10_000), args.shape, seed=3)
    config = TrainConfig(out="(bench_gpu: nothing is written)", arch=args.train_arch, batch_size=args.train_batch,
                         seed=args.seed, network=lowest_resolution_attention(args.train_arch, args.shape[1]))
    seconds, first_loss = training_seconds(config, train, args.repeats, device)
    expected = reference_first_loss(config, train)
    cpu_seconds, cpu_loss = None, None
    if args.cpu_beside:
        cpu_seconds, cpu_loss = training_seconds(config, train, args.cpu_repeats, torch.device("cpu"))
    shape = "x".join(map(str, args.shape))
    return Row(f"training {args.train_arch} {shape}, batch {args.train_batch}", None, "images/s",
               args.train_batch / seconds, None if cpu_seconds is None else args.train_batch / cpu_seconds,
               abs(first_loss - expected), None if cpu_loss is None else abs(cpu_loss - expected),
               "first step's loss against float64")


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if unit == "images/s" else f"{value:,.2f} {unit}"


def target_text(row: Row, device: torch.device) -> str:
    name = row.name.split(" ")[0]
    if name not in TARGETS_MS:
        return ""
    met = "" if device.type != "cuda" else (" (met)" if row.device_value <= TARGETS_MS[name] else " (missed)")
    return f"<= {TARGETS_MS[name]:.0f} ms on H100/H200{met}"


def markdown(rows: list[Row], device: torch.device, beside: bool) -> str:
    """The table; `beside`: with the CPU columns."""
    header = ["measurement", "N", str(device), *(["CPU"] if beside else []), f"max abs diff {device}",
              *(["max abs diff CPU"] if beside else []), "reference", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, "-" if row.n_train is None else f"{row.n_train:,}", format_value(row.device_value, row.unit),
                 *([format_value(row.cpu_value, row.unit)] if beside else []), f"{row.max_abs_diff:.1e}",
                 *([f"{row.cpu_max_abs_diff:.1e}"] if beside else []), row.check, target_text(row, device)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"torch": torch.__version__, "device": str(device), "gpu": gpu, "cpu_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0]}


def parse_shape(text: str) -> tuple[int, int, int]:
    """'3x32x32' -> (3, 32, 32)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 3x32x32, got {text!r}")
    return shape


def parse_sections(text: str) -> tuple[str, ...]:
    """'heatmaps,training' -> ('heatmaps', 'training'); each name one of SECTIONS, none twice."""
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names among {', '.join(SECTIONS)}, got {text!r}")
    return names


def parse_arguments() -> tuple[argparse.Namespace, torch.device]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="'cpu', 'cuda' or 'cuda:N' (default: cuda when present)")
    parser.add_argument("--n", type=int, default=None, help="training images (default: 100,000 on cuda, 2,000 on cpu)")
    parser.add_argument("--els-n", type=int, default=None, help="ELS training images (default: N / 10)")
    parser.add_argument("--shape", type=parse_shape, default=(3, 32, 32), help="image shape CxHxW (default 3x32x32)")
    parser.add_argument("--batch", type=int, default=10, help="noisy images per denoiser call (B)")
    parser.add_argument("--sigma", type=float, default=1.0, help="noise level of the timed calls")
    parser.add_argument("--patch-size", type=int, default=11, help="PSPC-Square crop side s")
    parser.add_argument("--lam", type=float, default=0.4, help="PSPC-Flex threshold lambda")
    parser.add_argument("--els-patch-size", type=int, default=3, help="ELS window side P")
    parser.add_argument("--check-n", type=int, default=200, help="training images of the exactness check")
    parser.add_argument("--network", default="shipped:unet-small-fashion-mnist", help="network of the heatmaps")
    parser.add_argument("--z", type=int, default=None, help="noisy images z of the heatmaps (default: 16 cuda, 1 cpu)")
    parser.add_argument("--z-batch", type=int, default=8, help="z per forward pass of the heatmaps")
    parser.add_argument("--products-per-pass", type=int, default=None,
                        help="vector-Jacobian products at a time (default: 256 on cuda, 64 on cpu)")
    parser.add_argument("--train-arch", default="unet-small", help="network preset of the training row")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (default: 128 cuda, 16 cpu)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls after a warm-up, 0: one call without (default: 5 cuda, 2 cpu)")
    parser.add_argument("--cpu-beside", action=argparse.BooleanOptionalAction, default=None,
                        help="also time everything on the CPU (default: when --device is not cpu)")
    parser.add_argument("--cpu-repeats", type=int, default=1, help="timed calls of the CPU column after a warm-up")
    parser.add_argument("--sections", type=parse_sections, default=SECTIONS,
                        help=f"comma-separated sections to run, in this order (default: {','.join(SECTIONS)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the heatmap z and the training run")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the table and settings")
    args = parser.parse_args()
    try:
        device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except DenoiserLabError as error:
        parser.error(str(error))
    gpu = device.type == "cuda"
    defaults = dict(n=100_000 if gpu else 2_000, z=16 if gpu else 1, products_per_pass=256 if gpu else 64,
                    train_batch=128 if gpu else 16, repeats=5 if gpu else 2)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.device, args.els_n = str(device), args.els_n or max(1, args.n // 10)
    args.cpu_beside = device.type != "cpu" if args.cpu_beside is None else args.cpu_beside
    return args, device


def write_report(args: argparse.Namespace, device: torch.device, start_environment: dict, rows: list[Row],
                 failures: dict, seconds: float, finished: bool) -> None:
    """The --out JSON file, rewritten (atomically) after each row: a run stopped by a time limit keeps what it
    measured."""
    settings = {key: (list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value)
                for key, value in vars(args).items()}
    report = {"environment": {**start_environment, "load_average_1min_now": os.getloadavg()[0]}, "settings": settings,
              "targets_ms_h100_h200": TARGETS_MS, "rows": [asdict(row) for row in rows],
              "markdown": markdown(rows, device, args.cpu_beside), "failures": failures, "finished": finished,
              "seconds_total": seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


def main() -> None:
    args, device = parse_arguments()
    started, start_environment = time.perf_counter(), environment(device)
    print(f"bench_gpu: torch {torch.__version__} on {device}"
          f"{' (' + start_environment['gpu'] + ')' if start_environment['gpu'] else ''}, "
          f"{torch.get_num_threads()} CPU threads, load average {start_environment['load_average_1min']:.2f} before "
          f"starting; N = {args.n:,} (ELS {args.els_n:,}) images {'x'.join(map(str, args.shape))}, B = {args.batch}, "
          f"sigma = {args.sigma}", flush=True)
    rows, failures = [], {}
    sections = {"denoisers": denoiser_rows, "heatmaps": lambda *inputs: inputs[-1](heatmap_row(*inputs[:-1])),
                "training": lambda *inputs: inputs[-1](training_row(*inputs[:-1]))}

    def emit(row: Row) -> None:  # print each row as it is measured and keep it in the report
        rows.append(row)
        print(f"  {row.name}: {format_value(row.device_value, row.unit)}, max abs diff {row.max_abs_diff:.1e} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        if args.out is not None:
            write_report(args, device, start_environment, rows, failures, time.perf_counter() - started, False)

    for name in args.sections:  # a failing section is reported, and the others still run
        try:
            sections[name](args, device, emit)
        except Exception as error:  # any failure: its message goes into the report and the exit code
            failures[name] = f"{type(error).__name__}: {error}"
            print(f"  {name} FAILED: {failures[name]}", flush=True)
        print(f"  {name} done at {time.perf_counter() - started:.0f} s", flush=True)
    if args.out is not None:
        write_report(args, device, start_environment, rows, failures, time.perf_counter() - started, True)
    print(markdown(rows, device, args.cpu_beside))
    print(f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at the end"
          + (f"; wrote {args.out}" if args.out is not None else ""))
    if failures:
        sys.exit(f"bench_gpu: {len(failures)} section(s) failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
