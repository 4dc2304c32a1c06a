"""`denoiserlab heatmaps`: a network's gradient heatmaps over an EDM sigma grid, written as a heatmap file.

The file is what a study's `heatmaps = "PATH"` reads instead of recomputing (see
denoiserlab.studies.locality_heatmaps). Each sigma is stored as soon as it is done (in OUT's `.parts` folder), so
rerunning the same command after a kill resumes at the first unfinished sigma.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.assets import resolve
from denoiserlab.data import load
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.diffusion.sigmas import check_steps
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import load as load_network
from denoiserlab.outputs import check_output_file, check_output_folder
from denoiserlab.studies.cache import StageCache, file_fingerprint
from denoiserlab.studies.locality_heatmaps import READINGS, save_heatmaps_file
from denoiserlab.validation import check_count, check_seed


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("heatmaps", help="compute a network's gradient heatmaps into a heatmap file")
    parser.add_argument("--network", required=True, help="checkpoint path or shipped:NAME")
    parser.add_argument("--trust-pickle", action="store_true", help="allow EDM .pkl files (they run code)")
    parser.add_argument("--out", type=Path, required=True, help="heatmap file to write (.npz or .pt)")
    parser.add_argument("--steps", type=int, default=18, help="EDM sigma grid, 80 -> 0.002 (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=1000, help="noisy images z per sigma (paper: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="z at grid point i use seed + i (as in the study)")
    parser.add_argument("--batch-size", type=int, default=8, help="z per forward pass")
    parser.add_argument("--products-per-pass", type=int, default=64, help="vector-Jacobian products at a time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.out.suffix not in (".npz", ".pt"):
        raise DenoiserLabError(f"--out must end in .npz or .pt, got {str(args.out)!r}")
    check_output_file(args.out)
    check_output_folder(parts_folder(args.out), "--out (its .parts folder)")
    for flag in ("n_samples", "batch_size", "products_per_pass"):
        check_count(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_seed(args.seed, "--seed")
    sigmas = edm_sigmas(check_steps(args.steps, "--steps"))
    network = load_network(args.network, trust_pickle=args.trust_pickle, device=args.device)
    network.eval().requires_grad_(False)
    if network.training_data is None:
        raise DenoiserLabError(f"{args.network} does not record its training set (training_data is None), so the"
                               " noisy inputs z = y0 + sigma * eps cannot be drawn from it")
    train = load(**network.training_data).as_float().to(args.device)
    cache = StageCache(parts_folder(args.out))
    key = {"network": file_fingerprint(resolve(args.network)),
           "n_samples": args.n_samples, "seed": args.seed, "batch_size": args.batch_size, "steps": args.steps}
    maps = {reading: [] for reading in READINGS}
    for level, sigma in enumerate(tqdm(sigmas.tolist(), desc=f"heatmaps of {args.network}")):
        result = cache.run(f"level-{level:02d}", {**key, "sigma": sigma}, lambda: _both_readings(
            network, train, sigma, args, args.seed + level))
        for reading in READINGS:
            maps[reading].append(result[reading])
    heatmaps = {"sigmas": sigmas, "n_samples": args.n_samples,
                **{reading: torch.stack(maps[reading]) for reading in READINGS}}
    command = "denoiserlab " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["heatmaps"] else "denoiserlab heatmaps"
    save_heatmaps_file(args.out, heatmaps, command)
    print(f"heatmaps [{args.steps}, H, W, H, W] of {args.network} ({args.n_samples} z per sigma) in {args.out}")


def parts_folder(out: Path) -> Path:
    """Where finished sigmas are kept until the heatmap file is written (a rerun resumes from it)."""
    return out.with_name(out.name + ".parts")


def _both_readings(network, train, sigma: float, args: argparse.Namespace, seed: int) -> dict:
    result = gradient_heatmaps(network, train, sigma, args.n_samples, seed, args.batch_size, args.products_per_pass)
    return {reading: getattr(result, reading).float().cpu() for reading in READINGS}
