"""Turn a dataset source (a built-in name or a path) into raw uint8 images [N, C, H, W] and labels.

Formats of a path, told apart by what is there:
- a folder of MNIST-family IDX files, or of CIFAR-10 python batches (or holding `cifar-10-batches-py/`);
- any other folder: PNG/JPEG images, searched recursively (`image_folder`);
- `*.zip`: an EDM-style dataset zip; `*.npz`: a numpy archive; `*.npy`: a uint8 array, memory-mapped (`npy`);
  `*.tar.gz`, `*.tgz`, `*.tar`: CIFAR-10 python;
- a file named like an IDX file (`*-ubyte`, `*-ubyte.gz`, `*.idx`): one IDX images file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiserlab.data.builtin import BUILTIN_NAMES, read_builtin
from denoiserlab.data.cifar10 import FOLDER_NAME, is_cifar10_folder, read_cifar10_folder, read_cifar10_tar
from denoiserlab.data.edm_zip import read_edm_zip
from denoiserlab.data.idx import is_idx_folder, is_idx_name, read_idx_images_file, read_mnist_family
from denoiserlab.data.image_files import Allocate, allocate_in_memory
from denoiserlab.data.image_folder import read_image_folder
from denoiserlab.data.npy import is_npy_source, read_npy
from denoiserlab.data.npz import read_npz
from denoiserlab.data.splits import check_split
from denoiserlab.errors import DenoiserLabError

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def read_source(source: str | Path, split: str, resolution: int | None = None, policy: str = "pad",
                allocate: Allocate = allocate_in_memory) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Read `source` for `split`; returns (uint8 [N, C, H, W], int64 labels [N] or None, name 'source/split').

    `resolution`, `policy` and `allocate` (where decoded images go) reach only the image readers (folders,
    zips), whose files may differ in size and whose decoded pixels may not fit in memory.
    """
    check_split(split)
    if str(source) in BUILTIN_NAMES:
        images, labels = read_builtin(str(source), split)
        return images, labels, f"{source}/{split}"
    path = Path(source).expanduser()
    if not path.exists():
        raise DenoiserLabError(
            f"unknown dataset {str(source)!r}: not a built-in name ({', '.join(BUILTIN_NAMES)}) "
            f"and no file or folder at {path.absolute()}"
        )
    if not (path.is_dir() or path.is_file()):  # reading a FIFO or device would block or never end
        raise DenoiserLabError(f"{path} is not a regular file or folder (a FIFO, socket or device); datasets are "
                               "read from files and folders only")
    images, labels = _read_path(path, split, resolution, policy, allocate)
    return images, labels, f"{path.name}/{split}"


def _read_path(path: Path, split: str, resolution: int | None, policy: str,
               allocate: Allocate) -> tuple[np.ndarray, np.ndarray | None]:
    """Dispatch a path to the reader for its format."""
    if path.is_dir():
        return _read_folder(path, split, resolution, policy, allocate)
    name = path.name.lower()
    if name.endswith(".zip"):
        return read_edm_zip(path, split, resolution, policy, allocate)
    if name.endswith(".npz"):
        return read_npz(path, split)
    if is_npy_source(name):
        return read_npy(path, split)
    if name.endswith(_TAR_SUFFIXES):
        return read_cifar10_tar(path, split)
    if is_idx_name(name):
        return read_idx_images_file(path, split)
    raise DenoiserLabError(
        f"cannot tell the dataset format of {path}: expected a folder, a .zip, an .npz, a .npy, "
        "a CIFAR-10 .tar.gz or an IDX file (*-ubyte[.gz])"
    )


def _read_folder(folder: Path, split: str, resolution: int | None, policy: str,
                 allocate: Allocate) -> tuple[np.ndarray, np.ndarray | None]:
    """IDX folder, CIFAR-10 batches folder, or a folder of images."""
    if is_idx_folder(folder):
        return read_mnist_family(folder, split)
    if is_cifar10_folder(folder):
        return read_cifar10_folder(folder, split)
    if is_cifar10_folder(folder / FOLDER_NAME):
        return read_cifar10_folder(folder / FOLDER_NAME, split)
    return read_image_folder(folder, split, resolution, policy, allocate)
