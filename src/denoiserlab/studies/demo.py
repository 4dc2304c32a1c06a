"""`make demo`: the locality study and the hidden-Gaussian-structure study on the embedded Fashion-MNIST subset
with the shipped networks, heatmaps and sweep checkpoints; one index page links both reports. `--dataset emoji`
runs the same two studies on the emoji set with the emoji networks, once they ship.

The study configs ship inside the package (assets/configs/demo-*.toml), so the demo needs no repository
checkout; both studies cache their stages under OUT/<study>/stages, so a rerun resumes (or only re-renders).
Before any work the demo checks that every shipped file its configs name (`shipped:` checkpoints, heatmaps,
feature models) is in the package, and otherwise stops naming the missing ones and the commands that make them.

The studies are independent, so on a machine with two or more cores they run side by side in two processes, each
with half of the intra-op threads (one each on 2 cores). On a shared machine a second intra-op thread per process
mostly spin-waits (measured: 10x the CPU time of one thread for the shipped U-Net while other jobs ran), so one
thread per study is both the fastest and the politest choice there. Every stage computed prints one line; the end
prints the time per stage group, wall and CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from denoiserlab.assets import SHIPPED_PREFIX, assets_folder, shipped_path
from denoiserlab.config import load_toml
from denoiserlab.errors import DenoiserLabError
from denoiserlab.process_group import in_process_group, is_main_process, world_size
from denoiserlab.report.demo import stage_groups, timing_rows, write_demo_index
from denoiserlab.studies.gaussian_structure import GaussianStudyConfig, run_gaussian_study
from denoiserlab.studies.locality import LocalityStudyConfig, run_locality_study
from denoiserlab.validation import check_device

LOCALITY_CONFIG = "demo-locality.toml"
GAUSSIAN_CONFIG = "demo-gaussian.toml"


@dataclass(frozen=True)
class DemoDataset:
    """The demo on one dataset: its two shipped study configs."""

    title: str  # the dataset as the index page names it
    locality_config: str  # assets/configs/NAME of the locality study
    gaussian_config: str  # assets/configs/NAME of the hidden-Gaussian-structure study


SHIPS_WITH_THE_PACKAGE = "reinstall denoiserlab: these files ship with it"  # said when shipped files are missing
DEMO_DATASETS = {
    "fashion-mnist": DemoDataset("Fashion-MNIST", LOCALITY_CONFIG, GAUSSIAN_CONFIG),
    "emoji": DemoDataset("emoji", "demo-locality-emoji.toml", "demo-gaussian-emoji.toml"),
}


def demo_config_path(name: str) -> Path:
    """A config shipped for the demo (src/denoiserlab/assets/configs/NAME)."""
    return shipped_path(name, "configs")


@dataclass(frozen=True)
class DemoConfigFiles:
    """The two study configs (TOML files) one demo runs."""

    locality: Path  # the locality study
    gaussian: Path  # the hidden-Gaussian-structure study
    title: str  # what the index page says the demo ran on
    shipped: bool  # both are the package's own configs for a DEMO_DATASETS name


def demo_config_files(dataset: str, locality: str | Path | None = None,
                      gaussian: str | Path | None = None) -> DemoConfigFiles:
    """The configs of the demo on `dataset` (a DEMO_DATASETS name), where `locality` or `gaussian` (TOML paths)
    replace the shipped config of that study."""
    if dataset not in DEMO_DATASETS:
        raise DenoiserLabError(f"the demo runs on {', '.join(DEMO_DATASETS)}, got {dataset!r}")
    spec = DEMO_DATASETS[dataset]
    files = DemoConfigFiles(Path(locality) if locality else demo_config_path(spec.locality_config),
                            Path(gaussian) if gaussian else demo_config_path(spec.gaussian_config), spec.title,
                            shipped=locality is None and gaussian is None)
    if files.shipped:
        return files
    for path in (files.locality, files.gaussian):
        if not path.is_file():
            raise DenoiserLabError(f"study config {path} is not a file")
    return replace(files, title=f"{files.locality.name} and {files.gaussian.name}")


def load_demo_configs(files: DemoConfigFiles) -> tuple[LocalityStudyConfig, GaussianStudyConfig]:
    """The two study configs of a demo, parsed and checked."""
    return load_toml(LocalityStudyConfig, files.locality), load_toml(GaussianStudyConfig, files.gaussian)


def demo_configs(dataset: str) -> tuple[LocalityStudyConfig, GaussianStudyConfig]:
    """The two shipped study configs of the demo on `dataset` (a DEMO_DATASETS name)."""
    return load_demo_configs(demo_config_files(dataset))


def shipped_names(locality: LocalityStudyConfig, gaussian: GaussianStudyConfig) -> dict[str, list[str]]:
    """{assets folder: [shipped:NAME specs]} of every shipped file the two configs name."""
    specs = {"checkpoints": [network.path for network in (*locality.networks, *gaussian.networks)]
             + [entry.path for entry in gaussian.sweeps.entries],
             "heatmaps": [network.heatmaps for network in (*locality.networks, *gaussian.networks)],
             "feature_models": [locality.similarity.feature_model, gaussian.strong_generalization.feature_model]}
    return {folder: list(dict.fromkeys(spec for spec in named if spec and spec.startswith(SHIPPED_PREFIX)))
            for folder, named in specs.items()}


def missing_shipped(locality: LocalityStudyConfig, gaussian: GaussianStudyConfig) -> dict[str, list[str]]:
    """{assets folder: [NAME]} of the shipped files the two configs name that this package lacks."""
    missing = {}
    for folder, specs in shipped_names(locality, gaussian).items():
        names = [spec[len(SHIPPED_PREFIX):] for spec in specs]
        absent = [name for name in names if not (assets_folder(folder) / name).exists()]
        if absent:
            missing[folder] = absent
    return missing


def check_demo_configs(dataset: str, files: DemoConfigFiles) -> None:
    """Stop before any work, naming the missing files (and, for the shipped configs of `dataset`, that reinstalling
    brings them back), when the demo's configs name shipped files this package lacks."""
    missing = missing_shipped(*load_demo_configs(files))
    if missing:
        listed = "; ".join(f"{folder} {', '.join(names)}" for folder, names in missing.items())
        what = f"demo --dataset {dataset}" if files.shipped else f"the demo on {files.title}"
        how = SHIPS_WITH_THE_PACKAGE if files.shipped else "name files that exist instead"
        raise DenoiserLabError(f"{what} needs shipped files this package lacks ({listed} under "
                               f"src/denoiserlab/assets/): {how}")


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_locality_part(out: Path, progress: bool, device: str, files: DemoConfigFiles) -> tuple[dict, float, float]:
    """The demo's locality study into OUT/locality on `device`: (results, wall seconds, CPU seconds of this
    process)."""
    started, cpu = time.perf_counter(), time.process_time()
    config = replace(load_toml(LocalityStudyConfig, files.locality), device=device)
    results = run_locality_study(config, out / "locality", command="denoiserlab demo", log=stage_logger("locality"),
                                 progress=progress)
    return results, time.perf_counter() - started, time.process_time() - cpu


