"""Built-in datasets: the vendored Fashion-MNIST subset, the full set from Debian's IDX files, and the colour
emoji sets (vendored 3x32x32; 3x64x64 drawn from Debian's font on first use, see `data.emoji`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiserlab.data.emoji import (
    DEBIAN_NOTO_EMOJI,
    VENDORED_EMOJI,
    emoji_label_names,
    read_emoji,
    read_emoji_64,
)
from denoiserlab.data.idx import read_mnist_family
from denoiserlab.errors import DenoiserLabError

VENDORED_FASHION_MNIST = Path(__file__).parent / "vendored" / "fashion-mnist-subset.npz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # where `dpkg -L dataset-fashion-mnist` puts it
BUILTIN_NAMES = ("fashion-mnist", "fashion-mnist-full", "emoji", "emoji-64")


def builtin_files(name: str) -> Path:
    """The file or folder a built-in dataset is read from."""
    files = {"fashion-mnist": VENDORED_FASHION_MNIST, "fashion-mnist-full": DEBIAN_FASHION_MNIST,
             "emoji": VENDORED_EMOJI, "emoji-64": DEBIAN_NOTO_EMOJI}
    return files[name]


def read_builtin(name: str, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, C, H, W] and int64 labels [N] of a built-in dataset."""
    readers = {"fashion-mnist": read_fashion_mnist_subset, "fashion-mnist-full": read_fashion_mnist_full,
               "emoji": read_emoji, "emoji-64": read_emoji_64}
    return readers[name](split)


def builtin_label_names(name: str) -> list[str] | None:
    """Names of a built-in dataset's labels (label i is names[i]), or None when they are not recorded."""
    return emoji_label_names() if name in ("emoji", "emoji-64") else None


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
