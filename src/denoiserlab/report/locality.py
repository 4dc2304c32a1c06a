"""The locality study's report: PNG figures under DIR/figures/ and a self-contained DIR/report.html."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from denoiserlab.atomic import atomic_write
from denoiserlab.report.html import figure_html, page_html, pre_html, table_html, text_html
from denoiserlab.report.locality_figures import (
    criterion_tolerance,
    figure_comparison,
    figure_fitting,
    figure_heatmap_convergence,
    figure_heatmap_extent,
    figure_heatmaps,
    figure_network_vs_optimal,
    figure_samples,
    figure_similarity,
)

# What Niedoba et al. 2025 report (CIFAR-10, DDPM++ / DiT / MLP-Mixer), set beside our numbers.
PAPER = {
    "peak_sigma_forward": "near sigma = 3 (every architecture)",
    "rise_and_fall_forward": "yes: small at the largest and smallest sigma",
    "ranking_at_peak_forward": "pspc_flex < pspc_square < gaussian < cfdm, optimal (methods they compared)",
    "ranking_at_peak_reverse": "same order on the reverse process (fig. 7)",
    "closest_by_range": "PSPC-Flex closest over most sigma (Niedoba); ELS / LS after calibration (Kamb & Ganguli, "
                        "convolutional networks); Gaussian at high and middle noise (Wang & Vastola)",
    "pspc_deviates_like_network_at_peak": "yes: MSE(PSPC, net) below MSE(PSPC, optimal) and MSE(net, optimal)",
    "networks_closer_to_each_other_than_to_optimal_at_peak": "yes (same sigma, same direction)",
    "pspc_samples_closer_than_optimal_samples": "yes (SSCD cosine, fig. 9); optimal samples copy training images",
}


def write_locality_report(results: dict, arrays: dict, out: str | Path) -> Path:
    """Draw every figure and write DIR/report.html. arrays: {network: {"samples": {method: [R, C, H, W]},
    "heatmaps": {"same_channel": [L, H, W, H, W], ...}}}."""
    out = Path(out)
    figures = write_figures(results, arrays, out / "figures")
    sections = [("Headline numbers", headline_section(results)),
                ("Which method is closest to each network", ranking_section(results)),
                ("Samples: Pearson r to the network's (Kamb & Ganguli, Table 1)", pearson_section(results)),
                ("Our numbers beside the paper's", paper_section(results)),
                *figure_sections(figures),
                ("Fitted and used schedules", schedules_section(results)),
                ("Samples: similarity and memorization", samples_section(results)),
                ("Heatmaps", heatmaps_section(results, out / "figures")),
                ("Heatmap readings: same_channel vs all_channels", readings_section(results)),
                ("Configuration (resolved)", config_section(results)),
                ("Versions and command", versions_section(results)),
                ("Timings per stage", timings_section(results))]
    page = page_html(f"Locality study: {results['dataset']['name']}", sections)
    return atomic_write(out / "report.html", lambda temp: temp.write_text(page, encoding="utf-8"))


def write_figures(results: dict, arrays: dict, folder: Path) -> list[tuple[str, Path, str]]:
    """Every figure as (section, path, caption)."""
    figures = [("Network vs optimal (paper fig. 2)", figure_network_vs_optimal(results, folder / "network_vs_optimal.png"),
                "MSE per element between each network and the optimal denoiser, forward (solid) and reverse (dashed)"),
               ("Heatmaps (paper fig. 3)", figure_heatmap_extent(results, folder / "heatmap_extent.png"),
                "Pixels holding 90% of each output pixel's gradient mass, averaged over output pixels")]
    pixels_config = results["config"]["heatmaps"]["pixels"]
    for name in results["networks"]:
        reading = results["config"]["heatmaps"]["reading"]
        maps = arrays[name]["heatmaps"][reading]
        pixels = [tuple(maps.shape[1 + axis] // 2 if value == -1 else value for axis, value in enumerate(pixel))
                  for pixel in pixels_config]
        figures += [
            ("Heatmaps (paper fig. 3)", figure_heatmaps(maps, results["sigmas"], pixels,
                                                        results["config"]["heatmaps"]["figure_sigmas"], name,
                                                        folder / f"heatmaps-{name}.png"),
             f"Gradient heatmaps of {name} ({reading}); the cross marks the output pixel"),
            ("Comparison (paper fig. 7)", figure_comparison(results, name, folder / f"comparison-{name}.png"),
             f"MSE per element of every method against {name}, forward and reverse"),
            ("Samples from shared noise (paper figs. 1, 8)",
             figure_samples(arrays[name]["samples"], name, folder / f"samples-{name}.png"),
             f"One row per method, all from the initial noise of {name}'s samples"),
            ("Similarity of samples (paper fig. 9)", figure_similarity(results, name, folder / f"similarity-{name}.png"),
             f"Per-sample similarity of each method's samples to {name}'s"),
        ]
        if results["fitting"][name].get("methods", results["fitting"][name]):
            process = results["fitting"][name].get("process", "forward")
            figures.append(("Schedule fitting (paper figs. 4, 10, 12)",
                            figure_fitting(results, name, folder / f"fitting-{name}.png"),
                            f"Every tunable method swept on {name}'s fitting sets: log10 MSE against the optimal"
                            f" denoiser and {name} ({process} process), and the median cosine between the method's"
                            f" and {name}'s scores on {name}'s own reverse trajectories; red dots: the MSE fit"
                            " per sigma, white crosses: the cosine fit (Kamb & Ganguli's calibration)"))
    return figures


def figure_sections(figures: list[tuple[str, Path, str]]) -> list[tuple[str, str]]:
    sections: dict[str, str] = {}
    for section, path, caption in figures:
        sections[section] = sections.get(section, "") + figure_html(path, caption)
    return list(sections.items())


def headline_section(results: dict) -> str:
    """Per network: at the sigma where it departs most from the optimal denoiser, each method's numbers."""
    parts = []
    for name in results["networks"]:
        checks = results["checks"][name]
        peak = results["sigmas"].index(checks["peak_sigma_forward"])
        order = results.get("ranking", {}).get("forward", {}).get(name, {}).get("at_peak", [])
        rank = {label: index + 1 for index, label in enumerate(order)}
        rows = [[label, rank.get(label, ""), results["forward"]["mse"][name][label][peak],
                 results["forward"]["mse_vs_optimal"][name][label][peak],
                 results["forward"]["r2"][name][label]["mean"][peak],
                 results["forward"]["r2"][name][label]["median"][peak],
                 results["forward"]["pearson_r"][name][label]["mean"][peak],
                 results["reverse"]["mse"][name][label][peak]] for label in results["forward"]["mse"][name]]
        parts.append(text_html(f"Network {name}: largest forward MSE to the optimal denoiser at sigma ="
                               f" {checks['peak_sigma_forward']:.4g} (MSE"
                               f" {results['network_vs_optimal']['forward'][name][peak]:.4g}). Numbers at that sigma:"))
        parts.append(table_html(["method", "rank", "MSE vs network (fwd)", "MSE vs optimal (fwd)", "r2 mean (fwd)",
                                 "r2 median (fwd)", "Pearson r mean (fwd)", "MSE vs network (rev)"], rows))
    return "".join(parts)


