"""`denoiserlab study CONFIG.toml --out DIR`: the locality study (networks vs analytical denoisers), resumable.

Under torchrun (`torchrun --nproc-per-node K -m denoiserlab study ...`) the K ranks run it as one study: networks
data-parallel over each batch, analytical denoisers sharded over the training set, rank 0 alone keeping the stage
files and writing the outputs (`denoiserlab.studies.common.ranks`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from denoiserlab import process_group
from denoiserlab.cli.common import add_device_argument, with_device
from denoiserlab.config import load_toml
from denoiserlab.outputs import check_output_folder
from denoiserlab.studies.locality import LocalityStudyConfig, run_locality_study


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "study", help="run the locality study of a TOML config (resumes a stopped run in the same --out)")
    parser.add_argument("config", type=Path, help="study config (see configs/locality-*.toml)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (results.json, report.html, stages/)")
    parser.add_argument("--feature-model", default=None,
                        help="TorchScript image encoder for the feature cosine of samples (overrides the config)")
    add_device_argument(parser, default=None, default_text="the config's device, 'cpu' unless it names one")
    parser.set_defaults(func=run, under_torchrun=True)


def run(args: argparse.Namespace) -> None:
    check_output_folder(args.out)
    config = with_device(load_toml(LocalityStudyConfig, args.config), args.device, args.config)
    config = replace(config, device=process_group.rank_device(config.device))  # under torchrun: this rank's GPU
    if not process_group.is_main_process():  # rank 0 reports; every rank computes
        run_locality_study(config, args.out, feature_model=args.feature_model)
        return
    names = ", ".join(network.name for network in config.networks)
    data = config.data.source if config.data else "the networks' training set"
    print(f"denoiserlab study: {args.config} on {data}, networks {names}; output in {args.out}/")
    command = shlex.join(["denoiserlab", *sys.argv[1:]]) if sys.argv[1:2] == ["study"] else None
    results = run_locality_study(config, args.out, feature_model=args.feature_model, command=command)
    for name in results["networks"]:
        checks = results["checks"][name]
        print(f"  {name}: network departs most from the optimal denoiser at sigma = {checks['peak_sigma_forward']:.3g};"
              f" closest to it there: {' < '.join(checks['ranking_at_peak_forward'])}")
    computed = results["stages_computed"]
    print(f"  stages computed this run: {len(computed)}, loaded from {args.out}/stages/: "
          f"{len(results['stages']) - len(computed)}; total {results['timings_s']['total']:.1f} s")
    print(f"report: {args.out / 'report.html'}")
