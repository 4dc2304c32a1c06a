"""IDX files (the MNIST family's format), gzipped or not: a folder of them, or one images file."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from denoiserlab.data.splits import require_train_split
from denoiserlab.errors import DenoiserLabError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIXES = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array of the shape its header declares."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DenoiserLabError(f"cannot read IDX file {path}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DenoiserLabError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DenoiserLabError(f"{path} is truncated: its header declares {ndim} dimensions but the file ends first")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a huge header cannot overflow
    if len(raw) - header_end != expected:
        raise DenoiserLabError(
            f"{path} is truncated or corrupt: header declares shape {shape} ({expected} bytes), "
            f"file holds {len(raw) - header_end} bytes of data"
        )
    return np.frombuffer(raw[header_end:], dtype=dtype).reshape(shape).copy()


def is_idx_folder(folder: Path) -> bool:
    """Whether folder holds MNIST-family IDX image files."""
    return any(folder.glob("*-images-idx3-ubyte*"))


def is_idx_name(name: str) -> bool:
    """Whether a file name is that of an IDX file (MNIST-family naming, e.g. 'train-images-idx3-ubyte.gz')."""
    return "-ubyte" in name or name.endswith((".idx", ".idx.gz"))


def read_mnist_family(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images [N, 1, H, W] and labels [N] (or None) from {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    prefix = _SPLIT_PREFIXES[split]
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    if images_path is None:
        raise DenoiserLabError(f"no IDX file {prefix}-images-idx3-ubyte[.gz] for split {split!r} in {folder}")
    return _images_and_labels(images_path, _find_idx(folder, f"{prefix}-labels-idx1-ubyte"))


def read_idx_images_file(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One IDX images file [N, H, W] as the train split, with the labels file beside it when there is one.

    The labels file is found by replacing 'images-idx3' with 'labels-idx1' in the name.
    """
    require_train_split(split, f"IDX file {path}")
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    has_labels = labels_path != path and labels_path.is_file()
    return _images_and_labels(path, labels_path if has_labels else None)


def _images_and_labels(images_path: Path, labels_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and check an images IDX file [N, H, W] and its optional labels IDX file [N]."""
    images = read_idx(images_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DenoiserLabError(
            f"{images_path} holds a {images.dtype} array of shape {images.shape}, expected uint8 images [N, H, W]"
        )
    if labels_path is None:
        return images[:, None], None
    labels = read_idx(labels_path)
    if labels.shape != (len(images),):
        raise DenoiserLabError(f"{labels_path} holds labels of shape {labels.shape} for {len(images)} images")
    return images[:, None], labels.astype(np.int64)


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The IDX file `stem` or `stem.gz` in folder, or None."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None
