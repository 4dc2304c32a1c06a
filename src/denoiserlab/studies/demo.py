"""`make demo`: the locality study and the hidden-Gaussian-structure study on the embedded Fashion-MNIST subset
with the shipped networks, heatmaps and sweep checkpoints; one index page links both reports.

The two study configs ship inside the package (assets/configs/demo-*.toml), so the demo needs no repository
checkout; both studies cache their stages under OUT/<study>/stages, so a rerun resumes (or only re-renders).

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
from dataclasses import replace
from pathlib import Path

import torch

from denoiserlab.assets import shipped_path
from denoiserlab.config import load_toml
from denoiserlab.report.demo import stage_groups, timing_rows, write_demo_index
from denoiserlab.studies.gaussian_structure import GaussianStudyConfig, run_gaussian_study
from denoiserlab.studies.locality import LocalityStudyConfig, run_locality_study
from denoiserlab.validation import check_device

LOCALITY_CONFIG = "demo-locality.toml"
GAUSSIAN_CONFIG = "demo-gaussian.toml"


def demo_config_path(name: str) -> Path:
    """A config shipped for the demo (src/denoiserlab/assets/configs/NAME)."""
    return shipped_path(name, "configs")


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_locality_part(out: Path, progress: bool, device: str) -> tuple[dict, float, float]:
    """The locality study into OUT/locality on `device`: (results, wall seconds, CPU seconds of this process)."""
    started, cpu = time.perf_counter(), time.process_time()
    config = replace(load_toml(LocalityStudyConfig, demo_config_path(LOCALITY_CONFIG)), device=device)
    results = run_locality_study(config, out / "locality", command="denoiserlab demo", log=stage_logger("locality"),
                                 progress=progress)
    return results, time.perf_counter() - started, time.process_time() - cpu


def run_gaussian_part(out: Path, progress: bool, device: str) -> tuple[dict, float, float]:
    """The Gaussian-structure study into OUT/gaussian on `device`: (results, wall seconds, CPU seconds of this
    process)."""
    started, cpu = time.perf_counter(), time.process_time()
    config = replace(load_toml(GaussianStudyConfig, demo_config_path(GAUSSIAN_CONFIG)), device=device)
    results = run_gaussian_study(config, out / "gaussian", "denoiserlab demo", progress=progress,
                                 log=stage_logger("gaussian"))
    return results, time.perf_counter() - started, time.process_time() - cpu


def stage_logger(study: str):
    """One printed line per stage computed, prefixed with the study."""
    return lambda line: print(f"  [{study}] {line}", flush=True)


def set_threads(threads: int) -> None:
    """Worker initializer: the intra-op (and compiled-kernel) thread count of a study process."""
    torch.set_num_threads(threads)


def run_parts(out: Path, jobs: int, progress: bool, device: str) -> dict[str, tuple[dict, float, float]]:
    """Both studies on `device`, side by side in `jobs` >= 2 processes (spawned: no state shared), or one after the
    other."""
    parts = {"locality": run_locality_part, "gaussian": run_gaussian_part}
    if jobs < 2:
        return {name: part(out, progress, device) for name, part in parts.items()}
    threads = max(1, torch.get_num_threads() // 2)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context, initializer=set_threads, initargs=(threads,)) as pool:
        futures = {name: pool.submit(part, out, False, device) for name, part in parts.items()}  # bars would interleave
        return {name: future.result() for name, future in futures.items()}


def run_demo(out: str | Path, progress: bool = True, jobs: int | None = None, device: str = "cpu") -> dict:
    """Both studies into OUT/locality and OUT/gaussian, then OUT/index.html; returns {study: results.json table,
    "timings_s": {study: wall seconds}, "cpu_seconds": {study: CPU seconds}, "stage_timings": {group: ...}}.
    jobs: studies run at once (None: 2 when the machine has two or more cores); device: torch device of both
    studies ('cpu', 'cuda' or 'cuda:N', checked before any work)."""
    check_device(device, "device")
    out = Path(out)
    jobs = (2 if available_cores() >= 2 else 1) if jobs is None else jobs
    started = time.perf_counter()
    print(f"locality study ({LOCALITY_CONFIG}) -> {out / 'locality'}; hidden-Gaussian-structure study "
          f"({GAUSSIAN_CONFIG}) -> {out / 'gaussian'}; {'side by side' if jobs >= 2 else 'one after the other'}",
          flush=True)
    parts = run_parts(out, jobs, progress, device)
    results = {name: part[0] for name, part in parts.items()}
    results["timings_s"] = {name: part[1] for name, part in parts.items()}
    results["cpu_seconds"] = {name: part[2] for name, part in parts.items()}
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
