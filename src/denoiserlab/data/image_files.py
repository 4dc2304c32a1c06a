"""Decode PNG/JPEG files into one uint8 array [N, C, H, W]; shared by image folders and EDM-style zips.

Colour handling (stated once, here): grey images ('1', 'L', 'LA') give 1 channel, colour images ('P', 'PA',
'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr') give 3. Alpha is dropped, not composited (RGBA -> RGB, LA -> L);
palettes are expanded to RGB; a set that mixes grey and colour images is loaded with 3 channels, the grey
images repeated (a lossless change). Other modes (16-bit, float) are refused with an error naming the file.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from denoiserlab.data.transforms import match_resolution
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_memory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
Allocate = Callable[[tuple[int, ...]], np.ndarray]  # shape -> writable uint8 array of that shape
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, zipfile.BadZipFile,
                  Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageEntry:
    """One image file of a dataset."""

    where: str  # how errors name it: a path, or "archive.zip:member"
    open: Callable[[], BinaryIO]  # returns a fresh binary handle on the file's bytes


def is_image_name(name: str) -> bool:
    """Whether a file name has a PNG/JPEG suffix (any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def allocate_in_memory(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array of `shape` in memory (the default `allocate` of the image readers)."""
    check_memory(math.prod(shape), f"{shape[0]} decoded images of shape {list(shape[1:])}")
    return np.empty(shape, dtype=np.uint8)


def decode_images(entries: list[ImageEntry], resolution: int | None = None, policy: str = "pad",
                  allocate: Allocate = allocate_in_memory) -> np.ndarray:
    """Decode entries, in order, into uint8 [N, C, H, W] from `allocate(shape)` (e.g. a memory-mapped file).

    Without `resolution` every image must have the same size (else an error names two files); with it, each
    image is brought to resolution x resolution by `policy` ('pad' | 'crop' | 'resize', see transforms).
    Headers are read first, so the output is allocated once and sizes are checked before any decoding.
    """
    headers = [_read_header(entry) for entry in entries]  # [(mode, (width, height))]
    channels = 3 if any(mode in COLOUR_MODES for mode, _ in headers) else 1
    height, width = _common_size(entries, headers, resolution)
    images = allocate((len(entries), channels, height, width))
    for i, entry in enumerate(entries):
        images[i] = _decode(entry, channels, resolution, policy)
    return images


def _read_header(entry: ImageEntry) -> tuple[str, tuple[int, int]]:
    """(Pillow mode, (width, height)) of one image, read from its header only."""
    try:
        with entry.open() as handle, Image.open(handle) as image:
            mode, size = image.mode, image.size
    except _DECODE_ERRORS as error:
        raise DenoiserLabError(f"cannot read image {entry.where}: {error}") from None
    if mode not in GREY_MODES + COLOUR_MODES:
        raise DenoiserLabError(
            f"unsupported image mode {mode!r} in {entry.where}; supported: 8-bit grey, RGB, RGBA, palette"
        )
    return mode, size


def _common_size(entries: list[ImageEntry], headers: list, resolution: int | None) -> tuple[int, int]:
    """(H, W) of the output: resolution x resolution, or the one size all images share."""
    if resolution is not None:
        return resolution, resolution
    first_width, first_height = headers[0][1]
    for entry, (_, (width, height)) in zip(entries, headers):
        if (width, height) != (first_width, first_height):
            raise DenoiserLabError(
                f"images differ in size: {entries[0].where} is {first_width}x{first_height} (WxH) but {entry.where} "
                f"is {width}x{height}; pass resolution=... to bring them to one size"
            )
    return first_height, first_width


def _decode(entry: ImageEntry, channels: int, resolution: int | None, policy: str) -> np.ndarray:
    """One image as uint8 [channels, H, W], brought to `resolution` when given."""
    try:
        with entry.open() as handle, Image.open(handle) as image:
            pixels = np.asarray(_convert(image, channels))
    except _DECODE_ERRORS as error:
        raise DenoiserLabError(f"cannot read image {entry.where}: {error}") from None
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # [C, H, W]
    if resolution is None:
        return pixels
    try:
        return match_resolution(pixels[None], resolution, policy)[0]
    except DenoiserLabError as error:
        raise DenoiserLabError(f"{entry.where}: {error}") from None


def _convert(image: Image.Image, channels: int) -> Image.Image:
    """Pillow image -> mode 'L' (channels 1) or 'RGB' (channels 3); alpha dropped, palettes expanded."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("L" if channels == 1 else "RGB")
