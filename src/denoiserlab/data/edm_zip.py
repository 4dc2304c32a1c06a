"""An EDM-style dataset zip: PNG/JPEG images at any depth, optional `dataset.json` labels at its root."""

from __future__ import annotations

import zipfile
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


def read_edm_zip(
    path: Path, split: str, resolution: int | None = None, policy: str = "pad",
    allocate: Allocate = allocate_in_memory,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, C, H, W] and int64 labels [N] (or None) of one split of a dataset zip.

    Members are taken in name order. Like a folder, a zip whose members sit under `train/` or `test/` is split
    by them (each with its own dataset.json); any other zip is the train split.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DenoiserLabError(f"{path} is not a readable zip file: {error}") from None
    with archive:
        prefix = _split_prefix(archive.namelist(), split, path)
        names = sorted(name for name in archive.namelist() if name.startswith(prefix) and is_image_name(name))
        if not names:
            raise DenoiserLabError(f"no PNG/JPEG images in zip file {path}" + (f" under {prefix}" if prefix else ""))
        entries = [ImageEntry(f"{path}:{name}", partial(archive.open, name)) for name in names]
        images = decode_images(entries, resolution, policy, allocate)
        return images, _zip_labels(archive, prefix, [name[len(prefix):] for name in names], path)


def _split_prefix(names: list[str], split: str, path: Path) -> str:
    """'' for an unsplit zip, else 'train/' or 'test/'."""
    if not any(name.startswith(("train/", "test/")) for name in names):
        require_train_split(split, f"zip file {path}")
        return ""
    if not any(name.startswith(f"{split}/") for name in names):
        raise DenoiserLabError(f"zip file {path} is split into train/ and test/ but has nothing under {split}/")
    return f"{split}/"


def _zip_labels(archive: zipfile.ZipFile, prefix: str, names: list[str], path: Path) -> np.ndarray | None:
    """Labels of `names` from the dataset.json beside them, or None without one."""
    labels_name = f"{prefix}dataset.json"
    if labels_name not in archive.namelist():
        return None
    where = f"{path}:{labels_name}"
    try:
        text = archive.read(labels_name)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DenoiserLabError(f"cannot read {where}: {error}") from None
    return labels_for(names, parse_labels_json(text, where), where)
