"""CIFAR-10 python batches: `cifar-10-python.tar.gz` or its extracted folder `cifar-10-batches-py`.

data_batch_1..5 are the train split (50,000 images), test_batch the test split (10,000), each a pickled dict
{b'data': uint8 [n, 3072] (1024 red, then green, then blue values of a row-major 32x32 image),
b'labels': [n] ints}. The pickles are read by `SafeUnpickler`, which builds only numpy arrays and plain
Python values, so a tampered file cannot run code. The tarball is read in place, never extracted.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from denoiserlab.errors import DenoiserLabError

try:  # numpy >= 2 moved the array pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

BATCH_NAMES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER_NAME = "cifar-10-batches-py"
_SIDE = 32


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that allows only what a numpy array needs; any other global raises UnpicklingError."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # name used by pickles from numpy 1.x / Python 2
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # name used by numpy >= 2
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return self.ALLOWED[(module, name)]


def is_cifar10_folder(folder: Path) -> bool:
    """Whether folder holds CIFAR-10 python batches."""
    return (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file()


def read_cifar10_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] of a split, from the extracted batches folder."""
    batches = []
    for name in BATCH_NAMES[split]:
        path = folder / name
        if not path.is_file():
            raise DenoiserLabError(f"CIFAR-10 folder {folder} lacks batch file {name}")
        batches.append(_parse_batch(path.read_bytes(), str(path)))
    return _concatenate(batches)


def read_cifar10_tar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] of a split, read from the .tar.gz without extracting."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}
            batches = [_parse_batch(_read_member(archive, members, name, path), f"{path}:{name}")
                       for name in BATCH_NAMES[split]]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DenoiserLabError(f"{path} is not a readable tar archive: {error}") from None
    return _concatenate(batches)


def _read_member(archive: tarfile.TarFile, members: dict, name: str, path: Path) -> bytes:
    """Bytes of the batch file `name` (at any depth) of the tar archive."""
    if name not in members:
        raise DenoiserLabError(f"{path} holds no CIFAR-10 batch file {name}")
    return archive.extractfile(members[name]).read()


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 [n, 3, 32, 32], int64 [n])."""
    try:
        batch = SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can fail in many ways; all mean "unreadable file"
        raise DenoiserLabError(f"{where} is not a readable CIFAR-10 batch: {error}") from None
    if not isinstance(batch, dict):
        raise DenoiserLabError(f"{where} is not a CIFAR-10 batch (a pickled dict), got {type(batch).__name__}")
    data, labels = _batch_value(batch, "data", where), _batch_value(batch, "labels", where)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3 * _SIDE**2,)):
        raise DenoiserLabError(f"{where}: 'data' must be a uint8 array [n, 3072], got {_describe(data)}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DenoiserLabError(f"{where}: 'labels' must be {len(data)} integers, got {_describe(labels)}")
    return data.reshape(-1, 3, _SIDE, _SIDE), labels.astype(np.int64)


def _batch_value(batch: dict, key: str, where: str):
    """batch[key], whether the pickle stored the key as bytes (Python 2) or str."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DenoiserLabError(f"{where} is not a CIFAR-10 batch: no {key!r} entry")


def _describe(value) -> str:
    """Short description of a value for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype} and shape {value.shape}"
    return type(value).__name__


def _concatenate(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Join batches in order."""
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])
