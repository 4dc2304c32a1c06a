"""Gradient heatmaps of a network in float32 vs with its raw network in bfloat16 (networks.with_precision), from the
same noisy images z: seconds per z, their ratio, and how far apart the maps are next to their sampling noise and in
what the maps are used for (PSPC-Flex crops and the convergence criterion's MSE to the network).

    .venv/bin/python benchmarks/bench_heatmaps_precision.py [--network shipped:unet-small-emoji]
        [--sigmas 28.4 3.26 0.296] [--n-samples 8] [--threads 1]

Per sigma it prints, for both readings: the relative distance |bf16 - fp32| / |fp32| of the maps; the sampling noise
at this z count (relative distance between the maps of the two halves of the z, fp32); the PSPC-Flex crop IoU
between the fp32 and bf16 maps at lambda 0.3 / 0.6 / 0.9; the fitted lambda under each and the relative change of
PSPC-Flex's MSE to the network at the fp32 map's fitted lambda (the heatmaps command's criterion tolerates 2 %).
"""

from __future__ import annotations

import argparse
import time

import torch

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.analysis.heatmap_convergence import (FLEX_THRESHOLDS, flex_check_set, flex_mse_to_network, halves,
                                                      mask_iou, relative_distance)
from denoiserlab.data import load
from denoiserlab.networks import load as load_network
from denoiserlab.networks.precision import with_precision

IOU_THRESHOLDS = (0.3, 0.6, 0.9)


def timed_maps(den, train, labels, sigma: float, args: argparse.Namespace):
    """(GradientHeatmaps with 2 groups, seconds per z) from the same systematic z for every den."""
    started = time.perf_counter()
    maps = gradient_heatmaps(den, train, sigma, args.n_samples, args.seed, args.batch_size, args.products_per_pass,
                             sampling="systematic", labels=labels, groups=2)
    return maps, (time.perf_counter() - started) / args.n_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="shipped:unet-small-emoji")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[28.4, 3.26, 0.296])
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--products-per-pass", type=int, default=16)
    parser.add_argument("--check-pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = load_network(args.network).eval().requires_grad_(False)
    lowered = with_precision(network, "bfloat16")
    imageset = load(**network.training_data)
    train, labels = imageset.as_float(), imageset.labels
    readings = ("same_channel", "all_channels") if train.shape[1] > 1 else ("same_channel",)
    print(f"{args.network}, {args.n_samples} z per sigma, {args.threads} thread(s)")
    for sigma in args.sigmas:
        exact, exact_seconds = timed_maps(network, train, labels, sigma, args)
        fast, fast_seconds = timed_maps(lowered, train, labels, sigma, args)
        z_check, outputs = flex_check_set(network, train, sigma, args.check_pairs, args.seed)
        print(f"sigma {sigma:g}: float32 {exact_seconds:.1f} s/z, bfloat16 {fast_seconds:.1f} s/z, "
              f"ratio {exact_seconds / fast_seconds:.2f}")
        for reading in readings:
            exact_map, fast_map = getattr(exact, reading), getattr(fast, reading)
            first, second = halves(getattr(exact, "groups_" + reading))
            mse_exact = flex_mse_to_network(network, train, sigma, exact_map, FLEX_THRESHOLDS, z_check, outputs)
            mse_fast = flex_mse_to_network(network, train, sigma, fast_map, FLEX_THRESHOLDS, z_check, outputs)
            fitted = int(mse_exact.argmin())
            change = float((mse_fast[fitted] - mse_exact[fitted]).abs() / mse_exact[fitted])
            ious = " / ".join(f"{mask_iou(exact_map, fast_map, lam):.3f}" for lam in IOU_THRESHOLDS)
            print(f"  {reading}: |bf16 - fp32| / |fp32| {relative_distance(fast_map, exact_map):.4f} "
                  f"(halves of the z: {relative_distance(first, second):.3f}); crop IoU {ious}; fitted lambda "
                  f"{FLEX_THRESHOLDS[fitted]} / {FLEX_THRESHOLDS[int(mse_fast.argmin())]}; PSPC-Flex MSE change "
                  f"{100 * change:.2f} %")


if __name__ == "__main__":
    main()
