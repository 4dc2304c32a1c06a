"""`make demo`: the locality study and the hidden-Gaussian-structure study on the embedded Fashion-MNIST subset
with the shipped networks, heatmaps and sweep checkpoints; one index page links both reports.

The two study configs ship inside the package (assets/configs/demo-*.toml), so the demo needs no repository
checkout; both studies cache their stages under OUT/<study>/stages, so a rerun resumes (or only re-renders).
"""

from __future__ import annotations

import time
from pathlib import Path

from denoiserlab.assets import shipped_path
from denoiserlab.config import load_toml
from denoiserlab.report.demo import write_demo_index
from denoiserlab.studies.gaussian_structure import GaussianStudyConfig, run_gaussian_study
from denoiserlab.studies.locality import LocalityStudyConfig, run_locality_study

LOCALITY_CONFIG = "demo-locality.toml"
GAUSSIAN_CONFIG = "demo-gaussian.toml"


def demo_config_path(name: str) -> Path:
    """A config shipped for the demo (src/denoiserlab/assets/configs/NAME)."""
    return shipped_path(name, "configs")


def run_demo(out: str | Path, progress: bool = True) -> dict:
    """Both studies into OUT/locality and OUT/gaussian, then OUT/index.html; returns {study: results.json table,
    "timings_s": {study: seconds}}."""
    out = Path(out)
    timings, results = {}, {}
    started = time.perf_counter()
    print(f"[1/2] locality study ({demo_config_path(LOCALITY_CONFIG).name}) -> {out / 'locality'}")
    results["locality"] = run_locality_study(load_toml(LocalityStudyConfig, demo_config_path(LOCALITY_CONFIG)),
                                             out / "locality", command="denoiserlab demo")
    timings["locality"] = time.perf_counter() - started
    started = time.perf_counter()
    print(f"[2/2] hidden-Gaussian-structure study ({GAUSSIAN_CONFIG}) -> {out / 'gaussian'}")
    results["gaussian"] = run_gaussian_study(load_toml(GaussianStudyConfig, demo_config_path(GAUSSIAN_CONFIG)),
                                             out / "gaussian", "denoiserlab demo", progress=progress)
    timings["gaussian"] = time.perf_counter() - started
    results["timings_s"] = timings
    write_demo_index(results, out)
    return results
