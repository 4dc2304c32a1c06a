"""A folder of PNG/JPEG images, searched recursively; `train/` and `test/` subfolders are the splits."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from denoiserlab.data.image_files import (
    Allocate,
    ImageEntry,
    allocate_in_memory,
    decode_images,
    is_image_name,
)
from denoiserlab.data.labels_json import labels_for, parse_labels_json
from denoiserlab.data.splits import require_train_split
from denoiserlab.errors import DenoiserLabError


def read_image_folder(
    folder: Path, split: str, resolution: int | None = None, policy: str = "pad",
    allocate: Allocate = allocate_in_memory,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, C, H, W] and int64 labels [N] (from `dataset.json`, else None) of one split.

    Images are taken in the order of their relative paths as strings; names starting with '.' are skipped.
    A folder with a `train/` or `test/` subfolder is split by them; any other folder is the train split.
    See `image_files` for channels, alpha and the `resolution` policy.
    """
    root = _split_root(folder, split)
    paths = sorted(_image_paths(root), key=lambda path: path.relative_to(root).as_posix())
    if not paths:
        raise DenoiserLabError(f"no PNG/JPEG images (*.png, *.jpg, *.jpeg) in folder {root}")
    entries = [ImageEntry(str(path), partial(open, path, "rb")) for path in paths]
    images = decode_images(entries, resolution, policy, allocate)
    return images, _folder_labels(root, [path.relative_to(root).as_posix() for path in paths])


def _split_root(folder: Path, split: str) -> Path:
    """The folder holding the images of `split`."""
    if not ((folder / "train").is_dir() or (folder / "test").is_dir()):
        require_train_split(split, f"folder {folder}")
        return folder
    if not (folder / split).is_dir():
        raise DenoiserLabError(
            f"folder {folder} is split into train/ and test/ subfolders but has no {split}/ subfolder"
        )
    return folder / split


def _image_paths(root: Path) -> list[Path]:
    """Image files under root, at any depth, skipping hidden files and folders."""
    return [path for path in root.rglob("*") if path.is_file() and is_image_name(path.name)
            and not any(part.startswith(".") for part in path.relative_to(root).parts)]


def _folder_labels(root: Path, names: list[str]) -> np.ndarray | None:
    """Labels of `names` from root/dataset.json, or None without one."""
    labels_path = root / "dataset.json"
    if not labels_path.is_file():
        return None
    return labels_for(names, parse_labels_json(labels_path.read_bytes(), str(labels_path)), str(labels_path))