def run_gaussian_part(out: Path, progress: bool, device: str, files: DemoConfigFiles) -> tuple[dict, float, float]:
    """The demo's Gaussian-structure study into OUT/gaussian on `device`: (results, wall seconds, CPU seconds of
    this process)."""
    started, cpu = time.perf_counter(), time.process_time()
    config = replace(load_toml(GaussianStudyConfig, files.gaussian), device=device)
    results = run_gaussian_study(config, out / "gaussian", "denoiserlab demo", progress=progress,
                                 log=stage_logger("gaussian"))
    return results, time.perf_counter() - started, time.process_time() - cpu


def stage_logger(study: str):
    """One printed line per stage computed, prefixed with the study (by rank 0 alone under torchrun)."""
    return lambda line: print(f"  [{study}] {line}", flush=True) if is_main_process() else None


def set_threads(threads: int) -> None:
    """Worker initializer: the intra-op (and compiled-kernel) thread count of a study process."""
    torch.set_num_threads(threads)


def run_parts(out: Path, jobs: int, progress: bool, device: str,
              files: DemoConfigFiles) -> dict[str, tuple[dict, float, float]]:
    """Both studies of the demo on `device`, side by side in `jobs` >= 2 processes (spawned: no state shared), or
    one after the other."""
    parts = {"locality": run_locality_part, "gaussian": run_gaussian_part}
    if jobs < 2:
        return {name: part(out, progress, device, files) for name, part in parts.items()}
    threads = max(1, torch.get_num_threads() // 2)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context, initializer=set_threads, initargs=(threads,)) as pool:
        futures = {name: pool.submit(part, out, False, device, files)
                   for name, part in parts.items()}  # bars would interleave
        return {name: future.result() for name, future in futures.items()}


def run_demo(out: str | Path, progress: bool = True, jobs: int | None = None, device: str = "cpu",
             dataset: str = "fashion-mnist", locality_config: str | Path | None = None,
             gaussian_config: str | Path | None = None) -> dict:
    """Both studies into OUT/locality and OUT/gaussian, then OUT/index.html; returns {study: results.json table,
    "timings_s": {study: wall seconds}, "cpu_seconds": {study: CPU seconds}, "stage_timings": {group: ...},
    "dataset": its title}. jobs: studies run at once (None: 2 when the machine has two or more cores; always 1 in a
    process group); device: torch device of both studies ('cpu', 'cuda' or 'cuda:N'); dataset: a DEMO_DATASETS
    name; locality_config / gaussian_config: TOML files that replace that study's shipped config. Device, configs
    and shipped files are checked before any work.

    Under torchrun every rank calls this: the studies run one after the other, each as one study over the ranks
    (networks data-parallel, analytical denoisers sharded), and rank 0 alone prints and writes."""
    check_device(device, "device")
    files = demo_config_files(dataset, locality_config, gaussian_config)
    check_demo_configs(dataset, files)
    if in_process_group() and jobs == 2:
        raise DenoiserLabError("under torchrun the demo's studies run one after the other over the ranks; drop --jobs")
    out = Path(out)
    if in_process_group():
        jobs = 1
    elif jobs is None:
        jobs = 2 if available_cores() >= 2 else 1
    started = time.perf_counter()
    if is_main_process():
        ranks = f" over {world_size()} ranks" if in_process_group() else ""
        print(f"locality study ({files.locality.name}) -> {out / 'locality'}; hidden-Gaussian-structure study "
              f"({files.gaussian.name}) -> {out / 'gaussian'}; "
              f"{'side by side' if jobs >= 2 else 'one after the other'}{ranks}", flush=True)
    parts = run_parts(out, jobs, progress, device, files)
    results = {name: part[0] for name, part in parts.items()}
    results["dataset"], results["shipped_configs"] = files.title, files.shipped
    results["timings_s"] = {name: part[1] for name, part in parts.items()}
    results["cpu_seconds"] = {name: part[2] for name, part in parts.items()}
    if not is_main_process():
        return results
    results["stage_timings"] = {f"{name}: {group}": timing for name in parts
                                for group, timing in stage_groups(name, results[name]).items()}
    results["timings_s"]["total"] = time.perf_counter() - started
    write_demo_index(results, out)
    print_timings(results)
    return results


def print_timings(results: dict) -> None:
    """Seconds per stage group (as computed, whether now or by an earlier run) and per study."""
    print("time per stage group (wall s, CPU s; stages loaded from an earlier run count their first compute):")
    for group, seconds, cpu_seconds in timing_rows(results["stage_timings"]):
        print(f"  {group:48s} {seconds:8.1f} {'' if cpu_seconds is None else f'{cpu_seconds:8.1f}'}")
    for name in ("locality", "gaussian"):
        wall, cpu = results["timings_s"][name], results["cpu_seconds"][name]
        print(f"  {name + ' study, this run':48s} {wall:8.1f} {cpu:8.1f}")
    print(f"  {'demo, this run (wall)':48s} {results['timings_s']['total']:8.1f}")
