"""report.html of the Gaussian-structure study: figures (DIR/figures/*.png, embedded), the paper's numbers beside
ours, and the note on the affine Gaussian denoiser's linearity score. Reads results.json and the arrays only."""

from __future__ import annotations

from pathlib import Path

from denoiserlab.atomic import atomic_write
from denoiserlab.report import gaussian_structure_figures as figures
from denoiserlab.report.html import figure_html, page_html, table_html, text_html


def affine_note(alpha: float, beta: float) -> str:
    """Why the Gaussian denoiser's cosine linearity is close to, but not exactly, 1 (numbers for this alpha)."""
    gap = 1 - alpha - beta
    limit = gap**2 / (alpha + beta) ** 2
    return (f"Why the Gaussian denoiser does not score exactly 1. It is affine, D(x) = A x + c with "
            f"A = U diag(s / (s + sigma^2)) U^T and c = (I - A) mu, so D(alpha x1 + beta x2) - (alpha D(x1) + "
            f"beta D(x2)) = (1 - alpha - beta) c exactly. The in-distribution mixing needs alpha^2 + beta^2 = 1, "
            f"which together with alpha + beta = 1 only allows (1, 0) or (0, 1); here alpha = {alpha:.4f}, "
            f"beta = {beta:.4f}, so 1 - alpha - beta = {gap:.4f} and the mismatch is {gap:.4f} c. At small sigma "
            f"A -> I on the data and c -> 0, so both scores are perfect. At large sigma A -> 0 and every output "
            f"-> mu: both sides point along mu, so the cosine tends to 1 while the NMSE tends to "
            f"(1 - alpha - beta)^2 / (alpha + beta)^2 = {limit:.4f}: the cosine measures only the direction of the "
            f"mismatch, the NMSE also its size. In between, only the part of (1 - alpha - beta) c orthogonal to "
            f"the outputs lowers the cosine, so it dips slightly below 1 (the Gaussian denoiser's row in the table "
            f"below). A purely linear map scores exactly 1 (cosine) and 0 (NMSE) at any alpha, beta; read the "
            f"networks' scores against the Gaussian denoiser's curve, not against 1.")


def comparison_rows(results: dict) -> list[list]:
    """The paper's numbers beside ours, one row per claim and network."""
    paper, rows = results["paper"], []
    for name, checks in results["checks"].items():
        unknowns = len(results["distillation"][name]["spectrum_gaussian"][0]) + 1  # D + 1 per output row
        rows += [
            [name, "lowest cosine linearity over sigma", f"> {paper['linearity_cosine_min']} (generalizing models)",
             checks["linearity_cosine_min"], f"at sigma = {checks['linearity_cosine_min_sigma']:.3g}"],
            [name, "fraction of sigmas with weight NMSE < 0.2 (split-half estimate, without least-squares noise)",
             "most sigmas", checks.get("weight_nmse_split_half_fraction_below_paper_max"),
             "from fits on two halves of the draw: the headline"],
            [name, "same, plain fit on all distillation samples", "most sigmas",
             checks["weight_nmse_fraction_below_paper_max"],
             f"inflated by least-squares noise unless the samples far exceed the {unknowns:,} unknowns per row "
             "(the per-sigma table shows the predicted noise)"],
            [name, "largest RMSE distilled linear vs Gaussian", f"< {paper['rmse_linear_vs_gaussian_max']}",
             checks["rmse_linear_vs_gaussian_max"], "all sigmas, plain fit"],
            [name, "same, least-squares noise removed (estimate)", f"< {paper['rmse_linear_vs_gaussian_max']}",
             checks.get("rmse_linear_vs_gaussian_noise_removed_max"),
             "sqrt(RMSE^2 - predicted noise^2), largest over sigma"],
            [name, "largest RMSE network vs linear, sigma >= 20", f"< {paper['rmse_high_noise_max']}",
             checks["rmse_network_vs_linear_high_noise_max"], "high-noise regime"],
            [name, "generalization score", f"> ~{paper['generalization_score_threshold']} when generalizing "
             "(set on CIFAR-10)", checks["generalization_score"],
             held_out_note(checks.get("heldout_score"))],
            [name, "calibrated score (score / held-out images' score)", "(1: like new real images; 0: copies)",
             checks.get("calibrated_score"), "verdict: " + checks.get("verdict", "?")],
            [name, "fraction of samples copying a training image", "(not in the paper)",
             checks["memorized_fraction"], "nearest / second-nearest distance < 1/3"],
        ]
    return rows


