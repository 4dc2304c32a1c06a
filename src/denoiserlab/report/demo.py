"""OUT/index.html of `make demo`: the headline numbers of both studies and links to their full reports."""

from __future__ import annotations

import html
from pathlib import Path

from denoiserlab.atomic import atomic_write_text
from denoiserlab.report.html import page_html, table_html, text_html
from denoiserlab.report.locality import closest_sentence


def locality_rows(results: dict) -> list[list]:
    """One row per network: where it departs most from the optimal denoiser, and who imitates it best there."""
    return [[name, checks["peak_sigma_forward"], checks["rise_and_fall_forward"],
             " < ".join(checks["ranking_at_peak_forward"])] for name, checks in results["checks"].items()]


def closest_rows(results: dict) -> list[list]:
    """One row per (network, process): the closest denoiser per sigma range and the order at the peak sigma."""
    rows = []
    for name in results.get("networks", []):
        for process in ("forward", "reverse"):
            ranking = results["ranking"][process][name]
            closest = {span: table["order"][0] if table["order"] else None
                       for span, table in ranking["by_range"].items()}
            rows.append([name, process, closest.get("high"), closest.get("middle"), closest.get("low"),
                         f"{ranking['peak_sigma']:.3g}: " + " < ".join(ranking["at_peak"][:4])
                         + (" < ..." if len(ranking["at_peak"]) > 4 else "")])
    return rows


def ranking_html(results: dict) -> str:
    """The ranking of every method by MSE to each network, with the papers' claims beside (empty for results
    written before the ranking)."""
    if "ranking" not in results:
        return ""
    ranges = {span: table["sigmas"] for span, table in
              next(iter(next(iter(results["ranking"].values())).values()))["by_range"].items()}
    header = ["network", "process", *[f"closest, {span} sigma [{low:g}, {'inf' if high is None else f'{high:g}'})"
                                      for span, (low, high) in ranges.items()], "order at the peak sigma"]
    claims = results.get("papers", {})
    return (text_html("Which analytical denoiser is closest to each network (MSE per element; per sigma range the"
                      " geometric mean over the range's grid points):")
            + "".join(text_html(closest_sentence(results, name)) for name in results["networks"])
            + table_html(header, closest_rows(results))
            + text_html("The papers' claims: " + " ".join(f"{paper['title'].split(',')[0]}: {paper['claim']}."
                                                          for paper in claims.values()), note=True))


def pearson_html(results: dict) -> str:
    """Median Pearson r of each method's samples to each network's (same noise), Kamb & Ganguli's beside."""
    if "sample_pearson_r" not in results:
        return ""
    theirs = results.get("papers", {}).get("kamb_ganguli_2025", {}).get("sample_pearson_r_fashion_mnist_unet", {})
    names = results["networks"]
    labels = list(dict.fromkeys(label for name in names for label in results["sample_pearson_r"][name]
                                if not label.startswith("network:")))
    rows = [[label, *[results["sample_pearson_r"][name][label]["median"] for name in names], theirs.get(label, "")]
            for label in labels]
    return (text_html("Median Pearson r over seeds between each method's final sample and the network's from the"
                      " same noise (Kamb & Ganguli's Table 1 metric):")
            + table_html(["method", *names, "Kamb & Ganguli, Fashion-MNIST U-Net"], rows))


def timing_rows(stage_timings: dict) -> list[list]:
    """One row per stage group: wall and CPU seconds."""
    return [[group, timing["seconds"], timing.get("cpu_seconds")] for group, timing in stage_timings.items()]


def stage_group(name: str) -> str:
    """The group of a stage name: its kind, and for a method's outputs or samples the method ("outputs-forward-
    els@unet" -> "evaluation outputs: els", "outputs-fit_reverse-unet-els=3" -> "fitting sweeps: els")."""
    kind, _, rest = name.partition("-")
    if kind == "outputs":
        set_name, _, label = rest.partition("-")
        if set_name in ("reverse", "fit_reverse"):  # set names "reverse-<network>", "fit_reverse-<network>"
            label = label.partition("-")[2]
        method = label.split("@")[0].split("=")[0]
        method = "networks" if method.startswith("network:") else method
        is_sweep = "=" in label
        return f"{'fitting sweeps' if is_sweep else 'evaluation outputs'}: {method}"
    if kind == "samples":
        if rest.startswith("sweep-"):  # the Gaussian study's sweep checkpoints, named by a hash
            return "samples: sweep checkpoints"
        method = rest.split("@")[0]
        return f"samples: {'networks' if method.startswith('network:') else method}"
    if kind == "linearity" and rest.startswith("denoiser-"):
        return f"linearity: {rest.removeprefix('denoiser-')}"
    if kind in ("reverse_set", "fit_reverse_set"):
        return "network trajectories"
    return kind


def stage_groups(study: str, results: dict) -> dict[str, dict]:
    """Wall and CPU seconds of a study's stages summed per group (stage_group), largest first."""
    stages = results.get("stages", {})
    if "computed" in stages:  # the Gaussian study's layout: seconds in timings_s, CPU seconds in stages
        cpu = stages.get("cpu_seconds", {})
        stages = {name: {"seconds": seconds, "cpu_seconds": cpu.get(name)}
                  for name, seconds in results.get("timings_s", {}).items() if name != "total"}
    groups: dict[str, dict] = {}
    for name, timing in stages.items():
        group = groups.setdefault(stage_group(name), {"seconds": 0.0, "cpu_seconds": 0.0, "count": 0})
        group["seconds"] += timing["seconds"]
        group["cpu_seconds"] = (None if group["cpu_seconds"] is None or timing.get("cpu_seconds") is None
                                else group["cpu_seconds"] + timing["cpu_seconds"])
        group["count"] += 1
    return dict(sorted(groups.items(), key=lambda item: -item[1]["seconds"]))


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
            + ranking_html(results["locality"]) + pearson_html(results["locality"])
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
    if results.get("stage_timings"):
        cpu = results.get("cpu_seconds", {})
        studies = [[f"{name} study (this run)", results["timings_s"][name], cpu.get(name)] for name in cpu]
        sections.append(("Where the time went", text_html(
            "Seconds per group of stages as first computed (a rerun loads them from the stage cache); the two "
            "studies run side by side on a machine with two or more cores.")
            + table_html(["stage group", "wall seconds", "CPU seconds"],
                         timing_rows(results["stage_timings"]) + studies
                         + [["demo (this run, wall)", results["timings_s"].get("total"), None]])))
    networks = ", shipped networks" if results.get("shipped_configs", True) else ""
    return page_html(f"denoiserlab demo: {results['dataset']}{networks}", sections)


def write_demo_index(results: dict, out: Path) -> Path:
    return atomic_write_text(Path(out) / "index.html", demo_index_html(results))
