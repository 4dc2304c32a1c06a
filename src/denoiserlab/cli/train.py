"""`denoiserlab train`: train an EDM-preconditioned network; options from a TOML file and/or flags (flags win)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from denoiserlab import process_group
from denoiserlab.cli.common import parse_key_values
from denoiserlab.networks.training import run_training
from denoiserlab.networks.training_config import TrainConfig, read_train_toml, train_config_from_dict
from denoiserlab.outputs import check_output_folder

# TrainConfig fields that are not one scalar flag each: --classes takes several labels, --xflip / --no-xflip,
# --network KEY=VALUE may repeat.
SPECIAL_FIELDS = ("classes", "xflip", "network")


def scalar_flags() -> dict[str, type]:
    """TrainConfig field -> the type of its flag, for every field but SPECIAL_FIELDS (int | None -> int)."""
    hints = typing.get_type_hints(TrainConfig)
    flags = {}
    for config_field in dataclasses.fields(TrainConfig):
        if config_field.name not in SPECIAL_FIELDS:
            kinds = [kind for kind in typing.get_args(hints[config_field.name]) if kind is not type(None)]
            flags[config_field.name] = kinds[0] if kinds else hints[config_field.name]
    return flags


FLAGS = scalar_flags()  # every flag defaults to None, meaning "not given"


def add_parser(subparsers) -> None:
    """Register `train` and its options."""
    parser = subparsers.add_parser(
        "train", help="train a diffusion network (EDM recipe); rerunning the same command resumes",
        description="Train an EDM-preconditioned network on a dataset. Options come from TrainConfig defaults, "
                    "then --config TOML (the same names with underscores), then flags. Rerunning with the same "
                    "--out resumes from the latest state.")
    parser.add_argument("--config", help="TOML file mirroring TrainConfig ([network] table: network overrides)")
    for name, kind in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=_help(name))
    parser.add_argument("--classes", type=int, nargs="+", default=None, help=_help("classes"))
    parser.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=None, help=_help("xflip"))
    parser.add_argument("--network", action="append", default=[], metavar="KEY=VALUE",
                        help="override a network config field, VALUE in JSON (e.g. --network dropout=0.0); "
                             "may repeat")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run, under_torchrun=True)


def _help(name: str) -> str:
    """A flag's help: the TrainConfig field's text and its default."""
    config_field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    default = "" if config_field.default is None else f" (default: {config_field.default!r})"
    return config_field.metadata["help"].replace("%", "%%") + default


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
