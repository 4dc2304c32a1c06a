"""`.npz` archives of uint8 images: [N, H, W], [N, H, W, C] or [N, C, H, W], with optional labels.

Keys: `{split}_images` (and `{split}_labels`) when the archive has split keys, as the vendored Fashion-MNIST
file does; otherwise `images` or the only array besides `labels`, as the train split.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from denoiserlab.data.splits import SPLITS, require_train_split
from denoiserlab.errors import DenoiserLabError

_CHANNEL_COUNTS = (1, 3)
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, C, H, W] and int64 labels [N] (or None) of one split of an .npz archive."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            images_key, labels_key = _keys(list(archive.files), split, path)
            images = archive[images_key]
            labels = archive[labels_key] if labels_key else None
    except _READ_ERRORS as error:
        raise DenoiserLabError(f"{path} is not a readable .npz file: {error}") from None
    return to_nchw(images, f"{path}:{images_key}"), check_labels(labels, len(images), f"{path}:{labels_key}")


def _keys(keys: list[str], split: str, path: Path) -> tuple[str, str | None]:
    """(images key, labels key or None) of `split`."""
    if any(f"{name}_images" in keys for name in SPLITS):
        if f"{split}_images" not in keys:
            raise DenoiserLabError(f"{path} has split keys but no {split}_images array (keys: {', '.join(keys)})")
        return f"{split}_images", f"{split}_labels" if f"{split}_labels" in keys else None
    require_train_split(split, f"{path}")
    candidates = ["images"] if "images" in keys else [key for key in keys if key != "labels"]
    if len(candidates) != 1:
        raise DenoiserLabError(
            f"{path} must hold an 'images' array, or one array besides 'labels'; "
            f"it holds: {', '.join(keys) or 'nothing'}"
        )
    return candidates[0], "labels" if "labels" in keys else None


def to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 [N, H, W] -> [N, 1, H, W]; [N, H, W, C] or [N, C, H, W] (C in 1, 3) -> [N, C, H, W], as views of
    `images` (nothing is copied: `data.load` makes in-memory arrays contiguous, memory-mapped ones stay views).

    The layout is told by which of axes 1 and 3 has size 1 or 3; when both or neither do, it is an error.
    """
    if images.dtype != np.uint8:
        raise DenoiserLabError(f"{where} must be a uint8 array, got dtype {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise DenoiserLabError(f"{where} must have shape [N, H, W], [N, H, W, C] or [N, C, H, W], got {images.shape}")
    channels_second, channels_last = images.shape[1] in _CHANNEL_COUNTS, images.shape[3] in _CHANNEL_COUNTS
    if channels_second == channels_last:
        raise DenoiserLabError(
            f"{where} has shape {images.shape}: cannot tell whether channels are axis 1 or axis 3 "
            "(exactly one of them must have size 1 or 3)"
        )
    return images if channels_second else images.transpose(0, 3, 1, 2)


def check_labels(labels: np.ndarray | None, n_images: int, where: str) -> np.ndarray | None:
    """Labels as int64 [N], checked against the number of images."""
    if labels is None:
        return None
    if labels.shape != (n_images,) or not np.issubdtype(labels.dtype, np.integer):
        raise DenoiserLabError(
            f"{where} must be {n_images} integer labels, got {labels.dtype} array of shape {labels.shape}"
        )
    return labels.astype(np.int64)
