"""`load(source, ...)`: the one entry point that turns a dataset source into an ImageSet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from denoiserlab.data.cache import read_source_cached
from denoiserlab.data.imageset import ImageSet
from denoiserlab.data.npy import is_npy_source
from denoiserlab.data.options import check_load_options, check_source
from denoiserlab.data.sources import read_source
from denoiserlab.data.transforms import (
    append_xflips,
    choose_subset,
    keep_classes,
    match_channels,
    match_resolution,
)
from denoiserlab.errors import DenoiserLabError


def load(
    source: str | Path = "fashion-mnist",
    split: str = "train",
    subset: int | None = None,
    classes: list[int] | None = None,
    resolution: int | None = None,
    resolution_policy: str = "pad",
    xflip: bool = False,
    channels: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    subset_offset: int = 0,
) -> ImageSet:
    """Load a dataset as uint8 images [N, C, H, W].

    source: a built-in name ('fashion-mnist': the vendored 10k/1k subset; 'fashion-mnist-full': Debian's
    60k/10k IDX files; 'emoji': 3,479/388 colour emoji, 3x32x32, vendored; 'emoji-64': the same at 3x64x64,
    drawn from Debian's fonts-noto-color-emoji on first use, see `data.emoji`) or a path (formats in
    `denoiserlab.data.sources`). split: 'train' or 'test'.
    Options are applied in this order: `classes` (keep these labels), `subset` (N images chosen by a
    permutation seeded with `seed`, kept in file order; `subset_offset` skips that many images of the permutation
    first, so subsets with offsets 0, N, 2N, ... and one seed are disjoint, and those with offset 0 are nested),
    `channels` (1: BT.601 luminance, 3: grey repeated),
    `resolution` (square side in pixels, with `resolution_policy` 'pad' (centred, zeros) | 'crop' (centred) |
    'resize' (Lanczos)), `xflip` (append horizontal flips: image N + i is the flip of image i).
    Image folders and zips apply `resolution` to each file as it is read, so files of mixed sizes can load.
    A uint8 `.npy` source is memory-mapped (see `data.npy`); without `classes`, `subset`, `channels`, a
    different `resolution` or `xflip` (which copy the images into memory), the ImageSet stays a view of the file.
    cache_dir: when given, the decoded source is kept there as a .npy and memory-mapped (see `data.cache`); a
    .npy source needs no cache and ignores it. It is not part of `load_options`, as it does not change the images.
    """
    check_source(source)
    check_load_options(split, subset, classes, resolution, resolution_policy, channels, seed, subset_offset, xflip)
    if cache_dir is None or is_npy_source(source):
        images, labels, name = read_source(source, split, resolution, resolution_policy)
    else:
        images, labels, name = read_source_cached(source, split, resolution, resolution_policy, cache_dir)
    if len(images) == 0:
        raise DenoiserLabError(f"dataset {name} is empty (0 images)")
    check_label_values(labels, name)
    if classes is not None:
        images, labels = keep_classes(images, labels, list(classes), name)
    if subset is not None:
        images, labels = choose_subset(images, labels, subset, seed, name, subset_offset)
    if channels is not None:
        images = match_channels(images, channels)
    if resolution is not None:
        images = match_resolution(images, resolution, resolution_policy)
    if xflip:
        images, labels = append_xflips(images, labels)
    options = dict(source=str(source), split=split, subset=subset, classes=None if classes is None else list(classes),
                   resolution=resolution, resolution_policy=resolution_policy, xflip=xflip, channels=channels,
                   seed=seed)
    if subset_offset:  # recorded only when used, so load options of earlier runs stay as they were
        options["subset_offset"] = subset_offset
    return ImageSet(
        uint8=torch.from_numpy(images if isinstance(images, np.memmap) else np.ascontiguousarray(images)),
        labels=None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        name=name,
        load_options=options,
    )


LABEL_LIMIT = 2**31  # class labels are integers in [0, LABEL_LIMIT)


def check_label_values(labels: np.ndarray | None, name: str) -> None:
    """Class labels must be integers in [0, 2**31): a negative or huge label is a broken file, not a class."""
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= LABEL_LIMIT):
        raise DenoiserLabError(f"dataset {name} has labels in [{labels.min()}, {labels.max()}]; class labels must be"
                               f" integers in [0, {LABEL_LIMIT - 1}]")
