"""`denoiserlab heatmaps`: a network's gradient heatmaps over an EDM sigma grid, written as a heatmap file.

The file is what a study's `heatmaps = "PATH"` reads instead of recomputing (see
denoiserlab.studies.locality.heatmaps). Each sigma is stored as soon as it is done (in OUT's `.parts` folder), so
rerunning the same command after a kill resumes at the first unfinished sigma (under --until-converged, at the first
unfinished round of z within it), and within that at the running sums of its z, kept at most a minute old.

With --until-converged TOL the z count is a measured choice per sigma (analysis.heatmaps_until_converged): starting
from --start-samples z (label-stratified systematic draws), it doubles until PSPC-Flex's MSE to the network at the
fitted threshold changes by less than TOL, at most up to --n-samples; the file then carries the evidence
(criterion, bootstrap standard error, half-split crop IoU, running-mean convergence) that the study's report shows.
Rerun with a larger --n-samples to go on where the criterion was not met: a sigma that met it under a smaller
--n-samples of the form --start-samples * 2^k (other options equal) is taken from the .parts folder as it is (a
larger cap would not have drawn more z for it), the others go on under the new cap from the rounds of z the smaller
cap's run kept for them (the same seeds, so the result equals a run with the new cap from the start); the high-z
reference does not depend on the cap and is reused.

Under torchrun (`torchrun --nproc-per-node K -m denoiserlab -- heatmaps ...`) the K ranks share the grid levels
round-robin (rank r computes levels r, r + K, ... of --levels or of the whole grid, each on its own device), all
storing into OUT's `.parts` folder, which must be on a file system every rank sees; the rank that finishes last finds
every level stored and writes OUT, as separate runs with --levels do. No collective waits for the slower ranks, so a
level may take longer than the group's collective timeout.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.analysis.heatmaps import GradientHeatmaps
from denoiserlab.analysis.heatmap_convergence import (criterion_readings, heatmap_convergence,
                                                      heatmaps_until_converged, mask_iou, relative_distance)
from denoiserlab.cli.common import add_device_argument
from denoiserlab import process_group
from denoiserlab.assets import resolve
from denoiserlab.data import load
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.diffusion.sigmas import check_steps
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import load as load_network
from denoiserlab.networks.precision import PRECISIONS, with_precision
from denoiserlab.outputs import check_output_file, check_output_folder
from denoiserlab.studies.common.cache import StageCache, checkpoint_fingerprint, write_stage
from denoiserlab.studies.locality.heatmaps import PER_SIGMA_KEYS, READINGS, save_heatmaps_file
from denoiserlab.validation import check_count, check_device, check_seed


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("heatmaps", help="compute a network's gradient heatmaps into a heatmap file")
    parser.add_argument("--network", required=True, help="checkpoint path or shipped:NAME")
    parser.add_argument("--trust-pickle", action="store_true", help="allow EDM .pkl files (they run code)")
    parser.add_argument("--out", type=Path, required=True, help="heatmap file to write (.npz or .pt)")
    parser.add_argument("--steps", type=int, default=18, help="EDM sigma grid, 80 -> 0.002 (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=1000, help="noisy images z per sigma (paper: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="z at grid point i use seed + i (as in the study)")
    parser.add_argument("--batch-size", type=int, default=8, help="z per forward pass")
    parser.add_argument("--products-per-pass", type=int, default=None,
                        help="vector-Jacobian products at a time (default: 32 / --batch-size on a CPU, at least 1; "
                             "64 on a GPU)")
    parser.add_argument("--until-converged", type=float, default=None, metavar="TOL",
                        help="double z per sigma until PSPC-Flex's MSE to the network changes by < TOL (e.g. 0.02);"
                             " --n-samples is then the most z per sigma")
    parser.add_argument("--start-samples", type=int, default=16, help="z of the first round (--until-converged)")
    parser.add_argument("--groups", type=int, default=8, help="groups of z for standard errors (--until-converged)")
    parser.add_argument("--check-pairs", type=int, default=16,
                        help="forward-process inputs of the PSPC-Flex check (--until-converged)")
    parser.add_argument("--levels", default=None, metavar="I-J",
                        help="compute only grid levels I..J (0 = the largest sigma), e.g. to split the work over "
                             "processes or machines sharing OUT's .parts folder (started together or not); the "
                             "file is written by the run that finds every level finished")
    parser.add_argument("--reference-sigma", type=float, default=None,
                        help="also compute a high-z reference map at the grid sigma nearest this one, with an "
                             "independent seed, and store how far the file's map there is from it")
    parser.add_argument("--reference-samples", type=int, default=256, help="z of the reference (default: %(default)s)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                        help="the raw network's floating-point format (networks trained here): bfloat16 takes "
                             "~1.4x fewer seconds per z on a CPU with bfloat16 units and moves the maps by "
                             "~0.5-0.7 %% (benchmarks/bench_heatmaps_precision.py); default: %(default)s")
    add_device_argument(parser)
    parser.set_defaults(func=run, under_torchrun=True)


def run(args: argparse.Namespace) -> None:
    if args.out.suffix not in (".npz", ".pt"):
        raise DenoiserLabError(f"--out must end in .npz or .pt, got {str(args.out)!r}")
    check_output_file(args.out)
    check_output_folder(parts_folder(args.out), "--out (its .parts folder)")
    for flag in ("n_samples", "batch_size", "products_per_pass"):
        if getattr(args, flag) is not None:
            check_count(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_seed(args.seed, "--seed")
    check_device(args.device)
    if args.until_converged is not None:
        check_adaptive_options(args)
    sigmas = edm_sigmas(check_steps(args.steps, "--steps"))
    reference_level = check_reference_options(args, sigmas)
    own_levels = level_range(args.levels, len(sigmas))[process_group.rank()::process_group.world_size()]
    args.device = process_group.rank_device(args.device)  # under torchrun, "cuda" is this rank's GPU
    network = load_network(args.network, trust_pickle=args.trust_pickle, device=args.device)
    network = with_precision(network.eval().requires_grad_(False), args.precision)
    if network.training_data is None:
        raise DenoiserLabError(f"{args.network} does not record its training set (training_data is None), so the"
                               " noisy inputs z = y0 + sigma * eps cannot be drawn from it")
    imageset = load(**network.training_data)
    train = imageset.as_float().to(args.device)
    cache = StageCache(parts_folder(args.out))
    network_fingerprint = checkpoint_fingerprint(resolve(args.network))
    key = {"network": network_fingerprint,
           "n_samples": args.n_samples, "seed": args.seed, "batch_size": args.batch_size, "steps": args.steps}
    round_key = {"network": network_fingerprint, "batch_size": args.batch_size, "groups": args.groups,
                 "sampling": "systematic"}  # with sigma, a round's z count and seed: what its maps depend on
    if args.precision != "float32":  # float32 keys as before, so earlier runs' .parts folders still resume
        key["precision"] = round_key["precision"] = args.precision
    if args.until_converged is not None:
        key.update(until_converged=args.until_converged, start_samples=args.start_samples, groups=args.groups,
                   check_pairs=args.check_pairs, sampling="systematic")

    def compute_level(level: int, sigma: float, rounds: LevelRounds, sums: StoredSums):
        if args.until_converged is None:
            return lambda: _both_readings(network, train, sigma, args, args.seed + level, sums)
        return lambda: _converged_level(network, train, imageset.labels, sigma, args, args.seed + level, rounds)

    level_keys = [(f"level-{level:02d}", {**key, "sigma": sigma}) for level, sigma in enumerate(sigmas.tolist())]

    def stored_level(level: int) -> tuple[bool, dict | None]:
        finished, table = cache.stored(*level_keys[level])
        if not finished and args.until_converged is not None:
            finished, table = converged_under_smaller_cap(cache, *level_keys[level], args)
        return finished, table

    own = {}
    for level, sigma in enumerate(tqdm(sigmas.tolist(), desc=f"heatmaps of {args.network}",
                                       disable=not process_group.is_main_process())):
        if level in own_levels:
            finished, table = stored_level(level)
            if not finished:
                rounds = LevelRounds(cache, f"level-{level:02d}-round", {**round_key, "sigma": sigma})
                sums = StoredSums(cache, *level_keys[level])
                table = cache.run(*level_keys[level], compute_level(level, sigma, rounds, sums))
                sums.remove()
                if bool(table.get("converged", True)):  # a larger --n-samples would not draw more z for this sigma
                    rounds.remove()
            own[level] = table
    if reference_level is not None:
        reference_key = {**key, "sigma": sigmas[reference_level].item(), "reference_samples": args.reference_samples}
        reference_sums = StoredSums(cache, "reference", reference_key)
        compute_reference = lambda: _reference_map(  # noqa: E731
            network, train, imageset.labels, sigmas[reference_level].item(), args,
            args.seed + REFERENCE_SEED_OFFSET + reference_level, reference_sums)
        if reference_level in own_levels:
            finished, reference = stored_under_any_cap(cache, "reference", reference_key, args)
            reference = reference if finished else cache.run("reference", reference_key, compute_reference)
            reference_sums.remove()
    # other processes' levels are looked up only now, after this run's own: whichever run finishes last writes OUT
    levels, missing = [], []
    for level in range(len(sigmas)):
        finished, table = (True, own[level]) if level in own else stored_level(level)
        levels.append(table)
        missing += [] if finished else [level]
    if reference_level is not None and reference_level not in own_levels:
        finished, reference = stored_under_any_cap(cache, "reference", reference_key, args)
        missing += [] if finished else ["reference"]
    if missing:
        print(f"levels {list(own_levels)} of {args.network} done; not finished yet: {missing} (the run that "
              f"finishes them writes {args.out}, or rerun without --levels)")
        return
    heatmaps = {"sigmas": sigmas, **{reading: torch.stack([table[reading] for table in levels])
                                     for reading in READINGS}}
    if args.until_converged is None:
        heatmaps["n_samples"] = args.n_samples
    else:
        heatmaps["n_samples"] = torch.tensor([int(table["n_samples"]) for table in levels])
        heatmaps["convergence"] = {**stacked_convergence(levels), "tolerance": torch.tensor(args.until_converged)}
    if reference_level is not None:
        heatmaps["convergence"] = heatmaps.get("convergence", {})
        for reading in reference:  # same_channel, and all_channels for colour images
            prefix = "" if reading == "same_channel" else reading + "_"
            heatmaps["convergence"].update({prefix + key: value for key, value in reference_evidence(
                heatmaps[reading][reference_level], reference[reading], sigmas[reference_level].item(),
                args.reference_samples).items()})
    command = "denoiserlab " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["heatmaps"] else "denoiserlab heatmaps"
    save_heatmaps_file(args.out, heatmaps, command, network_fingerprint)
    counts = heatmaps["n_samples"]
    described = (f"{int(counts.min())}-{int(counts.max())} z per sigma" if isinstance(counts, torch.Tensor)
                 else f"{counts} z per sigma")
    print(f"heatmaps [{args.steps}, H, W, H, W] of {args.network} ({described}) in {args.out}")


def smaller_caps(args: argparse.Namespace) -> list[int]:
    """The --n-samples below this run's that doubling from --start-samples reaches: start * 2^k, k >= 1."""
    caps, cap = [], 2 * args.start_samples
    while cap < args.n_samples:
        caps.append(cap)
        cap *= 2
    return caps


