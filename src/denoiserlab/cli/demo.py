"""`denoiserlab demo`: the main job on the embedded Fashion-MNIST subset (run by `make demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from denoiserlab import process_group
from denoiserlab.cli.common import add_device_argument
from denoiserlab.outputs import check_output_folder
from denoiserlab.errors import DenoiserLabError
from denoiserlab.studies.demo import DEMO_DATASETS, run_demo
from denoiserlab.studies.sampling_demo import SamplingDemoConfig, run_sampling_demo
from denoiserlab.validation import check_count, check_device


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the locality and Gaussian-structure studies on the embedded Fashion-MNIST subset",
        description="Both studies with the shipped networks (about 3.5 minutes on 2 idle CPU cores, up to 10 on "
                    "busy ones; a rerun resumes). "
                    "--quick instead samples every denoiser from shared noise (under a minute). --dataset emoji "
                    "runs the studies on the colour emoji set (about 30 minutes). Under torchrun "
                    "(`torchrun --nproc-per-node K -m denoiserlab demo`) the ranks run each study together.")
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="only the sampling demo (samples from shared noise)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=tuple(DEMO_DATASETS),
                        help="the two studies on this dataset with its shipped networks (default: fashion-mnist)")
    parser.add_argument("--locality-config", type=Path, default=None,
                        help="run this locality-study TOML instead of the dataset's shipped one")
    parser.add_argument("--gaussian-config", type=Path, default=None,
                        help="run this Gaussian-structure-study TOML instead of the dataset's shipped one")
    parser.add_argument("--n", type=int, default=SamplingDemoConfig.n_samples, help="samples per method (--quick)")
    parser.add_argument("--jobs", type=int, default=None, choices=(1, 2),
                        help="studies run at once (default: 2, side by side, on a machine with two or more cores)")
    add_device_argument(parser)
    parser.set_defaults(func=run, under_torchrun=True)


def run(args: argparse.Namespace) -> None:
    check_count(args.n, "--n")
    check_device(args.device)
    check_output_folder(args.out)
    if args.quick:
        if args.dataset != "fashion-mnist" or args.locality_config or args.gaussian_config:
            raise DenoiserLabError("--quick samples the shipped Fashion-MNIST U-Net; --dataset and the configs apply "
                                   "to the studies")
        if process_group.in_process_group():
            raise DenoiserLabError("demo --quick runs as one process (under torchrun, run the studies)")
        run_quick(args)
        return
    run_demo(args.out, jobs=args.jobs, device=process_group.rank_device(args.device), dataset=args.dataset,
             locality_config=args.locality_config, gaussian_config=args.gaussian_config)
    if not process_group.is_main_process():
        return
    print(f"report: {args.out / 'index.html'} (links {args.out / 'locality/report.html'} and "
          f"{args.out / 'gaussian/report.html'})")


def run_quick(args: argparse.Namespace) -> None:
    config = SamplingDemoConfig(n_samples=args.n, device=args.device)
    print(f"denoiserlab demo --quick: {config.n_samples} samples per method from shared noise on {config.data}")
    results = run_sampling_demo(config, args.out)
    for name, distance in results["nearest_neighbour"].items():
        print(f"  {name:12s} mean distance to nearest training image: {distance:.3f}")
    print(f"figures and results.json in {args.out}/")
