"""`denoiserlab data info SOURCE`: counts, shapes and a PNG grid of examples."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from denoiserlab.data import load
from denoiserlab.data.builtin import BUILTIN_NAMES, builtin_label_names
from denoiserlab.outputs import check_output_folder
from denoiserlab.report import save_image_grid
from denoiserlab.validation import check_count


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect datasets")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    info = commands.add_parser("info", help="counts, shape and an example grid of a dataset")
    info.add_argument("source", help=f"built-in name ({', '.join(BUILTIN_NAMES)}) or a path")
    info.add_argument("--split", default="train", choices=["train", "test"])
    info.add_argument("--out", type=Path, default=Path("results/data-info"), help="folder for the example grid")
    info.add_argument("--n", type=int, default=64, help="number of example images in the grid")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> None:
    check_count(args.n, "--n")
    check_output_folder(args.out)
    images = load(args.source, split=args.split)
    channels, height, width = images.image_shape
    print(f"dataset      {images.name}")
    print(f"images       {len(images)}  ({channels} x {height} x {width}, uint8)")
    pixels = images.uint8.float()
    print(f"pixel mean   {pixels.mean().item():.2f}  std {pixels.std().item():.2f}  (0..255)")
    if images.labels is not None:
        labels, counts = torch.unique(images.labels, return_counts=True)
        names = builtin_label_names(args.source) if args.source in BUILTIN_NAMES else None
        counted = [f"{_label_text(int(label), names)}: {int(n)}" for label, n in zip(labels, counts)]
        print("labels       " + ", ".join(counted))
    else:
        print("labels       none")
    name = images.name.replace("/", "-")
    path = save_image_grid(images.as_float(0, args.n), args.out / f"{name}-examples.png")
    print(f"examples     {path}")


def _label_text(label: int, names: list[str] | None) -> str:
    """'3' or, when the dataset names its labels, '3 (Food & Drink)'."""
    return f"{label} ({names[label]})" if names is not None and label < len(names) else str(label)
