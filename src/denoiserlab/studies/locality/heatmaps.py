"""Gradient heatmaps of a network over the study's sigma grid (step 3) and heatmap files.

Heatmaps come from `denoiserlab.analysis.gradient_heatmaps` (PSPC paper eq. 8), one call per sigma, stacked to
float32 [L, H, W, H, W] (indexed [sigma, y, x, y', x'], output pixel first) in both readings.

Heatmap files (to ship precomputed heatmaps instead of recomputing them): `.npz` or `.pt` holding
`sigmas` float64 [L] (high -> low), `same_channel` float16 [L, H, W, H, W], optionally `all_channels` (same shape),
`n_samples` (z per sigma: one number, or int64 [L] when the count was chosen per sigma), `command` (the
command line that made them) and `network_fingerprint` (studies.common.cache.checkpoint_fingerprint of the checkpoint
they were computed from; a study refuses a file whose fingerprint is not its network's, and reports files without
one as unverified); for one-channel images, where both readings coincide, only `same_channel` is stored,
with `readings_equal` = True. A study reads such a file when a network's `heatmaps` key names it; its sigmas must
contain every sigma of the study grid (relative tolerance 1e-6).

Optional convergence evidence (`denoiserlab heatmaps --until-converged`; analysis.heatmap_convergence): the
criterion's `tolerance` (a relative change), and per sigma [L] `converged` (bool: the downstream criterion
held under every reading that builds masks), `flex_change` (relative change of PSPC-Flex's MSE to the network at
the fitted threshold when the z count doubled), `flex_fitted_threshold`, `relative_se` (bootstrap standard error of
the map over its norm), `half_iou` [L, T] (crop IoU of two half estimates at `iou_thresholds` [T]),
`running_distances` [L, K] (distance of the mean over the first `running_counts` [K] groups of z to the mean over
all), all of the same_channel reading, and for colour images the same five of the all_channels reading prefixed
`all_channels_`; and, where a high-z reference was computed at one sigma, `reference_sigma`, `reference_n_samples`,
`reference_distance` (relative distance of the map at that sigma to the reference) and `reference_iou` [T]
(for colour images also `all_channels_reference_distance` and `all_channels_reference_iou`).
Other arrays in a file are ignored, never loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.atomic import atomic_write
from denoiserlab.denoisers.flex_masks import ConstantThreshold, GridHeatmapMasks  # noqa: F401 (re-exported)
from denoiserlab.errors import DenoiserLabError
from denoiserlab.studies.locality.config import HeatmapConfig

READINGS = ("same_channel", "all_channels")
READING_EVIDENCE_KEYS = ("flex_change", "flex_fitted_threshold", "relative_se", "half_iou", "running_distances")
PER_SIGMA_KEYS = ("converged", *READING_EVIDENCE_KEYS, *("all_channels_" + key for key in READING_EVIDENCE_KEYS))
REFERENCE_KEYS = ("reference_sigma", "reference_n_samples", "reference_distance", "reference_iou")
CONVERGENCE_KEYS = ("tolerance", *PER_SIGMA_KEYS, "iou_thresholds", "running_counts", *REFERENCE_KEYS,
                    *("all_channels_" + key for key in REFERENCE_KEYS))
FILE_KEYS = ("sigmas", *READINGS, "readings_equal", "n_samples", "command", "network_fingerprint",
             *CONVERGENCE_KEYS)  # what is read
TEXT_KEYS = ("command", "network_fingerprint")


def compute_heatmaps(den, train: Tensor, sigmas: Tensor, config: HeatmapConfig, seed: int,
                     device: str = "cpu", progress: bool = True) -> dict:
    """Both readings at every sigma: {"sigmas": float64 [L], reading: float32 [L, H, W, H, W], "n_samples"}."""
    maps = {reading: [] for reading in READINGS}
    for level, sigma in enumerate(tqdm(sigmas.tolist(), desc="heatmaps", leave=False, disable=not progress)):
        result = gradient_heatmaps(den, train.to(device), sigma, config.n_samples, seed + level, config.batch_size,
                                   config.products_per_pass)
        for reading in READINGS:
            maps[reading].append(getattr(result, reading).float().cpu())
    return {"sigmas": sigmas.clone(), **{reading: torch.stack(maps[reading]) for reading in READINGS},
            "n_samples": config.n_samples}


def save_heatmaps_file(path: str | Path, heatmaps: dict, command: str, network_fingerprint: str | None = None) -> Path:
    """Write heatmaps (as from compute_heatmaps) as a float16 .npz or .pt heatmap file (module docstring), with the
    fingerprint of the network they came from when given."""
    path = Path(path)
    arrays = {"sigmas": heatmaps["sigmas"].double(), "n_samples": torch.as_tensor(heatmaps["n_samples"]),
              **{reading: heatmaps[reading].half() for reading in READINGS if reading in heatmaps},
              **{key: torch.as_tensor(value) for key, value in heatmaps.get("convergence", {}).items()}}
    if "all_channels" in arrays and torch.equal(arrays["all_channels"], arrays["same_channel"]):
        del arrays["all_channels"]  # one-channel images: the readings coincide, stored once
        arrays["readings_equal"] = torch.tensor(True)
    texts = {"command": command, **({"network_fingerprint": network_fingerprint} if network_fingerprint else {})}
    if path.suffix == ".npz":
        numpy_arrays = {key: value.numpy() for key, value in arrays.items()}
        texts = {key: np.array(value) for key, value in texts.items()}
        return atomic_write(path, lambda temp: write_npz(temp, **texts, **numpy_arrays))
    if path.suffix == ".pt":
        return atomic_write(path, lambda temp: torch.save({**arrays, **texts}, temp))
    raise DenoiserLabError(f"heatmap files end in .npz or .pt, got {str(path)!r}")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed to exactly `path` (through a handle, so numpy adds no .npz suffix)."""
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_heatmaps_file(path: str | Path) -> dict:
    """The content of a heatmap file: {"sigmas", "same_channel", ["all_channels"], "n_samples" (int, list per
    sigma or None), "command", "convergence" (its optional evidence, {} when absent)}."""
    path = Path(path)
    if not path.is_file():
        raise DenoiserLabError(f"heatmap file {str(path)!r} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            table = {key: archive[key] for key in archive.files if key in FILE_KEYS}
        table = {key: (str(value) if key in TEXT_KEYS else torch.from_numpy(value)) for key, value in table.items()}
    elif path.suffix == ".pt":
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise DenoiserLabError(f"heatmap file {str(path)!r} must hold a table of arrays, got"
                                   f" {type(loaded).__name__}")
        table = {key: value for key, value in loaded.items() if key in FILE_KEYS}
    else:
        raise DenoiserLabError(f"heatmap files end in .npz or .pt, got {str(path)!r}")
    for key in ("sigmas", "same_channel"):
        if key not in table:
            raise DenoiserLabError(f"heatmap file {str(path)!r} lacks the array {key!r} (has {sorted(table)})")
    if bool(table.pop("readings_equal", False)):
        table["all_channels"] = table["same_channel"]
    table["n_samples"] = n_samples_value(table["n_samples"]) if "n_samples" in table else None
    table["command"] = str(table.get("command", "unknown"))
    table["network_fingerprint"] = str(table["network_fingerprint"]) if "network_fingerprint" in table else None
    table["convergence"] = {key: table.pop(key) for key in CONVERGENCE_KEYS if key in table}
    return table


def check_heatmaps_network(table: dict, network_fingerprint: str, spec: str, network_name: str) -> bool | None:
    """Whether a heatmap file (as read by read_heatmaps_file) was computed from this network: True, None when the
    file does not say (older files), and an error naming both when it was computed from another checkpoint."""
    recorded = table["network_fingerprint"]
    if recorded is None:
        return None
    if recorded != network_fingerprint:
        raise DenoiserLabError(f"heatmap file {spec!r} was computed from another checkpoint (fingerprint {recorded})"
                               f" than network {network_name!r} ({network_fingerprint}); recompute it with"
                               " `denoiserlab heatmaps --network ...` or name the matching file")
    return True


def n_samples_value(value: Tensor) -> int | list[int]:
    """A file's z count: one int, or a list of ints (one per sigma)."""
    if value.ndim == 0:
        return int(value)
    if value.ndim != 1 or value.dtype.is_floating_point or bool((value < 1).any()):
        raise DenoiserLabError(f"a heatmap file's n_samples must be a count or one count per sigma, got {value}")
    return [int(count) for count in value]


def heatmaps_on_grid(table: dict, sigmas: Tensor, image_shape: tuple[int, int, int], path: str) -> dict:
    """The rows of a heatmap file at the study's sigmas [L], as float32, checked against the image size."""
    file_sigmas = table["sigmas"].double()
    rows = []
    for sigma in sigmas.tolist():
        match = ((file_sigmas - sigma).abs() <= 1e-6 * sigma).nonzero().flatten()
        if len(match) == 0:
            raise DenoiserLabError(f"heatmap file {path!r} has no heatmap at sigma = {sigma:.6g} (its sigmas:"
                                   f" {[round(s, 6) for s in file_sigmas.tolist()]})")
        rows.append(int(match[0]))
    side = tuple(image_shape[1:])
    n_samples = table["n_samples"]
    result = {"sigmas": sigmas.clone(), "command": table["command"],
              "n_samples": [n_samples[row] for row in rows] if isinstance(n_samples, list) else n_samples,
              "convergence": convergence_on_grid(table.get("convergence", {}), rows, len(file_sigmas))}
    for reading in READINGS:
        if reading in table:
            maps = table[reading][rows].float()
            if tuple(maps.shape[1:]) != side + side:
                raise DenoiserLabError(f"heatmap file {path!r}: {reading} has maps of shape {tuple(maps.shape[1:])},"
                                       f" expected {side + side} for these images")
            result[reading] = maps
    return result


def convergence_on_grid(convergence: dict, rows: list[int], n_levels: int) -> dict:
    """A file's convergence evidence with its per-sigma arrays at the study's grid rows (others unchanged)."""
    picked = {}
    for key, value in convergence.items():
        per_sigma = key in PER_SIGMA_KEYS and value.ndim >= 1 and value.shape[0] == n_levels
        picked[key] = value[rows] if per_sigma else value
    return picked
