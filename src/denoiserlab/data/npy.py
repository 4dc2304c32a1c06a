"""`.npy` files of uint8 images, memory-mapped: [N, H, W], [N, H, W, C] or [N, C, H, W] (C in 1, 3), with optional
integer labels [N] in a sibling file named `labels.npy`.

Nothing is read into memory but the labels: the images are a view of the file (opened with mmap_mode="c", as
`data.cache` opens its entries: pages are read on first touch and the file is never written, even if a caller
writes to the array; a read-only "r" map would crash the process on such a write instead of copying the page).
An NHWC file stays NHWC on disk and is seen through a transposed view [N, C, H, W], so a set larger than memory
loads in milliseconds and the denoisers stream it (their `storage` option).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiserlab.data.npz import check_labels, to_nchw
from denoiserlab.data.splits import require_train_split
from denoiserlab.errors import DenoiserLabError

LABELS_NAME = "labels.npy"  # the sibling file of an images .npy that holds its labels
_READ_ERRORS = (OSError, EOFError, ValueError)


def is_npy_source(source: str | Path) -> bool:
    """Whether `source` names a .npy file (by its suffix)."""
    return str(source).lower().endswith(".npy")


def read_npy(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(memory-mapped uint8 images [N, C, H, W], int64 labels [N] or None) of an images .npy, as the train split."""
    require_train_split(split, f"{path}")
    images = _open_images(path)
    labels_path = path.with_name(LABELS_NAME)
    if labels_path == path or not (labels_path.exists() or labels_path.is_symlink()):
        return images, None
    return images, _read_labels(labels_path, len(images))


def _open_images(path: Path) -> np.ndarray:
    """The images array of the file, memory-mapped, checked and seen as [N, C, H, W]."""
    try:
        images = np.load(path, mmap_mode="c", allow_pickle=False)
    except _READ_ERRORS as error:
        raise DenoiserLabError(f"{path} is not a readable uint8 .npy file: {error}") from None
    if not isinstance(images, np.memmap):  # np.load returns an archive for an .npz renamed to .npy
        raise DenoiserLabError(f"{path} is not a .npy array file (an archive?); give a .npy written by numpy.save")
    if images.ndim > 1 and not images.flags.c_contiguous:
        raise DenoiserLabError(f"{path} is stored in Fortran order, so reading one image touches the whole file;"
                               " save it in C order (numpy.save(path, numpy.ascontiguousarray(images)))")
    return to_nchw(images, f"{path}")


def _read_labels(path: Path, n_images: int) -> np.ndarray:
    """int64 labels [N] of a labels .npy; its shape and dtype are checked before its data is read."""
    if not path.is_file():  # a FIFO or device would block or never end
        raise DenoiserLabError(f"{path} is not a regular file (a FIFO, socket, device or folder); labels are read"
                               " from a .npy file only")
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as error:
        raise DenoiserLabError(f"{path} is not a readable .npy file of labels: {error}") from None
    if not isinstance(labels, np.ndarray):
        raise DenoiserLabError(f"{path} is not a .npy array file (an archive?); give a .npy written by numpy.save")
    return check_labels(labels, n_images, f"{path}")
