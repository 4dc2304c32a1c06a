"""The `denoiserlab` command line: parses arguments and calls the library; it computes nothing itself.

Each sub-command lives in its own module with `add_parser(subparsers)` (which registers it and sets
`func`, and `under_torchrun=True` when it runs under torchrun) and the function it calls.
"""

from __future__ import annotations

import argparse
import os
import sys

from denoiserlab import __version__, process_group
from denoiserlab.errors import DenoiserLabError

COMMAND_MODULES = ("data_info", "sample", "train", "study", "gaussian_study", "heatmaps", "demo")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one `denoiserlab: error: ...` line and exit code 2, like ours."""

    def error(self, message: str):
        command = self.prog.removeprefix("denoiserlab").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"denoiserlab: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command module."""
    import importlib

    parser = OneLineParser(
        prog="denoiserlab",
        description="Compare trained diffusion denoisers with closed-form (analytical) denoisers.",
    )
    parser.add_argument("--version", action="version", version=f"denoiserlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"denoiserlab.cli.{name}").add_parser(subparsers)
    return parser


EXIT_BAD_INPUT = 2  # bad input, an unusable file or folder, or a value this machine cannot hold
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: bad input ends in one line on stderr and exit code 2, Ctrl-C in one line
    and exit code 130. Outputs are written atomically, so an interrupted run leaves no partial file behind.

    Started by torchrun (RANK and WORLD_SIZE set), a command that supports it runs in the process group torchrun
    describes (`process_group.joined_from_environment`); the others refuse."""
    try:
        args = build_parser().parse_args(argv)
        if process_group.launched_by_torchrun():
            run_under_torchrun(args)
        else:
            args.func(args)
    except DenoiserLabError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except OSError as error:  # the file system said no (permission, disk full, ...): name the file, no traceback
        where = f": {error.filename}" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}", EXIT_BAD_INPUT)
    except MemoryError:
        return _fail("out of memory; use fewer or smaller images", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted (Ctrl-C); finished files are complete, unfinished ones were not written",
                     EXIT_INTERRUPTED)
    return 0


def run_under_torchrun(args: argparse.Namespace) -> None:
    """Run the parsed command as one rank of a torchrun group: `sample`, `train`, `heatmaps`, `study`,
    `gaussian-study` and `demo`."""
    if not getattr(args, "under_torchrun", False):
        raise DenoiserLabError(f"denoiserlab {args.command} does not run under torchrun (only sample, train, "
                               "heatmaps, study, gaussian-study and demo do); run it as one process")
    with process_group.joined_from_environment():
        args.func(args)


def _fail(message: str, code: int) -> int:
    """Print the one error line (flushing stdout first, so the line comes last; naming the rank under torchrun) and
    return the exit code."""
    sys.stdout.flush()
    rank = f"rank {os.environ['RANK']}: " if process_group.launched_by_torchrun() else ""
    print(f"denoiserlab: error: {rank}{' '.join(message.split())}", file=sys.stderr)
    return code
