"""Built-in datasets: the vendored Fashion-MNIST subset and the full set from Debian's IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiserlab.data.idx import read_mnist_family
from denoiserlab.errors import DenoiserLabError

VENDORED_FASHION_MNIST = Path(__file__).parent / "vendored" / "fashion-mnist-subset.npz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # where `dpkg -L dataset-fashion-mnist` puts it
BUILTIN_NAMES = ("fashion-mnist", "fashion-mnist-full")


def builtin_files(name: str) -> Path:
    """The file or folder a built-in dataset is read from."""
    return VENDORED_FASHION_MNIST if name == "fashion-mnist" else DEBIAN_FASHION_MNIST


def read_builtin(name: str, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, 1, 28, 28] and int64 labels [N] of a built-in dataset."""
    if name == "fashion-mnist":
        return read_fashion_mnist_subset(split)
    return read_fashion_mnist_full(split)


def read_fashion_mnist_subset(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The vendored subset: uint8 images [N, 1, 28, 28] and labels [N] (10,000 train / 1,000 test)."""
    with np.load(VENDORED_FASHION_MNIST) as archive:
        return archive[f"{split}_images"][:, None], archive[f"{split}_labels"].astype(np.int64)


def read_fashion_mnist_full(split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The full Fashion-MNIST (60k train / 10k test) from Debian's package (a folder of its IDX files also
    loads, given as the source path)."""
    if not DEBIAN_FASHION_MNIST.is_dir():
        raise DenoiserLabError(
            f"full Fashion-MNIST not found at {DEBIAN_FASHION_MNIST}: install it with "
            "'sudo apt-get install dataset-fashion-mnist', or pass the folder holding its IDX files as the source"
        )
    return read_mnist_family(DEBIAN_FASHION_MNIST, split)
