"""Argument groups shared by several commands."""

from __future__ import annotations

import argparse

from denoiserlab.data import ImageSet, load


def add_data_arguments(parser: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    """--data SOURCE and the dataset options of denoiserlab.data.load."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--data", default=default, required=default is None,
                       help="built-in name (fashion-mnist, fashion-mnist-full) or a path (default: %(default)s)")
    group.add_argument("--split", default="train", choices=["train", "test"])
    group.add_argument("--subset", type=int, default=None, help="use N images chosen by a seeded permutation")
    group.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these labels")
    group.add_argument("--resolution", type=int, default=None, help="square side in pixels")
    group.add_argument("--resolution-policy", default="pad", choices=["pad", "crop", "resize"])
    group.add_argument("--channels", type=int, default=None, choices=[1, 3])
    group.add_argument("--data-seed", type=int, default=0, help="seed of the subset choice")
    group.add_argument("--cache-dir", default=None,
                       help="keep decoded images in a memory-mapped .npy cache here (large folders decode once)")


def data_from_args(args: argparse.Namespace, split: str | None = None) -> ImageSet:
    """Load the dataset the --data options describe."""
    return load(args.data, split=split or args.split, subset=args.subset, classes=args.classes,
                resolution=args.resolution, resolution_policy=args.resolution_policy, channels=args.channels,
                seed=args.data_seed, cache_dir=args.cache_dir)