def paper_section(results: dict) -> str:
    rows = []
    for name in results["networks"]:
        for check, value in results["checks"][name].items():
            rows.append([name, check, format_check(value), PAPER.get(check, "")])
    note = text_html("The paper's numbers are for CIFAR-10 with networks trained to convergence and evaluation sets"
                     " of 10,000 z; this run's sizes are in the configuration below. The checks read our numbers at"
                     " the sigma where each network departs most from the optimal denoiser.", note=True)
    return note + table_html(["network", "claim", "ours", "paper"], rows)


def format_check(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {item}" for key, item in value.items()) or "n/a"
    if isinstance(value, list):
        return " < ".join(str(item) for item in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def schedules_section(results: dict) -> str:
    parts = []
    for denoiser, by_network in results["schedules_used"].items():
        for name, used in by_network.items():
            fitted = results["fitted_schedules"].get(denoiser, {}).get(name)
            fits = results.get("fits", {}).get(denoiser, {}).get(name, {})
            columns = {"fitted (MSE, forward)": fits.get("mse_forward"),
                       "fitted (MSE, reverse)": fits.get("mse_reverse"),
                       "calibrated (score cosine, reverse)": fits.get("cosine_reverse")}
            columns = {title: values for title, values in columns.items() if values} or {"fitted": fitted}
            columns = {title: values for title, values in columns.items() if values}
            rows = [[sigma, *[values[level] for values in columns.values()], value]
                    for level, (sigma, value) in enumerate(zip(results["sigmas"], used_values(used, results)))]
            where = f"; fitted schedule file: {used['fitted_file']}" if used.get("fitted_file") else ""
            parts.append(text_html(f"{denoiser} for {name}: the comparison uses the {used['source']} schedule{where}"))
            parts.append(table_html(["sigma", *columns, "used"], rows))
    return "".join(parts) or text_html("No tunable denoiser configured.")


def used_values(used: dict, results: dict) -> list:
    """The used schedule's value at each study sigma (nearest grid point, as the schedules do)."""
    grid = used["grid"]
    return [used["values"][min(range(len(grid)), key=lambda i: abs(grid[i] - sigma))] for sigma in results["sigmas"]]


def samples_section(results: dict) -> str:
    parts = []
    if results["feature_model"] is None:
        parts.append(text_html("No feature model was given (--feature-model PATH, a TorchScript image encoder), so"
                               " the feature cosine similarity is not reported.", note=True))
    else:
        parts.append(text_html(f"Feature model: {results['feature_model']}"))
    metrics = list(results["similarity"])
    copies = results.get("memorized_fraction", {})
    for name in results["networks"]:
        labels = list(results["nearest_neighbour"][name])
        rows = [[label, *[results["similarity"][metric][name].get(label) for metric in metrics],
                 results["nearest_neighbour"][name][label], copies.get(name, {}).get(label)] for label in labels]
        parts.append(text_html(f"Samples of every method against {name}'s samples from the same noise (means over"
                               f" samples); distance to the nearest training image in the [-1, 1] scale, and the"
                               f" share of samples that copy one (nearest / second-nearest distance < 1/3):"))
        parts.append(table_html(["method", *metrics, "nearest training image", "share of copies"], rows))
    return "".join(parts)


def range_label(span: str, table: dict) -> str:
    low, high = table["sigmas"]
    return f"{span} sigma ({low:g} <= sigma{'' if high is None else f' < {high:g}'})"


def closest_sentence(results: dict, name: str) -> str:
    """One plain sentence per network: the closest denoiser per sigma range, forward and reverse."""
    parts = []
    for process in ("forward", "reverse"):
        ranges = results["ranking"][process][name]["by_range"]
        said = ", ".join(f"{table['order'][0]} at {span} sigma" for span, table in ranges.items() if table["order"])
        parts.append(f"{process} process: {said}")
    return f"Closest to {name} on our data ({results['dataset']['name']}) by MSE: " + "; ".join(parts) + "."


def ranking_section(results: dict) -> str:
    """Per network: the plain answer per sigma range, the order per range and at the peak, and per sigma."""
    if "ranking" not in results:
        return text_html("This results.json predates the ranking.")
    claims = results.get("papers", {})
    parts = [text_html("Denoisers ranked by MSE per element against each network (other networks are not ranked);"
                       " per sigma range by the geometric mean of the MSE over the range's grid points. The papers'"
                       " claims: " + " ".join(f"{paper['title']}: {paper['claim']}." for paper in claims.values()),
                       note=True)]
    for name in results["networks"]:
        parts.append(text_html(closest_sentence(results, name)))
        rows = []
        for process in ("forward", "reverse"):
            ranking = results["ranking"][process][name]
            for span, table in ranking["by_range"].items():
                rows.append([process, range_label(span, table), " < ".join(table["order"])])
            rows.append([process, f"peak sigma {ranking['peak_sigma']:.3g}", " < ".join(ranking["at_peak"])])
        parts.append(table_html(["process", "sigma", "closest first"], rows))
        per_sigma = [[sigma, results["ranking"]["forward"][name]["closest"][level],
                      results["ranking"]["reverse"][name]["closest"][level]]
                     for level, sigma in enumerate(results["sigmas"])]
        parts.append(table_html(["sigma", f"closest to {name} (forward)", f"closest to {name} (reverse)"], per_sigma))
    return "".join(parts)


def pearson_section(results: dict) -> str:
    """Median over seeds of Pearson r (and r^2) between each method's final sample and the network's from the
    same noise, with Kamb & Ganguli's Fashion-MNIST U-Net numbers beside."""
    if "sample_pearson_r" not in results:
        return text_html("This results.json predates the sample Pearson r.")
    paper = results.get("papers", {}).get("kamb_ganguli_2025", {})
    theirs = paper.get("sample_pearson_r_fashion_mnist_unet", {})
    names = results["networks"]
    labels = list(dict.fromkeys(label for name in names for label in results["sample_pearson_r"][name]))
    rows = [[label, *[value for name in names for value in (
        results["sample_pearson_r"][name].get(label, {}).get("median"),
        results["sample_pearson_r"][name].get(label, {}).get("r2_median"))], theirs.get(label, "")]
        for label in labels]
    count = next(iter(results["sample_pearson_r"][names[0]].values()), {}).get("n")
    header = ["method", *[f"{name}: {what}" for name in names for what in ("median r", "median r^2")],
              "Kamb & Ganguli (Fashion-MNIST U-Net)"]
    note = text_html(f"Median over {count} seeds. {paper.get('claim', '')}. Their networks are convolution-only"
                     " U-Nets and ResNets trained to convergence; ours are the shipped small networks.", note=True)
    return note + table_html(header, rows)


def heatmaps_section(results: dict, folder: Path) -> str:
    """Where each network's heatmaps came from and, when their file carries it, the evidence that their z count
    is enough: per sigma, the PSPC-Flex criterion, bootstrap standard error, half-split crop IoU, and a figure."""
    def count(value):
        return f"{min(value)}-{max(value)} (chosen per sigma)" if isinstance(value, list) else value

    def own(value):
        return {True: "yes (checkpoint fingerprint)", False: "no", None: "not recorded in the file"}[value]

    parts = [table_html(["network", "source", "computed from this checkpoint", "z per sigma", "command"],
                        [[name, table["source"], own(table.get("matches_network")), count(table["n_samples"]),
                          table["command"]] for name, table in results["heatmaps"].items()])]
    for name, table in results["heatmaps"].items():
        convergence = table.get("convergence") or {}
        for prefix in ("", "all_channels_"):
            if prefix + "reference_distance" in convergence:
                parts.append(text_html(reference_note(name, convergence, prefix), note=True))
        if "flex_change" not in convergence:
            continue
        parts.append(text_html(convergence_note(name, convergence), note=True))
        parts.append(table_html(*convergence_rows(results["sigmas"], table)))
        parts.append(figure_html(figure_heatmap_convergence(results["sigmas"], table, name,
                                                            folder / f"heatmap-convergence-{name}.png"),
                                 f"Convergence of {name}'s heatmaps"))
    return "".join(parts)


def config_section(results: dict) -> str:
    """The resolved config, with a note when networks' heatmaps came from files: [heatmaps] n_samples, batch_size
    and products_per_pass then did not apply to them (the files carry their own z counts)."""
    from_files = [name for name, table in results["heatmaps"].items() if table["source"] != "computed"]
    note = (text_html(f"[heatmaps] n_samples, batch_size and products_per_pass apply only to heatmaps the study "
                      f"computes itself; {', '.join(from_files)} read theirs from a file, whose z counts the "
                      f"Heatmaps section shows.", note=True) if from_files else "")
    return note + pre_html(tomli_w.dumps(results["config"]))


def readings_section(results: dict) -> str:
    """Per network: the extent of the heatmaps and the fitted value of each method built from them (PSPC-Flex's
    lambda) under each reading, or a note where the readings coincide."""
    if "heatmap_readings" not in results:
        return text_html("This results.json predates the comparison of heatmap readings.")
    parts = [text_html("same_channel sums each output channel's gradient with respect to the same input channel,"
                       " all_channels over every pair of channels (Niedoba et al. 2025, eq. 8). Extent: pixels"
                       " holding 90% of an output pixel's gradient mass. Fitted values: the MSE fit on the"
                       f" {results['config']['fitting']['process']} fitting set under each reading, and its MSE to"
                       " the network there; the comparison tables use the reading marked as used.", note=True)]
    for name, readings in results["heatmap_readings"].items():
        if readings["equal"]:
            parts.append(text_html(f"{name}: the two readings coincide (one-channel images): the same maps, so the"
                                   " same extent and fitted values."))
            continue
        if readings["equal"] is None:
            parts.append(text_html(f"{name}: its heatmaps hold one reading ({readings['used']})."))
            continue
        parts.append(text_html(f"{name}: the readings differ; the study uses {readings['used']}."))
        parts.append(table_html(*readings_rows(results, name, readings)))
    return "".join(parts)


def readings_rows(results: dict, name: str, readings: dict) -> tuple[list[str], list[list]]:
    """Header and one row per sigma: extent per reading, then per method the fitted value and its MSE per reading."""
    extent = results["heatmaps"][name]["extent"]
    columns = {f"extent ({reading})": values for reading, values in extent.items()}
    for denoiser, by_reading in readings["fitted"].items():
        option = results["methods"][denoiser]["tunable"]
        columns.update({f"{denoiser} fitted {option} ({reading})": values for reading, values in by_reading.items()})
        columns.update({f"{denoiser} MSE to {name} ({reading})": values
                        for reading, values in readings["fit_mse"][denoiser].items()})
    rows = [[sigma, *[values[level] for values in columns.values()]] for level, sigma in enumerate(results["sigmas"])]
    return ["sigma", *columns], rows


def convergence_note(name: str, convergence: dict) -> str:
    """How the z count was chosen and at how many sigmas the criterion held."""
    met, total = sum(bool(value) for value in convergence["converged"]), len(convergence["converged"])
    unmet = "" if met == total else "; where it was not met, the z count stopped at the command's --n-samples"
    readings = (" under both readings (same_channel and all_channels masks)"
                if "all_channels_flex_change" in convergence else "")
    return (f"{name}: z doubled per sigma until PSPC-Flex's MSE to the network at the fitted threshold changed by "
            f"less than {tolerance_text(convergence)}{readings} (met at {met} of {total} sigmas{unmet}).")


def tolerance_text(convergence: dict) -> str:
    """The convergence criterion's tolerance as a percentage."""
    return f"{100 * criterion_tolerance(convergence):g} %"


def reference_note(name: str, convergence: dict, prefix: str = "") -> str:
    """How far the file's map is from its high-z reference at one sigma (prefix "all_channels_": that reading's)."""
    ious = ", ".join(f"{iou:.2f}" for iou in convergence[prefix + "reference_iou"])
    reading = f" ({prefix.rstrip('_')} reading)" if prefix else ""
    return (f"{name}{reading}: at sigma = {convergence['reference_sigma']:.3g} the map used here is "
            f"{100 * convergence[prefix + 'reference_distance']:.1f} % (relative norm) from an independent "
            f"{convergence['reference_n_samples']}-z reference; their PSPC-Flex crops agree with IoU {ious} at "
            f"thresholds {', '.join(f'{t:g}' for t in convergence['iou_thresholds'])}.")


def convergence_rows(sigmas: list[float], table: dict) -> tuple[list[str], list[list]]:
    """Header and one row per sigma of the convergence evidence (for colour images each reading's columns)."""
    convergence, counts = table["convergence"], table["n_samples"]
    thresholds = convergence["iou_thresholds"]
    prefixes = ("", "all_channels_") if "all_channels_flex_change" in convergence else ("",)
    header, columns = ["sigma", "z", f"criterion < {tolerance_text(convergence)}"], []
    for prefix in prefixes:
        reading = f" ({prefix.rstrip('_') or 'same_channel'})" if len(prefixes) > 1 else ""
        header += [f"PSPC-Flex MSE change on doubling{reading}", f"fitted threshold{reading}",
                   f"bootstrap SE / |map|{reading}", *[f"half-split crop IoU at {t:g}{reading}" for t in thresholds]]
        columns.append(prefix)
    rows = [[sigma, counts[level] if isinstance(counts, list) else counts, bool(convergence["converged"][level]),
             *[value for prefix in columns for value in (
                 convergence[prefix + "flex_change"][level], convergence[prefix + "flex_fitted_threshold"][level],
                 convergence[prefix + "relative_se"][level], *convergence[prefix + "half_iou"][level])]]
            for level, sigma in enumerate(sigmas)]
    return header, rows


def versions_section(results: dict) -> str:
    rows = [[package, version] for package, version in results["versions"].items()]
    return table_html(["package", "version"], rows) + pre_html(results["command"])


def timings_section(results: dict) -> str:
    rows = [[stage, timing["seconds"], "loaded from cache" if timing["cached"] else "computed"]
            for stage, timing in results["stages"].items()]
    rows.append(["total (this run)", results["timings_s"]["total"], ""])
    return table_html(["stage", "seconds", "this run"], rows)