def held_out_note(heldout_score: float | None) -> str:
    """What new real images of the dataset score (the paper's threshold read against it)."""
    if heldout_score is None:
        return "no held-out images to calibrate against"
    return f"held-out images of this dataset score {heldout_score:.3g}"


def per_sigma_rows(results: dict) -> list[list]:
    """One row per (network, sigma): linearity, weight NMSE, mean alignment, score errors, trajectory NMSE."""
    rows = []
    for name in results["distillation"]:
        scores, distillation = results["linearity"]["scores"][name], results["distillation"][name]
        errors = results["score_error"][name]
        for index, sigma in enumerate(results["sigmas"]):
            alignment = distillation["alignment"][index]
            rows.append([name, sigma, scores["cosine"][index], scores["nmse"][index],
                         distillation["weight_nmse"][index],
                         distillation.get("weight_nmse_split_half", [None] * len(results["sigmas"]))[index],
                         distillation.get("weight_nmse_noise_predicted", [None] * len(results["sigmas"]))[index],
                         sum(alignment) / len(alignment),
                         errors["linear"][index], errors["gaussian"][index], errors["optimal"][index],
                         results["sampling"][name]["nmse"][index + 1]])
    return rows


def denoiser_rows(results: dict) -> list[list]:
    """Linearity of every network and analytical denoiser: min / max of the cosine and NMSE forms."""
    return [[label, min(table["cosine"]), max(table["cosine"]), min(table["nmse"]), max(table["nmse"])]
            for label, table in results["linearity"]["scores"].items()]


def denoiser_values_html(results: dict) -> str:
    """Which tuned value each analytical denoiser was measured at, how many pairs, and what was skipped."""
    linearity = results["linearity"]
    rows = [[name, used["option"], str(used["value"]), used["source"]]
            for name, used in linearity.get("denoiser_values", {}).items()]
    parts = [text_html(f"Analytical denoisers: {linearity.get('denoiser_pairs', '')} pairs per sigma, on the first"
                       " network's training set; this study fits nothing, so a tunable method runs at its fixed"
                       " value, the schedule the config names, or its default value.", note=True)]
    if rows:
        parts.append(table_html(["denoiser", "tuned option", "value", "source"], rows))
    parts += [text_html(f"{name} not measured: {reason}") for name, reason in linearity.get("skipped", {}).items()]
    return "".join(parts)


def network_sections(results: dict, arrays: dict, folder: Path) -> list[tuple[str, str]]:
    """Per-network figures: spectra, singular vectors, trajectories, samples, loss curves."""
    sections = []
    for name, images in arrays["networks"].items():
        parts = [figure_html(figures.spectra_figure(results, name, folder / f"spectra-{name}.png"),
                             "Singular values of the distilled W_sigma (solid) and the Gaussian map (dashed)"),
                 figure_html(figures.vectors_figure(results, images, name, folder / f"vectors-{name}.png"),
                             "Leading left singular vectors, W_sigma rows above the Gaussian map's"),
                 figure_html(figures.trajectory_grid(results, images, name, folder / f"trajectory-{name}.png"),
                             "Network Euler trajectory vs closed-form Gaussian trajectory (eq. 7), same noise"),
                 figure_html(figures.samples_grid(images, name, folder / f"samples-{name}.png"),
                             "Network samples and their nearest training images")]
        if "loss_curves" in results["distillation"][name]:
            parts.append(figure_html(figures.loss_curves_figure(results, name, folder / f"loss-{name}.png"),
                                     "Adam loss of the linear distillation per sigma"))
        sections.append((f"Network {name}", "".join(parts)))
    return sections


def strong_section(results: dict, arrays: dict, folder: Path) -> str:
    """Table of pair similarities and each pair's samples from the same noise."""
    rows = [[row["a"], row["b"], row["n_samples"], row["pixel_cosine"], row["nmse"], row["feature_cosine"],
             row["a_vs_gaussian_pixel_cosine"], row["b_vs_gaussian_pixel_cosine"], row["gaussians_pixel_cosine"]]
            for row in results["strong_generalization"]]
    parts = [table_html(["a", "b", "samples", "pixel cosine", "NMSE |a-b|^2/|b|^2", "feature cosine",
                         "a vs its Gaussian", "b vs its Gaussian", "Gaussian a vs Gaussian b"], rows)]
    samples = {**arrays["networks"], **{entry["label"]: images for entry, images
                                        in zip(results.get("sweeps", {}).get("entries", []), arrays["sweeps"])}}
    for row in results["strong_generalization"]:
        path = folder / f"strong-{row['a']}-{row['b']}.png"
        parts.append(figure_html(figures.strong_grid(samples, (row["a"], row["b"]), path),
                                 f"Samples of {row['a']} and {row['b']} from the same noise"))
    return "".join(parts)


