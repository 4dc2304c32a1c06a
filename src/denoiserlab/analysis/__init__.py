"""Measurements on any denoiser callable den(x, sigma): linearity, linear distillation, score-approximation error,
memorization (nearest neighbours, generalization score), per-sample similarity metrics, gradient heatmaps,
feature models and the Fréchet distance of their features."""

from denoiserlab.analysis.distillation import distill_linear
from denoiserlab.analysis.distillation_noise import weight_nmse_versus_samples
from denoiserlab.analysis.feature_model import feature_encoder, image_features, load_feature_model
from denoiserlab.analysis.frechet import feature_frechet_distance, frechet_distance
from denoiserlab.analysis.heatmaps import GradientHeatmaps, gradient_heatmaps, heatmap_extent
from denoiserlab.analysis.linear_denoiser import LinearDenoiser
from denoiserlab.analysis.linearity import linearity_score
from denoiserlab.analysis.memorization import (
    calibrated_score,
    generalization_score,
    memorization_verdict,
    memorized_fraction,
    nearest_neighbour_distances,
    nearest_neighbour_ratio,
)
from denoiserlab.analysis.metrics import (
    feature_cosine,
    mean_and_median,
    pearson_r,
    per_sample_mse,
    pixel_cosine,
    r_squared,
    ssim,
)
from denoiserlab.analysis.score_error import score_approximation_error
from denoiserlab.analysis.weight_comparison import gaussian_linear_map, singular_vector_alignment, weight_nmse

__all__ = [
    "linearity_score", "distill_linear", "LinearDenoiser", "weight_nmse", "singular_vector_alignment",
    "gaussian_linear_map", "weight_nmse_versus_samples", "score_approximation_error", "generalization_score",
    "nearest_neighbour_distances",
    "nearest_neighbour_ratio", "memorized_fraction", "calibrated_score", "memorization_verdict",
    "per_sample_mse", "r_squared", "pearson_r", "pixel_cosine", "ssim", "feature_cosine", "mean_and_median",
    "gradient_heatmaps", "GradientHeatmaps", "heatmap_extent", "load_feature_model", "image_features",
    "feature_encoder",
    "frechet_distance", "feature_frechet_distance",
]
