"""`denoiserlab demo`: the main job on the embedded Fashion-MNIST subset (run by `make demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from denoiserlab.cli.common import add_device_argument
from denoiserlab.outputs import check_output_folder
from denoiserlab.errors import DenoiserLabError
from denoiserlab.studies.demo import DEMO_DATASETS, run_demo
from denoiserlab.studies.sampling_demo import SamplingDemoConfig, run_sampling_demo
from denoiserlab.validation import check_count, check_device


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the locality and Gaussian-structure studies on the embedded Fashion-MNIST subset",
        description="Both studies with the shipped networks (about 9.5 minutes on 2 CPU cores; a rerun resumes). "
                    "--quick instead samples every denoiser from shared noise (under a minute). --dataset emoji "
                    "runs the studies on the colour emoji set once its networks ship.")
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="only the sampling demo (samples from shared noise)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=tuple(DEMO_DATASETS),
                        help="the two studies on this dataset with its shipped networks (default: fashion-mnist)")
    parser.add_argument("--n", type=int, default=SamplingDemoConfig.n_samples, help="samples per method (--quick)")
    parser.add_argument("--jobs", type=int, default=None, choices=(1, 2),
                        help="studies run at once (default: 2, side by side, on a machine with two or more cores)")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_count(args.n, "--n")
    check_device(args.device)
    check_output_folder(args.out)
    if args.quick:
        if args.dataset != "fashion-mnist":
            raise DenoiserLabError("--quick samples the shipped Fashion-MNIST U-Net; --dataset applies to the studies")
        run_quick(args)
        return
    run_demo(args.out, jobs=args.jobs, device=args.device, dataset=args.dataset)
    print(f"report: {args.out / 'index.html'} (links {args.out / 'locality/report.html'} and "
          f"{args.out / 'gaussian/report.html'})")


def run_quick(args: argparse.Namespace) -> None:
    config = SamplingDemoConfig(n_samples=args.n, device=args.device)
    print(f"denoiserlab demo --quick: {config.n_samples} samples per method from shared noise on {config.data}")
    results = run_sampling_demo(config, args.out)
    for name, distance in results["nearest_neighbour"].items():
        print(f"  {name:12s} mean distance to nearest training image: {distance:.3f}")
    print(f"figures and results.json in {args.out}/")