def converged_under_smaller_cap(cache: StageCache, name: str, key: dict, args: argparse.Namespace):
    """A level finished under a smaller cap (smaller_caps), other options equal, whose criterion was met: (True, its
    table), as a larger cap would not have drawn more z for it; else (False, None)."""
    for cap in smaller_caps(args):
        finished, table = cache.stored(name, {**key, "n_samples": cap})
        if finished and bool(table["converged"]):
            return True, table
    return False, None


def stored_under_any_cap(cache: StageCache, name: str, key: dict, args: argparse.Namespace):
    """A stage that does not depend on the cap (the reference), finished under this cap or a smaller one."""
    for cap in [args.n_samples, *smaller_caps(args)] if args.until_converged is not None else [args.n_samples]:
        finished, value = cache.stored(name, {**key, "n_samples": cap})
        if finished:
            return True, value
    return False, None


class LevelRounds:
    """The finished rounds of z of one sigma under --until-converged (analysis.heatmaps_until_converged's
    round_cache), kept in the .parts folder: a sigma killed after hours resumes at its first unfinished round, and a
    rerun with a larger --n-samples draws only the rounds beyond the smaller cap. A round's maps depend on the
    network, sigma, its z count and seed, the batch size and the groups, not on the cap or the tolerance (`key`).
    Rounds of a sigma that met the criterion are removed once the sigma is stored (no larger cap needs them)."""

    def __init__(self, cache: StageCache, name: str, key: dict):
        self.cache, self.name, self.key = cache, name, key
        self.paths: list[Path] = []

    def __call__(self, n_samples: int, round_seed: int, draw: Callable[..., GradientHeatmaps]) -> GradientHeatmaps:
        key = {**self.key, "round_samples": n_samples, "round_seed": round_seed}
        self.paths.append(self.cache.path(self.name, key))
        sums = StoredSums(self.cache, self.name, key)
        maps = GradientHeatmaps(**self.cache.run(self.name, key, lambda: heatmap_fields(draw(sums))))
        sums.remove()
        return maps

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


