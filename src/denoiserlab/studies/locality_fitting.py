"""Schedule fitting (step 4): sweep PSPC-Square patch sizes and PSPC-Flex thresholds, pick the best per sigma.

On a forward-process fitting set (drawn apart from the evaluation set), each swept value gives a composite at every
sigma; its MSE per element against the optimal denoiser (paper fig. 4 left: where do local and global agree?) and
against the network (fig. 4 right) is recorded, and the value with the lowest MSE against the network at each
sigma becomes the fitted schedule (ties: the first value in sweep order).
"""

from __future__ import annotations

from pathlib import Path

import tomli_w
import torch
from torch import Tensor

from denoiserlab.atomic import atomic_write
from denoiserlab.denoisers import PatchSchedule, PSPCFlex, PSPCSquare, ThresholdSchedule
from denoiserlab.studies.locality_config import SigmaConfig
from denoiserlab.studies.locality_heatmaps import ConstantThreshold, GridHeatmapMasks
from denoiserlab.studies.locality_sets import outputs_on

SCHEDULE_KINDS = {"pspc_square": "patch_size", "pspc_flex": "threshold"}  # denoiser -> schedule kind


def effective_patch_sizes(patch_sizes: tuple[int, ...], image_side: int) -> list[int]:
    """The swept sizes clamped to the image side, without repeats, ascending."""
    return sorted({min(size, image_side) for size in patch_sizes})


def mse_per_sigma(outputs: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error per element at each sigma: [L, M, C, H, W] x2 -> float64 [L]."""
    return (outputs.double() - reference.double()).pow(2).flatten(1).mean(1)


def square_sweep_outputs(train: Tensor, xflip: bool, z: Tensor, sigmas: Tensor, patch_sizes: list[int],
                         batch_size: int, device: str) -> Tensor:
    """PSPC-Square composites at every swept size: float32 [S, L, M, C, H, W]."""
    return torch.stack([outputs_on(PSPCSquare(train, size, xflip=xflip), z, sigmas, batch_size, device,
                                   f"PSPC-Square s={size}") for size in patch_sizes])


def flex_sweep_mse(train: Tensor, xflip: bool, z: Tensor, sigmas: Tensor, heatmaps: Tensor,
                   thresholds: tuple[float, ...], references: dict[str, Tensor], batch_size: int,
                   device: str) -> dict[str, Tensor]:
    """MSE per sigma of PSPC-Flex at every swept threshold against each reference: {name: float64 [T, L]}."""
    table = {name: [] for name in references}
    for lam in thresholds:
        masks = GridHeatmapMasks(heatmaps, sigmas, ConstantThreshold(lam))
        outputs = outputs_on(PSPCFlex(train, masks, xflip=xflip), z, sigmas, batch_size, device,
                             f"PSPC-Flex lambda={lam}")
        for name, reference in references.items():
            table[name].append(mse_per_sigma(outputs, reference))
    return {name: torch.stack(rows) for name, rows in table.items()}


def best_per_sigma(mse: Tensor, values: list) -> list:
    """The swept value with the lowest MSE at each sigma: mse [S, L] -> list of L values."""
    return [values[index] for index in mse.argmin(0).tolist()]


def schedule_from_values(kind: str, values: list, sigma_config: SigmaConfig) -> PatchSchedule | ThresholdSchedule:
    """A PatchSchedule ("patch_size") or ThresholdSchedule ("threshold") on the study's EDM grid."""
    schedule_class = PatchSchedule if kind == "patch_size" else ThresholdSchedule
    return schedule_class(tuple(values), sigma_config.sigma_min, sigma_config.sigma_max, sigma_config.rho)


def save_schedule(schedule: PatchSchedule | ThresholdSchedule, path: Path) -> Path:
    """Write a schedule file (TOML, atomically) that `denoiserlab.denoisers.load_schedule` reads."""
    return atomic_write(path, lambda temp: temp.write_text(tomli_w.dumps(schedule.to_dict())))
