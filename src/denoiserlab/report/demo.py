"""OUT/index.html of `make demo`: the headline numbers of both studies and links to their full reports."""

from __future__ import annotations

import html
from pathlib import Path

from denoiserlab.atomic import atomic_write_text
from denoiserlab.report.html import page_html, table_html, text_html


def locality_rows(results: dict) -> list[list]:
    """One row per network: where it departs most from the optimal denoiser, and who imitates it best there."""
    return [[name, checks["peak_sigma_forward"], checks["rise_and_fall_forward"],
             " < ".join(checks["ranking_at_peak_forward"])] for name, checks in results["checks"].items()]


def nearest_neighbour_table(results: dict) -> str:
    """Mean distance of each method's samples (from each network's shared noise) to the nearest training image."""
    table = results["nearest_neighbour"]
    methods = list(dict.fromkeys(label for per_method in table.values() for label in per_method))
    return table_html(["samples from the noise of", *methods],
                      [[name, *(per_method.get(label) for label in methods)] for name, per_method in table.items()])


def gaussian_rows(results: dict) -> list[list]:
    """One row per network: lowest linearity, share of sigmas where distillation meets the Gaussian map,
    generalization score."""
    return [[name, checks["linearity_cosine_min"], checks["linearity_cosine_min_sigma"],
             checks.get("weight_nmse_split_half_fraction_below_paper_max"), checks["generalization_score"],
             checks.get("calibrated_score"), checks.get("memorized_fraction"), checks.get("verdict")]
            for name, checks in results["checks"].items()]


def sweep_rows(results: dict) -> list[list]:
    """One row per sweep checkpoint: what it varies, its generalization score and share of copied samples."""
    entries = results.get("sweeps", {}).get("entries", [])
    return [[entry["label"], entry["kind"], entry["value"], entry["generalization_score"],
             entry.get("calibrated_score"), entry.get("memorized_fraction"), entry.get("verdict")]
            for entry in entries]


def verdict_note(results: dict) -> str:
    """How the verdicts are read, with what held-out images of the networks' dataset score."""
    held_out = [checks.get("heldout_score") for checks in results["checks"].values()]
    measured = [score for score in held_out if score is not None]
    scale = (f" Held-out images of the networks' training set score {measured[0]:.2f}; the paper's fixed 0.6 was "
             "set on CIFAR-10." if measured else "")
    return ("Verdicts read the share of copies (>= 50 %: memorizes; >= 5 %: partly memorizes) and the score "
            "calibrated to each training set (score / held-out images' score against it; below 0.75: partly "
            "memorizes)." + scale)


def demo_index_html(results: dict) -> str:
    link = lambda folder, text: f'<p><a href="{folder}/report.html">{html.escape(text)}</a></p>'
    timings = results["timings_s"]
    sections = [
        ("Locality study (Niedoba et al. 2025)", link("locality", "full report: locality/report.html") + table_html(
            ["network", "sigma of largest MSE to the optimal denoiser", "rise and fall",
             "closest to the network there (forward process)"], locality_rows(results["locality"]))
            + text_html("Distance of samples to the nearest training image (0: a copy):")
            + nearest_neighbour_table(results["locality"]) + text_html(f"computed in {timings['locality']:.0f} s")),
        ("Hidden Gaussian structure (Li et al. 2024)", link("gaussian", "full report: gaussian/report.html")
         + table_html(["network", "lowest linearity (cosine; paper > 0.96)", "at sigma",
                       "share of sigmas with distilled-vs-Gaussian weight NMSE < 0.2 (split-half; paper: most)",
                       "generalization score", "calibrated score (held-out images: 1)", "share of copies",
                       "verdict"],
                      gaussian_rows(results["gaussian"]))
         + text_html(verdict_note(results["gaussian"]))
         + (table_html(["sweep checkpoint", "varies", "value", "generalization score",
                        "calibrated score (held-out images: 1)", "share of copies", "verdict"],
                       sweep_rows(results["gaussian"])) if sweep_rows(results["gaussian"]) else "")
         + text_html(f"computed in {timings['gaussian']:.0f} s")),
    ]
    return page_html("denoiserlab demo: Fashion-MNIST, shipped networks", sections)


def write_demo_index(results: dict, out: Path) -> Path:
    return atomic_write_text(Path(out) / "index.html", demo_index_html(results))
