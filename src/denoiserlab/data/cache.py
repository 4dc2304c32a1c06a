"""Optional on-disk cache of decoded sources: uint8 `.npy` files opened memory-mapped, so a big set is decoded once.

A cache entry is keyed by the source (built-in name, or path plus the names, sizes and modification times of
its files), the split and the reader's resolution options; the other load options are applied afterwards to
the memory-mapped array, so one entry serves every subset, class choice or flip. Files are written to a
temporary name and renamed, labels and metadata before images, so a present `.npy` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np

from denoiserlab.atomic import atomic_write, atomic_write_text, replacing
from denoiserlab.data.builtin import BUILTIN_NAMES, builtin_files
from denoiserlab.data.sources import read_source
from denoiserlab.errors import DenoiserLabError

CACHE_FORMAT_VERSION = 1


def read_source_cached(source: str | Path, split: str, resolution: int | None, policy: str,
                       cache_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Like `sources.read_source`, but images come from (and on a miss go to) a memory-mapped .npy in cache_dir.

    On a miss, image folders and zips are decoded straight into the .npy file, so a set larger than memory
    can be cached. The images array is opened with mmap_mode='c' (copy-on-write): pages are read lazily from
    disk and the file is never modified, even if a caller writes to the array.
    """
    stem = Path(cache_dir) / _cache_stem(source, split, resolution, policy, cache_dir)
    if not _entry_file(stem, ".npy").is_file():
        _build_entry(stem, source, split, resolution, policy)
    return _open_entry(stem)


def _cache_stem(source: str | Path, split: str, resolution: int | None, policy: str, cache_dir: str | Path) -> str:
    """File name stem '<source name>-<split>-<hash>' of a cache entry."""
    key = {"version": CACHE_FORMAT_VERSION, "source": _source_fingerprint(source, Path(cache_dir)), "split": split,
           "resolution": resolution, "policy": policy if resolution is not None else None}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(str(source)).name) or "source"
    return f"{label}-{split}-{digest}"


def _source_fingerprint(source: str | Path, cache_dir: Path) -> list:
    """What identifies a source's content: its built-in name or absolute path, and its file listing."""
    if str(source) in BUILTIN_NAMES:
        return [str(source), _file_listing(builtin_files(str(source)), cache_dir)]
    path = Path(source).expanduser().absolute()
    return [str(path), _file_listing(path, cache_dir)]


def _file_listing(path: Path, cache_dir: Path) -> list:
    """[relative name, size, mtime] of the file at path or of every file under it, leaving out cache_dir's
    files, so a cache kept inside an image folder does not change that folder's key."""
    if path.is_file():
        return [[path.name, *_size_and_mtime(path)]]
    cache_dir = cache_dir.expanduser().absolute()
    return [[file.relative_to(path).as_posix(), *_size_and_mtime(file)] for file in sorted(path.rglob("*"))
            if file.is_file() and cache_dir not in file.parents]


def _size_and_mtime(file: Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file."""
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns


def _entry_file(stem: Path, suffix: str) -> Path:
    """A file of a cache entry: '<stem>.npy' (images), '<stem>.labels.npy', '<stem>.json' (metadata)."""
    return stem.parent / f"{stem.name}{suffix}"


class _MemmapAllocator:
    """`allocate` for the image readers: the decoded images go straight into a new .npy file at `path`."""

    def __init__(self, path: Path):
        self.path = path
        self.array: np.ndarray | None = None  # the memory-mapped array once allocated

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        free = shutil.disk_usage(self.path.parent).free
        if math.prod(shape) > free:
            raise DenoiserLabError(f"the dataset cache entry needs {math.prod(shape) / 2**30:,.3g} GiB but"
                                   f" {self.path.parent} has {free / 2**30:,.3g} GiB free")
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=shape)
        return self.array


def _build_entry(stem: Path, source: str | Path, split: str, resolution: int | None, policy: str) -> None:
    """Read the source and write labels, metadata, then images, each atomically (temporary file, then rename)."""
    try:
        with replacing(_entry_file(stem, ".npy")) as images_file:
            allocator = _MemmapAllocator(images_file)
            images, labels, name = read_source(source, split, resolution, policy, allocate=allocator)
            if labels is not None:
                atomic_write(_entry_file(stem, ".labels.npy"), lambda temp: _save_npy(temp, labels))
            metadata = {"name": name, "has_labels": labels is not None, "shape": list(images.shape)}
            atomic_write_text(_entry_file(stem, ".json"), json.dumps(metadata))
            if images is allocator.array:  # decoded straight into the temporary .npy: flush it (renamed on exit)
                images.flush()
                del images, allocator.array
            else:
                _save_npy(images_file, np.ascontiguousarray(images))
    except OSError as error:
        raise DenoiserLabError(f"cannot write the dataset cache in {stem.parent}: {error}") from None


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save to exactly `path` (through a handle, so numpy adds no .npy suffix)."""
    with open(path, "wb") as handle:
        np.save(handle, array)


def _open_entry(stem: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(memory-mapped uint8 images [N, C, H, W], labels [N] or None, name) of a cache entry."""
    images_path = _entry_file(stem, ".npy")
    try:
        metadata = json.loads(_entry_file(stem, ".json").read_text())
        images = np.load(images_path, mmap_mode="c")
        labels = np.load(_entry_file(stem, ".labels.npy")) if metadata["has_labels"] else None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DenoiserLabError(
            f"dataset cache entry {images_path} is unreadable ({error}); delete it to rebuild"
        ) from None
    if images.dtype != np.uint8 or not isinstance(metadata, dict) or list(images.shape) != metadata.get("shape"):
        raise DenoiserLabError(f"dataset cache entry {images_path} does not match its metadata; delete it to rebuild")
    return images, labels, metadata["name"]