SUMS_INTERVAL_SECONDS = 60.0  # running sums are written at most this often (a colour batch of z: minutes)


class StoredSums:
    """gradient_heatmaps' running sums of one computation (analysis.heatmaps.RunningSums) as a stage file in the
    .parts folder, named after the stage it leads to ("partial-" + name, same key): written atomically after a batch
    of z when SUMS_INTERVAL_SECONDS have passed since the last write, removed once that stage is stored. A kill then
    loses only the z since the last write (one batch of colour z, ~9 minutes for the emoji U-Net; a minute's worth
    where batches are faster), not the whole computation (a round of 64 colour z is an hour)."""

    def __init__(self, cache: StageCache, name: str, key: dict):
        self.cache, self.name, self.key = cache, "partial-" + name, key
        self.last_write = time.monotonic()

    def load(self) -> tuple[int, torch.Tensor] | None:
        finished, value = self.cache.stored(self.name, self.key)
        if not finished or not isinstance(value, dict):
            return None  # gradient_heatmaps checks the rest of what a file holds
        return value.get("z_done"), value.get("sums")

    def save(self, z_done: int, sums: torch.Tensor) -> None:
        if time.monotonic() - self.last_write >= SUMS_INTERVAL_SECONDS:
            write_stage(self.cache.path(self.name, self.key), self.key, {"z_done": z_done, "sums": sums}, 0.0)
            self.last_write = time.monotonic()

    def remove(self) -> None:
        self.cache.path(self.name, self.key).unlink(missing_ok=True)


