"""`denoiserlab sample`: sample any denoiser with the PF-ODE from seeded initial noise; PNG grid + .npz.

Under torchrun every rank draws the same noise. An analytical denoiser that can shard its training set over the
ranks does (distributed=True: every rank samples every image, each over its shard); a network, or a denoiser that
cannot shard yet, samples each rank's share of the images. Every rank then holds all samples; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path

import numpy as np
import torch

from denoiserlab import process_group
from denoiserlab.atomic import atomic_folder
from denoiserlab.cli.common import (
    add_data_arguments,
    add_device_argument,
    check_data_arguments,
    data_from_args,
    parse_key_values,
)
from denoiserlab.data import float_to_uint8
from denoiserlab.denoisers import REGISTRY, create, load_masks, load_schedule
from denoiserlab.diffusion import edm_sigmas, sample_euler, sample_heun, standard_noise
from denoiserlab.diffusion.sigmas import check_steps
from denoiserlab.errors import DenoiserLabError
from denoiserlab.outputs import check_replaceable_folder
from denoiserlab.report import save_image_grid
from denoiserlab.validation import check_count, check_device, check_memory, check_seed

SAMPLERS = {"heun": sample_heun, "euler": sample_euler}
OUTPUTS = ("samples.png", "samples.npz")  # what `sample` writes into --out, as one unit
WORKING_COPIES = 8  # images the sampler holds at once per sample (x, denoised, slopes, ...) plus the denoiser's own


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="sample a denoiser from seeded initial noise")
    parser.add_argument("--denoiser", default="optimal", choices=sorted(REGISTRY), help="analytical denoiser")
    parser.add_argument("--network", default=None, metavar="PATH",
                        help="sample a trained network instead (our checkpoint folder, an EDM .pkl, a diffusers folder)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow loading an EDM .pkl, which runs code stored in the file")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="denoiser option, value parsed as JSON when possible (repeatable), e.g. rank=50")
    parser.add_argument("--xflip", action="store_true", help="denoiser also uses flipped training images")
    pspc = parser.add_argument_group("PSPC")
    pspc.add_argument("--patch-size", type=int, default=None, help="pspc_square: one patch size for every sigma")
    pspc.add_argument("--schedule", default=None, metavar="NAME|FILE",
                      help="pspc_square: patch-size schedule; pspc_flex with a heatmap file: threshold schedule "
                           "('cifar10' = the paper's CIFAR-10 lists, or a .toml/.json schedule file)")
    pspc.add_argument("--masks", default=None, metavar="FILE",
                      help="pspc_flex: bool masks [K, H, W] or a heatmap [H, W, H, W] (.npy/.npz/.pt)")
    pspc.add_argument("--lam", type=float, default=None, help="pspc_flex with a heatmap file: one threshold lambda")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=18, help="EDM noise levels, sigma 80 -> 0.002 (default: %(default)s)")
    parser.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS),
                        help="ODE solver: Heun (2nd order, EDM) or Euler (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise, shared across methods (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_device_argument(parser)
    add_data_arguments(parser)
    parser.set_defaults(func=run, under_torchrun=True)


def run(args: argparse.Namespace) -> None:
    check_arguments(args)
    args.device = process_group.rank_device(args.device)  # under torchrun, "cuda" is this rank's GPU
    denoiser, image_shape, metadata = network_from_args(args) if args.network else denoiser_from_args(args)
    check_memory(WORKING_COPIES * 4 * args.n * math.prod(image_shape), f"sampling {args.n} images of shape"
                 f" {list(image_shape)}")
    noise = standard_noise((args.n, *image_shape), args.seed).to(args.device)  # drawn on the CPU: same on any device
    sigmas = edm_sigmas(args.steps, sigma_max=min(80.0, getattr(denoiser, "sigma_max", 80.0)))

    def sample(initial_noise: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return SAMPLERS[args.sampler](denoiser, initial_noise, sigmas,
                                          progress=process_group.is_main_process()).images

    sharded = getattr(getattr(denoiser, "config", None), "distributed", False)  # needs every rank on every image
    images = sample(noise) if sharded else process_group.parallel_over_rows(sample, noise)
    metadata.update(steps=args.steps, sigma_max=float(sigmas[0]), sampler=args.sampler, seed=args.seed,
                    device=args.device, processes=process_group.world_size())
    if process_group.is_main_process():
        write_samples(args.out, images.cpu(), metadata)


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before any file is read: counts, seeds, the device and the output folder."""
    if args.n < 1 or args.steps < 1:
        raise DenoiserLabError(f"--n and --steps must be >= 1, got n={args.n}, steps={args.steps}")
    check_count(args.n, "--n")
    check_steps(args.steps, "--steps")
    check_seed(args.seed, "--seed")
    check_device(args.device)
    check_data_arguments(args)
    check_replaceable_folder(args.out, OUTPUTS)


