"""`denoiserlab train`: train an EDM-preconditioned network; options from a TOML file and/or flags (flags win)."""

from __future__ import annotations

import argparse

from denoiserlab import process_group
from denoiserlab.cli.common import parse_key_values
from denoiserlab.networks.training import run_training
from denoiserlab.networks.training_config import TrainConfig, read_train_toml, train_config_from_dict
from denoiserlab.outputs import check_output_folder

# Flag name -> TrainConfig field and type; every flag defaults to None, meaning "not given".
FLAGS = {
    "out": str, "data": str, "subset": int, "subset_offset": int, "resolution": int, "resolution_policy": str,
    "channels": int, "data_seed": int, "arch": str, "kimg": float, "batch_size": int, "micro_batch_size": int,
    "lr": float,
    "lr_rampup_kimg": float, "lr_decay_kimg": float, "init": str, "sigma_loguniform_fraction": float, "target": str,
    "sigma_min": float, "sigma_max": float, "grad_clip_norm": float, "ema_halflife_kimg": float, "ema_rampup_ratio": float,
    "seed": int, "checkpoint_kimg": float, "log_kimg": float, "sample_count": int, "sample_steps": int, "device": str,
}


def add_parser(subparsers) -> None:
    """Register `train` and its options."""
    parser = subparsers.add_parser(
        "train", help="train a diffusion network (EDM recipe); rerunning the same command resumes",
        description="Train an EDM-preconditioned network on a dataset. Options come from TrainConfig defaults, "
                    "then --config TOML, then flags. Rerunning with the same --out resumes from the latest state.")
    parser.add_argument("--config", help="TOML file mirroring TrainConfig ([network] table: network overrides)")
    for name, kind in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            help=_help(name))
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these labels")
    parser.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=None,
                        help="x-flip augmentation (train on the images and their mirror images)")
    parser.add_argument("--network", action="append", default=[], metavar="KEY=VALUE",
                        help="override a network config field, VALUE in JSON (e.g. --network dropout=0.0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run, under_torchrun=True)


def _help(name: str) -> str:
    """Flag help taken from the TrainConfig default."""
    return f"(default: {getattr(TrainConfig, name, None)!r})"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, the TOML file and the flags given into one TrainConfig."""
    options = read_train_toml(args.config) if args.config else {}
    origin = args.config or "command line"
    given = {name: getattr(args, name) for name in (*FLAGS, "classes", "xflip") if getattr(args, name) is not None}
    options.update(given)
    if args.network:
        options["network"] = {**options.get("network", {}), **parse_key_values(args.network, "--network")}
    return train_config_from_dict(options, origin)


def run(args: argparse.Namespace) -> None:
    """Train, then print the folder of the last EMA network (under torchrun: data-parallel, rank 0 prints)."""
    config = config_from_args(args)
    check_output_folder(config.out)
    network = run_training(config, progress=not args.no_progress)
    if process_group.is_main_process():
        print(f"latest network: {network}")