def heatmap_fields(maps: GradientHeatmaps) -> dict:
    """GradientHeatmaps as a dict of its fields (tensors, the z count and None), as a stage file stores it."""
    return {name: getattr(maps, name) for name in GradientHeatmaps.__dataclass_fields__}


def parts_folder(out: Path) -> Path:
    """Where finished sigmas are kept until the heatmap file is written (a rerun resumes from it)."""
    return out.with_name(out.name + ".parts")


def _both_readings(network, train, sigma: float, args: argparse.Namespace, seed: int, sums: StoredSums) -> dict:
    result = gradient_heatmaps(network, train, sigma, args.n_samples, seed, args.batch_size, args.products_per_pass,
                               progress=process_group.is_main_process(), running_sums=sums)
    return {reading: getattr(result, reading).float().cpu() for reading in READINGS}


IOU_THRESHOLDS = (0.3, 0.6, 0.9)  # crop IoU between half estimates is reported at these PSPC-Flex thresholds
REFERENCE_SEED_OFFSET = 10_000  # the reference's z are drawn independently of every grid level's


def level_range(spec: str | None, n_levels: int) -> range:
    """The grid levels of --levels I-J (inclusive, 0 = the largest sigma), every level without it; checked first."""
    if spec is None:
        return range(n_levels)
    first, _, last = spec.partition("-")
    try:
        first, last = int(first), int(last or first)
    except ValueError:
        raise DenoiserLabError(f"--levels must be I-J (grid indices), got {spec!r}") from None
    if not 0 <= first <= last < n_levels:
        raise DenoiserLabError(f"--levels {spec!r} must satisfy 0 <= I <= J < {n_levels} (the grid's levels)")
    return range(first, last + 1)


def check_reference_options(args: argparse.Namespace, sigmas: torch.Tensor) -> int | None:
    """The grid level of --reference-sigma (the nearest sigma on a log scale), or None; checked before any work."""
    if args.reference_sigma is None:
        return None
    check_count(args.reference_samples, "--reference-samples")
    if not (args.reference_sigma > 0 and args.reference_sigma < float("inf")):
        raise DenoiserLabError(f"--reference-sigma must be a finite sigma > 0, got {args.reference_sigma}")
    return int((sigmas.log() - torch.tensor(args.reference_sigma).log()).abs().argmin())


