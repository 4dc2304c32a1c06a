"""Build the vendored Fashion-MNIST subset shipped in the package (run once; the output is committed).

    python scripts/make_vendored_fashion_mnist.py /usr/share/datasets/fashion-mnist

Takes 1,000 training and 100 test images per class (10,000 + 1,000), chosen by a seeded permutation,
and stores them with their labels and their indices in the original files.
"""

import sys
from pathlib import Path

import numpy as np

from denoiserlab.data.idx import read_idx

PER_CLASS = {"train": 1000, "test": 100}
FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}
SEED = 20261123


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `per_class` images of each class, in a seeded random order, sorted for locality."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
    return np.sort(np.concatenate(chosen))


def main(folder: str, out: str = "src/denoiserlab/data/vendored/fashion-mnist-subset.npz") -> None:
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, pattern in FILES.items():
        images = read_idx(Path(folder) / pattern.format("images", 3))
        labels = read_idx(Path(folder) / pattern.format("labels", 1))
        index = balanced_indices(labels, PER_CLASS[split], rng)
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index]
        arrays[f"{split}_source_index"] = index.astype(np.int32)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
