"""The measurements of the Gaussian-structure study (Li et al. 2024), one function per stage, built on
`denoiserlab.analysis`: each takes denoisers, images and one config section and returns plain tensors (CPU)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.analysis import (
    LinearDenoiser,
    distill_linear,
    gaussian_linear_map,
    generalization_score,
    nearest_neighbour_distances,
    nearest_neighbour_ratio,
    pixel_cosine,
    score_approximation_error,
    singular_vector_alignment,
    weight_nmse,
)
from denoiserlab.analysis.distillation_noise import least_squares_with_halves, split_half_nmse
from denoiserlab.analysis.linearity import mixing_weights, noisy_pairs, pair_nmse
from denoiserlab.analysis.metrics import feature_cosine, rows_cosine
from denoiserlab.analysis.noisy_inputs import denoise_in_batches
from denoiserlab import data
from denoiserlab.denoisers import GaussianDenoiser
from denoiserlab.errors import DenoiserLabError
from denoiserlab.diffusion import append_zero, sample_euler, sample_heun, standard_noise
from denoiserlab.studies.gaussian_structure.config import (
    DistillationConfig,
    GeneralizationConfig,
    LinearityConfig,
    ScoreErrorConfig,
)

Denoiser = Callable[[Tensor, "float | Tensor"], Tensor]


def linearity_per_sigma(den: Denoiser, images: Tensor, sigmas: Tensor, config: LinearityConfig,
                        progress: bool = False, label: str = "") -> dict[str, Tensor]:
    """Linearity score (Li et al. eqs. 11-12) at every sigma, default alpha and each swept alpha.

    Returns float64 {"cosine", "nmse": [L], "sweep_cosine", "sweep_nmse": [A, L]}; beta = sqrt(1 - alpha^2).
    """
    alphas = (config.alpha, *config.alphas)
    scores = torch.stack([linearity_at_sigma(den, images, float(sigma), alphas, config)
                          for sigma in tqdm(sigmas, desc=f"linearity {label}", disable=not progress, leave=False)],
                         -1)  # [2, 1 + A, L]
    return {"cosine": scores[0, 0], "nmse": scores[1, 0], "sweep_cosine": scores[0, 1:], "sweep_nmse": scores[1, 1:]}


@torch.no_grad()
def linearity_at_sigma(den: Denoiser, images: Tensor, sigma: float, alphas: tuple[float, ...],
                       config: LinearityConfig) -> Tensor:
    """Cosine and NMSE linearity for several alphas on the pairs and noise analysis.linearity_score draws (same
    seed): D(x1) and D(x2) are computed once and shared by every alpha. Returns float64 [2 (cosine, nmse), A]."""
    x1, x2 = noisy_pairs(images, sigma, config.n_pairs, config.seed)
    weights = [mixing_weights(alpha, None) for alpha in alphas]
    inputs = torch.cat([x1, x2, *[alpha * x1 + beta * x2 for alpha, beta in weights]])
    outputs = denoise_in_batches(den, inputs, sigma, config.batch_size).double()
    d1, d2, *d_mixed = outputs.reshape(2 + len(alphas), config.n_pairs, -1)  # each [P, D]
    scores = []
    for (alpha, beta), mixed in zip(weights, d_mixed):
        combined = alpha * d1 + beta * d2
        scores.append(torch.stack([rows_cosine(mixed, combined).mean(), pair_nmse(mixed, combined).mean()]))
    return torch.stack(scores, 1).cpu()


def distill_at_sigma(den: Denoiser, gaussian: GaussianDenoiser, images: Tensor, sigma: float,
                     config: DistillationConfig, score_config: ScoreErrorConfig, progress: bool = False) -> dict:
    """Linear distillation of den at sigma (Li et al. eq. 9) compared with the Gaussian denoiser's map (eq. 6).

    Returns {"weight_nmse": float, "alignment": float64 [k] (|cos| of the i-th left singular vectors),
    "spectrum_linear", "spectrum_gaussian": float64 [D] (singular values, descending),
    "vectors_linear", "vectors_gaussian": float32 [k, D] (top left singular vectors, each linear one signed to
    agree with its Gaussian partner), "rmse_linear_vs_gaussian", "rmse_network_vs_linear": floats (eq. 10),
    "fit_mse": float (lstsq residual or last Adam loss), "losses": float64 [steps] ("gd") or [1],
    "weight_nmse_split_half": the weight NMSE without least-squares noise (analysis.distillation_noise; "lstsq"
    with n_samples >= 2 (D + 1) only, NaN otherwise)}.
    """
    gaussian_weight, _ = gaussian_linear_map(gaussian, sigma)
    weight, bias, losses, halves = distilled_map(den, images, sigma, config, progress)
    weight, gaussian_weight = weight.cpu(), gaussian_weight.cpu()
    left, spectrum, _ = torch.linalg.svd(weight)
    left_gaussian, spectrum_gaussian, _ = torch.linalg.svd(gaussian_weight)
    k = min(config.top_k, weight.shape[0])
    signs = torch.sign((left[:, :k] * left_gaussian[:, :k]).sum(0))
    linear = LinearDenoiser(weight, bias.cpu(), tuple(images.shape[1:]))
    errors = {name: score_approximation_error(a, b, images, sigma, score_config.n_samples, score_config.seed,
                                              score_config.batch_size)
              for name, (a, b) in {"rmse_linear_vs_gaussian": (linear, gaussian),
                                   "rmse_network_vs_linear": (den, linear)}.items()}
    return {"weight_nmse": weight_nmse(weight, gaussian_weight),
            "alignment": singular_vector_alignment(weight, gaussian_weight, k),
            "spectrum_linear": spectrum, "spectrum_gaussian": spectrum_gaussian,
            "vectors_linear": (left[:, :k] * torch.where(signs == 0, 1.0, signs)).T.float(),
            "vectors_gaussian": left_gaussian[:, :k].T.float(),
            **errors, "fit_mse": float(losses[-1]), "losses": losses.cpu(),
            "weight_nmse_split_half": split_half_nmse(*halves, gaussian_weight) if halves else math.nan}


def distilled_map(den: Denoiser, images: Tensor, sigma: float, config: DistillationConfig,
                  progress: bool) -> tuple[Tensor, Tensor, Tensor, tuple | None]:
    """W [D, D], b [D], losses and, for "lstsq", the W of the fits on each half of the draw (None for "gd" or
    too few samples for two fits)."""
    if config.method == "lstsq":
        return least_squares_with_halves(den, images, sigma, config.n_samples, config.seed, config.batch_size)
    learning_rate = config.learning_rate / math.sqrt(1 + sigma**2)  # inputs grow as sigma: keep W x's steps even
    return *distill_linear(den, images, sigma, config.method, config.n_samples, config.seed, config.batch_size,
                           config.steps, learning_rate, progress, return_losses=True), None


def score_errors_per_sigma(den: Denoiser, references: dict[str, Denoiser], images: Tensor, sigmas: Tensor,
                           config: ScoreErrorConfig) -> dict[str, Tensor]:
    """RMSE score-approximation error (Li et al. eq. 10) of den against each reference: {name: float64 [L]}."""
    return {name: torch.tensor([score_approximation_error(den, reference, images, float(sigma), config.n_samples,
                                                          config.seed, config.batch_size) for sigma in sigmas],
                               dtype=torch.float64)
            for name, reference in references.items()}


def states_nmse(states: Tensor, reference: Tensor) -> Tensor:
    """Per step, the mean over samples of |x - x_ref|^2 / |x_ref|^2: [S, B, ...] pair -> float64 [S]."""
    states, reference = states.flatten(2).double(), reference.flatten(2).double().to(states.device)
    return ((states - reference).pow(2).sum(2) / reference.pow(2).sum(2)).mean(1).cpu()


@torch.no_grad()
def trajectory_comparison(den: Denoiser, gaussian: GaussianDenoiser, noise: Tensor, sigmas: Tensor) -> dict:
    """The network's Euler trajectory on grid sigmas (then 0) vs the Gaussian closed-form trajectory (Li et al.
    eq. 7) from the same initial noise [B, C, H, W] (x = noise * sigmas[0]).

    Returns {"sigmas": float64 [S + 1] (ending in 0), "network", "gaussian", "gaussian_euler": float32
    [S + 1, B, C, H, W] (states; the last is the sample), "nmse": float64 [S + 1] (network vs closed form),
    "nmse_gaussian_euler": float64 [S + 1] (the Gaussian denoiser's own Euler trajectory vs its closed form:
    the discretisation part of the gap)}.
    """
    grid = append_zero(sigmas.double().cpu())
    network = sample_euler(den, noise, grid, return_trajectory=True).x_t
    closed_form = gaussian.ode_trajectory(noise, grid)
    gaussian_euler = sample_euler(gaussian, noise, grid, return_trajectory=True).x_t
    return {"sigmas": grid, "network": network.float().cpu(), "gaussian": closed_form.float().cpu(),
            "gaussian_euler": gaussian_euler.float().cpu(), "nmse": states_nmse(network, closed_form),
            "nmse_gaussian_euler": states_nmse(gaussian_euler, closed_form)}


@torch.no_grad()
def generate_samples(den: Denoiser, image_shape: tuple[int, int, int], config: GeneralizationConfig,
                     device: str, progress: bool = False, label: str = "") -> Tensor:
    """config.k PF-ODE samples of den from the seeded shared noise, in batches: float32 [K, C, H, W] (CPU)."""
    noise = standard_noise((config.k, *image_shape), config.seed)
    sampler = sample_heun if config.sampler == "heun" else sample_euler
    batches = range(0, config.k, config.batch_size)
    return torch.cat([sampler(den, noise[start : start + config.batch_size].to(device), config.steps).images.cpu()
                      for start in tqdm(batches, desc=f"samples {label}", disable=not progress, leave=False)]).float()


def generalization_table(samples: Tensor, train: Tensor) -> dict:
    """{"score": Li et al. eq. 14, "nearest_distance": float64 [K], "nearest_index": int64 [K], "nearest_ratio":
    float64 [K] (nearest / second-nearest training-image distance; nan with a single training image)}."""
    distances, indices = nearest_neighbour_distances(samples, train.cpu())
    ratio = (nearest_neighbour_ratio(samples, train.cpu()) if len(train) >= 2
             else torch.full((len(samples),), float("nan"), dtype=torch.float64))
    return {"score": generalization_score(samples, train.cpu()), "nearest_distance": distances,
            "nearest_index": indices, "nearest_ratio": ratio}


def heldout_generalization_score(load_options: dict, train: Tensor, k: int) -> dict:
    """The generalization score (eq. 14) of up to k held-out images of the same dataset against `train`: what a
    perfect generalizer scores, the 1 of the calibrated scale (training images score 0). {"score", "n"}; score is
    NaN when the dataset has no held-out split."""
    options = {**data.held_out_options(load_options), "xflip": False}
    try:
        heldout = data.load(**options)
    except DenoiserLabError:  # e.g. an image folder without a test/ subfolder
        return {"score": float("nan"), "n": 0}
    images = heldout.as_float(0, min(k, len(heldout)))
    return {"score": generalization_score(images, train.cpu()), "n": len(images)}


def samples_similarity(samples_a: Tensor, samples_b: Tensor, features: Callable | None) -> dict:
    """Per-sample similarity of two networks' samples from the same noise: float64 [K] each of "pixel_cosine",
    "nmse" (|a - b|^2 / |b|^2) and, with a feature model, "feature_cosine"."""
    flat_a, flat_b = samples_a.flatten(1).double(), samples_b.flatten(1).double()
    table = {"pixel_cosine": pixel_cosine(samples_a, samples_b),
             "nmse": (flat_a - flat_b).pow(2).sum(1) / flat_b.pow(2).sum(1)}
    if features is not None:
        table["feature_cosine"] = feature_cosine(samples_a, samples_b, features)
    return table