def sweep_section(results: dict, arrays: dict, folder: Path) -> str:
    """Generalization score and score errors along each sweep, and the sweep's samples."""
    entries = results["sweeps"]["entries"]
    sigmas = ", ".join(f"{sigma:.3g}" for sigma in results["sweeps"]["sigmas"])
    rows = [[row["label"], row["kind"], row["value"], row["n_train"], row["n_parameters"],
             row["generalization_score"], row.get("calibrated_score"), row["memorized_fraction"], row.get("verdict"),
             row["nearest_distance_mean"], *row["score_error_gaussian"], *row["score_error_optimal"]]
            for row in entries]
    count = len(results["sweeps"]["sigmas"])
    header = ["label", "kind", "value", "N train", "parameters", "generalization score",
              "calibrated score (held-out images: 1)", "copies (nearest/2nd-nearest < 1/3)", "verdict",
              "mean distance to nearest training image",
              *[f"RMSE vs Gaussian #{i}" for i in range(count)], *[f"RMSE vs optimal #{i}" for i in range(count)]]
    parts = [text_html(f"Score errors at sigma = {sigmas} (#0, #1, ...)."), table_html(header, rows)]
    for kind in sorted({row["kind"] for row in entries}):
        parts.append(figure_html(figures.sweep_figure(results, kind, folder / f"sweep-{kind}.png"),
                                 f"Generalization score and score errors vs {figures.SWEEP_AXES[kind]}"))
    parts.append(figure_html(figures.sweep_samples_grid(results, arrays["sweeps"], folder / "sweep-samples.png"),
                             "Samples of every sweep checkpoint from the same noise"))
    return "".join(parts)


def write_gaussian_report(results: dict, arrays: dict, out: str | Path) -> Path:
    """Write DIR/figures/*.png and the self-contained DIR/report.html; returns the report's path."""
    out = Path(out)
    folder = out / "figures"
    alpha, beta = results["linearity"]["alpha"], results["linearity"]["beta"]
    sections = []
    if results["checks"]:
        sections += [
            ("Our numbers beside the paper's", table_html(["network", "quantity", "paper", "ours", "note"],
                                                          comparison_rows(results))),
            ("Linearity", figure_html(figures.linearity_figure(results, folder / "linearity.png"),
                                      "Linearity score vs sigma (cosine and NMSE forms)")
             + text_html(affine_note(alpha, beta), note=True)
             + table_html(["denoiser", "min cosine", "max cosine", "min NMSE", "max NMSE"], denoiser_rows(results))
             + denoiser_values_html(results)
             + figure_html(figures.linearity_sweep_figure(results, folder / "linearity-sweep.png"),
                           "Cosine linearity for each swept alpha (beta = sqrt(1 - alpha^2))")),
            ("Linear distillation vs the Gaussian denoiser",
             figure_html(figures.weight_figure(results, folder / "weight-nmse.png"),
                         "Weight NMSE and singular-vector alignment of W_sigma vs the Gaussian map")),
            ("Score-approximation error (three regimes)",
             figure_html(figures.score_error_figure(results, folder / "score-error.png"),
                         "RMSE of each network vs its distilled linear map, the Gaussian and the optimal denoiser")),
            ("Gaussian sampling", figure_html(figures.trajectory_nmse_figure(results, folder / "trajectory-nmse.png"),
                                              "Per-step NMSE between trajectories from the same noise")),
            ("Numbers per sigma", table_html(
                ["network", "sigma", "cosine", "linearity NMSE", "weight NMSE",
                 "weight NMSE (split-half)", "least-squares noise in weight NMSE (predicted)", "mean alignment",
                 "RMSE vs linear",
                 "RMSE vs Gaussian", "RMSE vs optimal", "trajectory NMSE after step"], per_sigma_rows(results))),
            *network_sections(results, arrays, folder),
        ]
    if results["strong_generalization"]:
        sections.append(("Strong generalization", strong_section(results, arrays, folder)))
    if results["sweeps"]["entries"]:
        sections.append(("Memorization to generalization sweeps", sweep_section(results, arrays, folder)))
    sections.append(("Reproduce", text_html(f"Command: {results['command']}. Resolved config: config.toml; "
                                            f"total time {results['timings_s']['total']:.1f} s.")))
    page = page_html("Hidden Gaussian structure (Li et al. 2024)", sections)
    return atomic_write(out / "report.html", lambda temp: temp.write_text(page, encoding="utf-8"))
