"""Argument groups shared by several commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from denoiserlab.data import ImageSet, load
from denoiserlab.data.builtin import BUILTIN_NAMES
from denoiserlab.errors import DenoiserLabError
from denoiserlab.outputs import check_output_folder
from denoiserlab.validation import DEVICE_NAMES, check_device, check_seed


def add_data_arguments(parser: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    """--data SOURCE and the dataset options of denoiserlab.data.load."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--data", default=default, required=default is None,
                       help=f"built-in name ({', '.join(BUILTIN_NAMES)}) or a path (default: %(default)s)")
    group.add_argument("--split", default="train", choices=["train", "test"],
                       help="the split of the source to read (default: %(default)s)")
    group.add_argument("--subset", type=int, default=None, help="use N images chosen by a seeded permutation")
    group.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these labels")
    group.add_argument("--resolution", type=int, default=None, help="square side in pixels")
    group.add_argument("--resolution-policy", default="pad", choices=["pad", "crop", "resize"],
                       help="how --resolution changes the side: pad (centred, zeros), crop (centred) or resize "
                            "(Lanczos) (default: %(default)s)")
    group.add_argument("--channels", type=int, default=None, choices=[1, 3],
                       help="1: BT.601 luminance, 3: grey repeated (default: as stored)")
    group.add_argument("--data-seed", type=int, default=0, help="seed of the subset choice")
    group.add_argument("--subset-offset", type=int, default=0,
                       help="skip this many images of the subset permutation (offsets 0, N, 2N give disjoint sets)")
    group.add_argument("--cache-dir", default=None,
                       help="keep decoded images in a memory-mapped .npy cache here (large folders decode once)")


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "cpu",
                        default_text: str = "%(default)s") -> None:
    """--device, the torch device the command computes on; commands check it with validation.check_device before
    any work (a CUDA device this machine lacks is one error line, exit code 2)."""
    parser.add_argument("--device", default=default,
                        help=f"torch device to compute on: {DEVICE_NAMES} (default: {default_text})")


def with_device(config, device: str | None, config_path: Path):
    """A study config with --device in place of its own `device` when given; either device is checked
    (validation.check_device) here, before any work."""
    if device is None:
        check_device(config.device, f"{config_path}: device")
        return config
    check_device(device)
    return dataclasses.replace(config, device=device)


def check_data_arguments(args: argparse.Namespace) -> None:
    """The --data options that can be checked before anything is read (the rest are checked by data.load)."""
    check_seed(args.data_seed, "--data-seed")
    if args.cache_dir is not None:
        check_output_folder(args.cache_dir, "--cache-dir")


def data_from_args(args: argparse.Namespace, split: str | None = None) -> ImageSet:
    """Load the dataset the --data options describe."""
    return load(args.data, split=split or args.split, subset=args.subset, classes=args.classes,
                resolution=args.resolution, resolution_policy=args.resolution_policy, channels=args.channels,
                seed=args.data_seed, cache_dir=args.cache_dir, subset_offset=args.subset_offset)


def parse_key_values(items: list[str], flag: str) -> dict:
    """['rank=50', 'noise_embedding=fourier'] -> {'rank': 50, 'noise_embedding': 'fourier'}: values parsed as JSON
    when they parse, else kept as strings; `flag` names the option in the error message."""
    parsed = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise DenoiserLabError(f"{flag} must look like KEY=VALUE, got {item!r}")
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key] = text
    return parsed
