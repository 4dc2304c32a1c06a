"""`denoiserlab demo`: the main job on the embedded Fashion-MNIST subset (run by `make demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from denoiserlab.studies.sampling_demo import SamplingDemoConfig, run_sampling_demo


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the embedded Fashion-MNIST subset")
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--n", type=int, default=SamplingDemoConfig.n_samples, help="samples per method")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = SamplingDemoConfig(n_samples=args.n)
    print(f"denoiserlab demo: {config.n_samples} samples per method from shared noise on {config.data}")
    results = run_sampling_demo(config, args.out)
    for name, distance in results["nearest_neighbour"].items():
        print(f"  {name:12s} mean distance to nearest training image: {distance:.3f}")
    print(f"figures and results.json in {args.out}/")
