"""The `denoiserlab` command line: parses arguments and calls the library; it computes nothing itself.

Each sub-command lives in its own module with `add_parser(subparsers)` (which registers it and sets
`func`) and the function it calls.
"""

from __future__ import annotations

import argparse
import sys

from denoiserlab import __version__
from denoiserlab.errors import DenoiserLabError

COMMAND_MODULES = ("data_info", "sample", "train", "study", "gaussian_study", "heatmaps", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command module."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="denoiserlab",
        description="Compare trained diffusion denoisers with closed-form (analytical) denoisers.",
    )
    parser.add_argument("--version", action="version", version=f"denoiserlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"denoiserlab.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; bad input ends in one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DenoiserLabError as error:
        print(f"denoiserlab: error: {error}", file=sys.stderr)
        return 2
    return 0
