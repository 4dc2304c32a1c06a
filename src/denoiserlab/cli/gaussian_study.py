"""`denoiserlab gaussian-study CONFIG.toml --out DIR`: the hidden-Gaussian-structure study (Li et al. 2024).

Under torchrun the ranks run it as one study, as `denoiserlab study` does (`denoiserlab.studies.common.ranks`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from denoiserlab import process_group
from denoiserlab.cli.common import add_device_argument, with_device
from denoiserlab.config import load_toml
from denoiserlab.outputs import check_output_folder, check_replaceable_config
from denoiserlab.studies.gaussian_structure import GaussianStudyConfig, run_gaussian_study


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gaussian-study", help="linearity, linear distillation, Gaussian sampling and generalization of networks",
        description="Run (or resume: finished stages are cached under OUT/stages) the hidden-Gaussian-structure "
                    "study; writes OUT/results.json, OUT/report.html and OUT/figures/.")
    parser.add_argument("config", type=Path, help="study TOML file (see configs/gaussian-demo.toml)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_argument(parser, default=None, default_text="the config's device, 'cpu' unless it names one")
    parser.set_defaults(func=run, under_torchrun=True)


def run(args: argparse.Namespace) -> None:
    check_output_folder(args.out)
    config = with_device(load_toml(GaussianStudyConfig, args.config), args.device, args.config)
    if (args.out / "config.toml").resolve() == args.config.resolve():  # the study writes its resolved config there
        check_replaceable_config(args.config)
    config = replace(config, device=process_group.rank_device(config.device))  # under torchrun: this rank's GPU
    command = " ".join(["denoiserlab", *sys.argv[1:]]) if sys.argv[1:] else f"denoiserlab gaussian-study {args.config}"
    results = run_gaussian_study(config, args.out, command, progress=not args.no_progress)
    if not process_group.is_main_process():  # rank 0 reports; every rank computes
        return
    for name, checks in results["checks"].items():
        print(f"  {name}: lowest cosine linearity {checks['linearity_cosine_min']:.4f} (paper > 0.96), "
              f"generalization score {checks['generalization_score']:.3f} (paper threshold ~0.6)")
    print(f"results.json and report.html in {args.out}/")
