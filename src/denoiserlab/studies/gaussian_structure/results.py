"""results.json of the Gaussian-structure study (layout: see studies/gaussian_structure.py), the paper's numbers
beside ours, and the arrays (images) the report draws."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from denoiserlab import __version__
from denoiserlab.analysis.distillation_noise import least_squares_noise
from denoiserlab.analysis.memorization import MEMORIZED_RATIO, calibrated_score, memorization_verdict
from denoiserlab.config import to_dict
from denoiserlab.studies.common.results import plain

# Li et al. 2024 ("Understanding generalizability of diffusion models requires rethinking the hidden Gaussian
# structure"), the numbers our results are read against.
PAPER = {
    "linearity_cosine_min": 0.96,  # appendix A: cosine linearity > 0.96 even at its lowest (generalizing models)
    "weight_nmse_max": 0.2,  # sec. 3.2: weight NMSE of W_sigma vs the Gaussian map < 0.2 for most sigma
    "rmse_linear_vs_gaussian_max": 0.05,  # sec. 3.2: distilled linear vs Gaussian outputs, RMSE < 0.05 at all sigma
    "rmse_high_noise_max": 0.05,  # sec. 3.1: network vs linear RMSE < 0.05 in the high-noise regime [20, 80]
    "generalization_score_threshold": 0.6,  # appendix B.1: a score above ~0.6 means generalization
    "sigmas": [80.0, 42.415, 21.108, 9.723, 4.06, 1.501, 0.469, 0.116, 0.020, 0.002],  # sec. 3.1, EDM 10 steps
}


def stacked(per_sigma: list[dict], key: str) -> Tensor:
    """The values of `key` across the per-sigma distillation tables: [L, ...]."""
    return torch.stack([torch.as_tensor(table[key]) for table in per_sigma])


def distillation_summary(per_sigma: list[dict], method: str, n_samples: int, sigmas: Tensor) -> dict:
    """results["distillation"][network] from the per-sigma stage outputs (n_samples: the distillation's)."""
    summary = {"method": method, "weight_nmse": stacked(per_sigma, "weight_nmse"),
               "weight_nmse_split_half": stacked(per_sigma, "weight_nmse_split_half"),
               **predicted_noise(per_sigma, method, n_samples, sigmas),
               "alignment": stacked(per_sigma, "alignment"),
               "rmse_linear_vs_gaussian": stacked(per_sigma, "rmse_linear_vs_gaussian"),
               "fit_mse": stacked(per_sigma, "fit_mse"),
               "spectrum_linear": stacked(per_sigma, "spectrum_linear"),
               "spectrum_gaussian": stacked(per_sigma, "spectrum_gaussian")}
    if method == "gd":
        summary["loss_curves"] = stacked(per_sigma, "losses")
    return summary


def predicted_noise(per_sigma: list[dict], method: str, n_samples: int, sigmas: Tensor) -> dict:
    """weight_nmse_noise_predicted and rmse_noise_predicted [L]: what least-squares noise alone adds to the weight
    NMSE and to the RMSE of the fit's outputs (analysis.least_squares_noise); NaN for gradient-descent fits and
    for least squares without spare samples (n_samples = D + 1)."""
    if method != "lstsq" or n_samples <= torch.as_tensor(per_sigma[0]["spectrum_gaussian"]).numel() + 1:
        nan = torch.full((len(per_sigma),), math.nan, dtype=torch.float64)
        return {"weight_nmse_noise_predicted": nan, "rmse_noise_predicted": nan.clone()}
    pairs = [least_squares_noise(float(table["fit_mse"]), n_samples, table["spectrum_gaussian"], float(sigma))
             for table, sigma in zip(per_sigma, sigmas)]
    return {"weight_nmse_noise_predicted": torch.tensor([nmse for nmse, _ in pairs], dtype=torch.float64),
            "rmse_noise_predicted": torch.tensor([output for _, output in pairs], dtype=torch.float64).sqrt()}


def network_results(study: dict, method: str, n_samples: int, sigmas: Tensor) -> dict:
    """The per-network blocks of results.json from one network's stage outputs."""
    trajectory, generalization = study["trajectory"], study["generalization"]
    return {
        "linearity": study["linearity"],
        "distillation": distillation_summary(study["distillation"], method, n_samples, sigmas),
        "score_error": {"linear": stacked(study["distillation"], "rmse_network_vs_linear"),
                        "gaussian": study["score_errors"]["gaussian"], "optimal": study["score_errors"]["optimal"]},
        "sampling": {"sigmas": trajectory["sigmas"], "nmse": trajectory["nmse"],
                     "nmse_gaussian_euler": trajectory["nmse_gaussian_euler"],
                     "final_nmse": float(trajectory["nmse"][-1])},
        "generalization": {"score": generalization["score"], "k": len(generalization["samples"]),
                           "nearest_distance_mean": float(generalization["nearest_distance"].mean()),
                           **verdict_fields(generalization)},
    }


def verdict_fields(generalization: dict) -> dict:
    """memorized_fraction, heldout_score, calibrated_score (score / heldout_score), verdict and generalizes
    (verdict == 'generalizes'), and paper_threshold_generalizes (the paper's CIFAR-10 rule, score > 0.6)."""
    copies = memorized_share(generalization)
    calibrated = calibrated_score(generalization["score"], generalization["heldout_score"])
    verdict = memorization_verdict(copies, calibrated)
    return {"memorized_fraction": copies, "heldout_score": generalization["heldout_score"],
            "calibrated_score": calibrated, "verdict": verdict, "generalizes": verdict == "generalizes",
            "paper_threshold_generalizes": generalization["score"] > PAPER["generalization_score_threshold"]}


def paper_checks(block: dict, sigmas: Tensor) -> dict:
    """The paper's claims evaluated on one network's numbers (ours beside the paper's)."""
    cosine = torch.as_tensor(block["linearity"]["cosine"])
    sweep = torch.as_tensor(block["linearity"]["sweep_cosine"])
    nmse = torch.as_tensor(block["distillation"]["weight_nmse"])
    high = sigmas >= 20
    return {
        "linearity_cosine_min": float(cosine.min()),
        "linearity_cosine_min_sigma": float(sigmas[cosine.argmin()]),
        "linearity_cosine_min_over_sweep": float(torch.cat([cosine, sweep.flatten()]).min()),
        "linearity_above_paper_min": bool(cosine.min() > PAPER["linearity_cosine_min"]),
        "weight_nmse_fraction_below_paper_max": float((nmse < PAPER["weight_nmse_max"]).double().mean()),
        "weight_nmse_split_half_fraction_below_paper_max": fraction_below(
            torch.as_tensor(block["distillation"]["weight_nmse_split_half"]), PAPER["weight_nmse_max"]),
        "rmse_linear_vs_gaussian_max": float(torch.as_tensor(block["distillation"]["rmse_linear_vs_gaussian"]).max()),
        "rmse_linear_vs_gaussian_noise_removed_max": noise_removed_max(block["distillation"]),
        "rmse_network_vs_linear_high_noise_max": (float(torch.as_tensor(block["score_error"]["linear"])[high].max())
                                                   if high.any() else None),
        "generalization_score": block["generalization"]["score"],
        **{key: block["generalization"][key] for key in ("calibrated_score", "heldout_score", "verdict", "generalizes",
                                                         "paper_threshold_generalizes", "memorized_fraction")},
    }


def noise_removed_max(distillation: dict) -> float | None:
    """Largest sqrt(max(0, RMSE^2 - predicted noise^2)) over sigma: the distilled-vs-Gaussian RMSE without the
    least-squares noise (an estimate; None for gradient-descent fits)."""
    rmse = torch.as_tensor(distillation["rmse_linear_vs_gaussian"], dtype=torch.float64)
    noise = torch.as_tensor(distillation["rmse_noise_predicted"], dtype=torch.float64)
    if torch.isnan(noise).all():
        return None
    return float((rmse.pow(2) - noise.pow(2)).clamp(min=0).sqrt().max())


def fraction_below(values: Tensor, limit: float) -> float | None:
    """Share of values below limit; None when all are NaN (not measured)."""
    return None if torch.isnan(values).all() else float((values < limit).double().mean())


def assemble_results(config, sigmas: Tensor, networks: dict, studies: dict, denoiser_linearity: dict,
                     strong: list[dict], sweeps: dict, timings: dict, command: str) -> dict:
    """The whole results.json table (plain JSON types)."""
    blocks = {name: network_results(study, config.distillation.method, config.distillation.n_samples, sigmas)
              for name, study in studies.items()}
    linearity = config.linearity
    results = {
        "study": "gaussian_structure", "version": __version__, "command": command, "config": to_dict(config),
        "sigmas": sigmas,
        "networks": {name: {"path": network.key["path"], "n_parameters": network.n_parameters,
                            "dataset": dataset_summary(network.data)} for name, network in networks.items()},
        "linearity": {"alpha": linearity.alpha, "beta": math.sqrt(1 - linearity.alpha**2),
                      "alphas": list(linearity.alphas), "betas": [math.sqrt(1 - a**2) for a in linearity.alphas],
                      "scores": {**{name: block["linearity"] for name, block in blocks.items()},
                                 **{f"denoiser:{name}": table
                                    for name, table in denoiser_linearity.get("scores", {}).items()}},
                      "denoiser_pairs": linearity.denoiser_pairs or linearity.n_pairs,
                      "denoiser_values": denoiser_linearity.get("values", {}),
                      "skipped": denoiser_linearity.get("skipped", {})},
        **{section: {name: block[section] for name, block in blocks.items()}
           for section in ("distillation", "score_error", "sampling", "generalization")},
        "strong_generalization": strong,
        "sweeps": sweeps,
        "paper": PAPER,
        "checks": {name: paper_checks(block, sigmas) for name, block in blocks.items()},
        "timings_s": timings,
    }
    return plain(results)


def dataset_summary(data) -> dict:
    return {"name": data.name, "n_images": len(data.images), "image_shape": list(data.images.shape[1:]),
            "load_options": data.load_options}


def strong_generalization_row(a: str, b: str, similarity: dict, gaussian_similarity: dict) -> dict:
    """One results["strong_generalization"] row: means over the shared-noise samples."""
    row = {"a": a, "b": b, "n_samples": len(similarity["pixel_cosine"])}
    row.update({metric: float(values.mean()) for metric, values in similarity.items()})
    row.setdefault("feature_cosine", None)
    row.update({f"{name}_pixel_cosine": float(values.mean()) for name, values in gaussian_similarity.items()})
    return row


def sweep_row(entry, network, generalization: dict, errors: dict) -> dict:
    """One results["sweeps"]["entries"] row."""
    return {"label": entry.name(), "kind": entry.kind, "value": entry.value,
            "path": entry.path, "n_train": len(network.data.images), "n_parameters": network.n_parameters,
            "generalization_score": generalization["score"],
            "nearest_distance_mean": float(generalization["nearest_distance"].mean()),
            **verdict_fields(generalization),
            "score_error_gaussian": errors["gaussian"], "score_error_optimal": errors["optimal"]}


def memorized_share(generalization: dict) -> float:
    """Fraction of samples copying a training image (nearest / second-nearest distance < 1/3); nan with a
    single training image."""
    ratio = generalization["nearest_ratio"]
    return float("nan") if torch.isnan(ratio).any() else float((ratio < MEMORIZED_RATIO).double().mean())


def shown_samples(generalization: dict, train: Tensor, count: int) -> dict[str, Tensor]:
    """The first `count` samples and their nearest training images (for figures): float32 [n, C, H, W] each."""
    indices = generalization["nearest_index"][:count]
    return {"samples": generalization["samples"][:count], "nearest": train.cpu()[indices].float()}


def network_arrays(study: dict, train: Tensor, image_shape: tuple[int, int, int], shown: int = 8) -> dict:
    """Images of one network the report draws: trajectories, singular vectors [L, k, C, H, W], samples."""
    trajectory = study["trajectory"]
    return {"trajectory_network": trajectory["network"][:, :shown],
            "trajectory_gaussian": trajectory["gaussian"][:, :shown],
            "vectors_linear": stacked(study["distillation"], "vectors_linear").reshape(
                len(study["distillation"]), -1, *image_shape),
            "vectors_gaussian": stacked(study["distillation"], "vectors_gaussian").reshape(
                len(study["distillation"]), -1, *image_shape),
            **shown_samples(study["generalization"], train, 2 * shown)}
