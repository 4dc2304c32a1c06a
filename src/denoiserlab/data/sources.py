"""Turn a dataset source (a built-in name or a path) into raw uint8 images [N, C, H, W] and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiserlab.data import builtin
from denoiserlab.errors import DenoiserLabError

BUILTIN_NAMES = ("fashion-mnist", "fashion-mnist-full")
SPLITS = ("train", "test")


def read_source(source: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Read `source` for `split`; returns (uint8 [N, C, H, W], int64 labels [N] or None, name)."""
    if split not in SPLITS:
        raise DenoiserLabError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    name = str(source)
    if name == "fashion-mnist":
        images, labels = builtin.read_fashion_mnist_subset(split)
    elif name == "fashion-mnist-full":
        images, labels = builtin.read_fashion_mnist_full(split)
    else:
        images, labels = _read_path(Path(source), split)
        name = Path(source).name
    return images, labels, f"{name}/{split}"


def _read_path(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Dispatch a path to the reader for its format."""
    if not path.exists():
        raise DenoiserLabError(
            f"unknown dataset {str(path)!r}: not a built-in name ({', '.join(BUILTIN_NAMES)}) and no such file or folder"
        )
    if path.is_dir() and _has_idx_files(path):
        return builtin.read_mnist_family(path, split)
    raise DenoiserLabError(f"cannot tell the dataset format of {path}")


def _has_idx_files(folder: Path) -> bool:
    """Whether folder holds MNIST-family IDX image files."""
    return any(folder.glob("*-images-idx3-ubyte*"))
