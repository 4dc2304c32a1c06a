"""Fitting a tunable method to a network (step 4): per sigma, which swept value imitates the network best.

Each swept value of a method's tuned quantity (PSPC-Square / ELS / LS patch size, PSPC-Flex lambda, DataLocality
threshold, CFDM smoothing: its `Tunable`) gives outputs on two fitting sets drawn apart from the evaluation sets:
  reverse: the network's own Heun trajectories (Niedoba et al. 2025 sec. 5.1, fig. 4 right: the value with the
           lowest error against the network on its reverse-process states);
  forward: training images plus noise.
Two rules turn the sweep into a schedule sigma -> value:
  MSE:    the value with the lowest MSE per element against the network at each sigma (ties: first in sweep order);
  cosine: Kamb & Ganguli 2025's calibration, the value whose score (D(x) - x) / sigma^2 has the largest median
          cosine over samples with the network's score, on the network's reverse trajectory (ties: first).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from denoiserlab.denoisers.schedules import SCHEDULE_KINDS, GridSchedule
from denoiserlab.studies.common.config import SigmaConfig


def mse_per_sigma(outputs: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error per element at each sigma: [L, M, C, H, W] x2 -> float64 [L]."""
    return (outputs.double() - reference.double()).pow(2).flatten(1).mean(1)


def score_cosines(outputs: Tensor, reference: Tensor, z: Tensor) -> Tensor:
    """Cosine per sample between the scores (D(z) - z) / sigma^2 of two denoisers at the same inputs (sigma^2
    cancels): outputs, reference, z [L, M, C, H, W] -> float64 [L, M]; 0 where a score is exactly 0."""
    a = (outputs.double() - z.double()).flatten(2)  # [L, M, D]
    b = (reference.double() - z.double()).flatten(2)
    norms = a.norm(dim=2) * b.norm(dim=2)
    return torch.where(norms > 0, (a * b).sum(2) / norms.clamp_min(1e-300), 0.0)


def median_score_cosine(outputs: Tensor, reference: Tensor, z: Tensor) -> Tensor:
    """Median over samples of score_cosines at each sigma: float64 [L] (the lower middle for an even count)."""
    return score_cosines(outputs, reference, z).median(dim=1).values


def sweep_table(outputs: list[Tensor], references: dict[str, Tensor], z: Tensor) -> dict[str, Tensor]:
    """Per swept value (outputs[s]: [L, M, ...]) and reference ("network", "optimal"): {"mse_vs_<reference>":
    float64 [S, L]} and, against the network, {"score_cosine_median": float64 [S, L]}."""
    table = {f"mse_vs_{name}": torch.stack([mse_per_sigma(each, reference) for each in outputs])
             for name, reference in references.items()}
    table["score_cosine_median"] = torch.stack([median_score_cosine(each, references["network"], z)
                                                for each in outputs])
    return table


def best_per_sigma(mse: Tensor, values: list | tuple) -> list:
    """The swept value with the lowest MSE at each sigma: mse [S, L] -> L values (ties: first in sweep order)."""
    return [values[first_index(column, column.nan_to_num(torch.inf).min())] for column in mse.T]


def most_similar_per_sigma(cosine: Tensor, values: list | tuple) -> list:
    """The swept value with the largest median score cosine at each sigma: [S, L] -> L values (ties: first)."""
    return [values[first_index(column, column.nan_to_num(-torch.inf).max())] for column in cosine.T]


def first_index(column: Tensor, target: Tensor) -> int:
    """Index of the first entry equal to target (0 when none is: a column of NaN)."""
    matches = (column == target).nonzero()
    return int(matches[0]) if len(matches) else 0


def schedule_from_values(kind: str, values: list, sigma_config: SigmaConfig) -> GridSchedule:
    """A schedule of the given kind ("patch_size", "threshold", "smoothing") on the study's EDM grid."""
    return SCHEDULE_KINDS[kind](tuple(values), sigma_config.sigma_min, sigma_config.sigma_max, sigma_config.rho)


def save_schedule(schedule: GridSchedule, path: Path) -> Path:
    """Write a schedule file (TOML, atomically) that `denoiserlab.denoisers.load_schedule` reads."""
    return schedule.save(path)
