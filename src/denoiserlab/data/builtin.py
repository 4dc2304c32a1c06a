"""Built-in datasets: the vendored Fashion-MNIST subset and the full set from Debian's IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiserlab.data.idx import read_idx
from denoiserlab.errors import DenoiserLabError

VENDORED_FASHION_MNIST = Path(__file__).parent / "vendored" / "fashion-mnist-subset.npz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_NAMES = {"train": "train", "test": "t10k"}


def read_fashion_mnist_subset(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The vendored subset: uint8 images [N, 1, 28, 28] and labels [N] (10,000 train / 1,000 test)."""
    with np.load(VENDORED_FASHION_MNIST) as archive:
        return archive[f"{split}_images"][:, None], archive[f"{split}_labels"].astype(np.int64)


def read_mnist_family(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """MNIST-family IDX files in `folder` ({train,t10k}-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz])."""
    folder = Path(folder)
    images_path = _find_idx(folder, f"{_IDX_NAMES[split]}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{_IDX_NAMES[split]}-labels-idx1-ubyte", required=False)
    images = read_idx(images_path)
    if images.ndim != 3:
        raise DenoiserLabError(f"{images_path} holds an array of shape {images.shape}, expected [N, H, W]")
    labels = read_idx(labels_path).astype(np.int64) if labels_path else None
    if labels is not None and len(labels) != len(images):
        raise DenoiserLabError(f"{labels_path} has {len(labels)} labels for {len(images)} images")
    return images[:, None], labels


def read_fashion_mnist_full(split: str, folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The full Fashion-MNIST (60k train / 10k test) from Debian's package or a folder of its IDX files."""
    folder = Path(folder) if folder else DEBIAN_FASHION_MNIST
    if not folder.is_dir():
        raise DenoiserLabError(
            f"full Fashion-MNIST not found at {folder}: install it with "
            "'sudo apt-get install dataset-fashion-mnist', or pass the folder holding its IDX files"
        )
    return read_mnist_family(folder, split)


def _find_idx(folder: Path, stem: str, required: bool = True) -> Path | None:
    """The IDX file `stem` or `stem.gz` in folder."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    if required:
        raise DenoiserLabError(f"no IDX file {stem}[.gz] in {folder}")
    return None