def denoiser_from_args(args: argparse.Namespace):
    """The analytical denoiser named by --denoiser, built on the --data training set (its files read first); in a
    process group, with distributed=True when it takes that option (its training set sharded over the ranks)."""
    options = parse_key_values(args.option, "--option")
    if process_group.in_process_group() and "distributed" in inspect.signature(REGISTRY[args.denoiser]).parameters:
        options["distributed"] = True
    if args.xflip:
        options["xflip"] = True
    options.update(pspc_options(args))  # masks and schedule files parse before the data is loaded
    train = data_from_args(args)
    metadata = dict(denoiser=args.denoiser, options={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                     for k, v in options.items()},
                    schedule=args.schedule, masks=args.masks, lam=args.lam, data=train.load_options)
    return create(args.denoiser, train, **options), train.image_shape, metadata


def pspc_options(args: argparse.Namespace) -> dict:
    """patch_size / masks options of the PSPC denoisers from --patch-size, --schedule, --masks, --lam."""
    if args.denoiser == "pspc_square":
        if (args.patch_size is None) == (args.schedule is None):
            raise DenoiserLabError("pspc_square needs exactly one of --patch-size N and --schedule NAME|FILE")
        if args.patch_size is not None:
            return {"patch_size": args.patch_size}  # checked by PSPC-Square (0 is an error, not "no patch size")
        return {"patch_size": load_schedule(args.schedule, kind="patch_size")}
    if args.denoiser == "pspc_flex":
        if args.masks is None:
            raise DenoiserLabError("pspc_flex needs --masks FILE (bool masks, or a heatmap with --lam or --schedule)")
        lam = load_schedule(args.schedule, kind="threshold") if args.schedule else args.lam
        return {"masks": load_masks(args.masks, lam=lam)}
    if any(value is not None for value in (args.patch_size, args.schedule, args.masks, args.lam)):
        raise DenoiserLabError(f"--patch-size, --schedule, --masks and --lam apply to PSPC denoisers, not {args.denoiser}")
    return {}


def network_from_args(args: argparse.Namespace):
    """The trained network at --network; samples start from noise of its own image shape."""
    from denoiserlab.networks import load as load_network

    network = load_network(args.network, trust_pickle=args.trust_pickle, device=args.device)
    if isinstance(network, torch.nn.Module):
        network.eval()
    image_shape = (network.img_channels, network.img_resolution, network.img_resolution)
    metadata = dict(denoiser="network", network=str(args.network), data=network.training_data)
    return network, image_shape, metadata


def write_samples(out: Path, images, metadata: dict) -> None:
    """samples.png (grid) and samples.npz (float32 [-1, 1] and uint8 images, metadata as JSON), written as one
    unit: both into a temporary folder that is then renamed to `out`, so an interrupted run leaves the previous
    pair (or nothing), never a new grid beside old arrays."""
    arrays = dict(images=images.float().numpy(), uint8=float_to_uint8(images).numpy(),
                  metadata=np.array(json.dumps(metadata)))

    def fill(folder: Path) -> None:
        save_image_grid(images, folder / "samples.png")
        _save_npz(folder / "samples.npz", arrays)

    check_replaceable_folder(out, OUTPUTS)  # again: the folder may have changed while sampling
    atomic_folder(out, fill)
    print(f"wrote {out / 'samples.png'} and {out / 'samples.npz'}")


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