def _reference_map(network, train, labels, sigma: float, args: argparse.Namespace, seed: int,
                   sums: StoredSums) -> dict:
    """The map at one sigma from --reference-samples label-stratified z (an independent estimate), in the readings
    that build masks (criterion_readings)."""
    result = gradient_heatmaps(network, train, sigma, args.reference_samples, seed, args.batch_size,
                               args.products_per_pass, sampling="systematic", labels=labels,
                               progress=process_group.is_main_process(), running_sums=sums)
    return {reading: getattr(result, reading).float().cpu() for reading in criterion_readings(train)}


def reference_evidence(shipped: torch.Tensor, reference: torch.Tensor, sigma: float, n_samples: int) -> dict:
    """How far the file's map [H, W, H, W] at one sigma is from a high-z reference there: relative distance and
    PSPC-Flex crop IoU at IOU_THRESHOLDS (the heatmap file's reference_* arrays)."""
    return {"reference_sigma": torch.tensor(sigma), "reference_n_samples": torch.tensor(n_samples),
            "reference_distance": torch.tensor(relative_distance(shipped, reference)),
            "reference_iou": torch.tensor([mask_iou(shipped, reference, lam) for lam in IOU_THRESHOLDS]),
            "iou_thresholds": torch.tensor(IOU_THRESHOLDS)}


def check_adaptive_options(args: argparse.Namespace) -> None:
    """--until-converged's options, checked before any work."""
    if not 0 < args.until_converged < 1:
        raise DenoiserLabError(f"--until-converged must be a relative change in (0, 1), e.g. 0.02; got "
                               f"{args.until_converged}")
    for flag in ("start_samples", "groups", "check_pairs"):
        check_count(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.groups < 2 or args.start_samples % args.groups:
        raise DenoiserLabError(f"--start-samples ({args.start_samples}) must be a multiple of --groups "
                               f"({args.groups}), and --groups at least 2")
    if args.n_samples < 2 * args.start_samples:
        raise DenoiserLabError(f"--n-samples ({args.n_samples}) must allow one doubling of --start-samples "
                               f"({args.start_samples})")


def _converged_level(network, train, labels, sigma: float, args: argparse.Namespace, seed: int,
                     rounds: LevelRounds) -> dict:
    """One sigma with the z count doubled until the PSPC-Flex criterion holds under every reading that builds masks,
    and its convergence evidence (for colour images the all_channels reading's too, its keys prefixed)."""
    result = heatmaps_until_converged(network, train, sigma, labels, args.start_samples, args.n_samples,
                                      args.until_converged, args.groups, args.check_pairs, seed, args.batch_size,
                                      args.products_per_pass, round_cache=rounds,
                                      progress=process_group.is_main_process())
    maps, last = result["heatmaps"], result["history"][-1]
    table = {"same_channel": maps.same_channel.float().cpu(), "all_channels": maps.all_channels.float().cpu(),
             "n_samples": torch.tensor(result["n_samples"]), "converged": torch.tensor(result["converged"])}
    for reading, entry in last["by_reading"].items():
        prefix = "" if reading == "same_channel" else reading + "_"
        summary = heatmap_convergence(getattr(maps, "groups_" + reading), IOU_THRESHOLDS)
        table.update({prefix + "flex_change": torch.tensor(entry["change"]),
                      prefix + "flex_fitted_threshold": torch.tensor(entry["fitted_threshold"]),
                      prefix + "relative_se": torch.tensor(summary["relative_se"]),
                      prefix + "half_iou": torch.tensor(summary["half_iou"]),
                      prefix + "running_distances": torch.tensor(summary["running_distances"])})
        table["running_counts"] = torch.tensor(summary["running_counts"])
    return table


def stacked_convergence(levels: list[dict]) -> dict:
    """The per-sigma convergence evidence of every level as the heatmap file's arrays."""
    per_sigma = [key for key in PER_SIGMA_KEYS if key in levels[0]]
    return {**{key: torch.stack([table[key] for table in levels]) for key in per_sigma},
            "iou_thresholds": torch.tensor(IOU_THRESHOLDS), "running_counts": levels[0]["running_counts"]}
