"""Dataset options applied by `load`, all on uint8 numpy arrays [N, C, H, W]."""

from __future__ import annotations

import numpy as np
from PIL import Image

from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_memory

RESOLUTION_POLICIES = ("pad", "crop", "resize")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luminance


def keep_classes(images: np.ndarray, labels: np.ndarray | None, classes: list[int], name: str):
    """Keep the images whose label is in `classes`."""
    if labels is None:
        raise DenoiserLabError(f"dataset {name} has no labels, so 'classes' cannot be applied")
    keep = np.isin(labels, np.asarray(classes))
    if not keep.any():
        raise DenoiserLabError(f"dataset {name} has no images of classes {list(classes)}")
    return images[keep], labels[keep]


def choose_subset(images: np.ndarray, labels: np.ndarray | None, n_images: int, seed: int, name: str,
                  offset: int = 0):
    """Images offset .. offset + n_images - 1 of a permutation seeded with `seed`, kept in their original order."""
    if not 1 <= n_images <= len(images):
        raise DenoiserLabError(f"subset must be between 1 and {len(images)} for dataset {name}, got {n_images}")
    if offset + n_images > len(images):
        raise DenoiserLabError(f"subset_offset {offset} + subset {n_images} exceeds the {len(images)} images of"
                               f" dataset {name}")
    index = np.sort(np.random.default_rng(seed).permutation(len(images))[offset : offset + n_images])
    return images[index], None if labels is None else labels[index]


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert [N, C, H, W] to 1 channel (BT.601 luminance) or 3 channels (grey repeated)."""
    if channels not in (1, 3):
        raise DenoiserLabError(f"channels must be 1 or 3, got {channels}")
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=1)
    if channels == 1 and have == 3:
        luma = np.tensordot(_LUMA_WEIGHTS, images.astype(np.float64), axes=([0], [1]))  # [N, H, W]
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None]
    raise DenoiserLabError(f"cannot convert images with {have} channels to {channels}")


def match_resolution(images: np.ndarray, resolution: int, policy: str = "pad") -> np.ndarray:
    """Make images resolution x resolution: 'pad' (centred, black = 0), 'crop' (centred) or 'resize' (Lanczos)."""
    if policy not in RESOLUTION_POLICIES:
        raise DenoiserLabError(f"unknown resolution_policy {policy!r}; valid: {', '.join(RESOLUTION_POLICIES)}")
    height, width = images.shape[2:]
    if (height, width) == (resolution, resolution):
        return images
    check_memory(images.shape[0] * images.shape[1] * resolution**2, f"{images.shape[0]} images of {resolution} x"
                 f" {resolution} pixels")
    if policy == "pad":
        return _pad_centred(images, resolution)
    if policy == "crop":
        return _crop_centred(images, resolution)
    return _resize(images, resolution)


def append_xflips(images: np.ndarray, labels: np.ndarray | None):
    """Append horizontally flipped copies: [N, C, H, W] -> [2N, C, H, W] (flip i is image N + i)."""
    check_memory(2 * images.nbytes, f"{len(images)} images and their flips")
    flipped = images[..., ::-1]
    labels = None if labels is None else np.concatenate([labels, labels])
    return np.concatenate([images, flipped]), labels


def _pad_centred(images: np.ndarray, resolution: int) -> np.ndarray:
    height, width = images.shape[2:]
    if height > resolution or width > resolution:
        raise DenoiserLabError(
            f"cannot pad {height}x{width} images to {resolution}x{resolution}; use resolution_policy 'crop' or 'resize'"
        )
    top, left = (resolution - height) // 2, (resolution - width) // 2
    padded = np.zeros(images.shape[:2] + (resolution, resolution), dtype=np.uint8)
    padded[:, :, top : top + height, left : left + width] = images
    return padded


def _crop_centred(images: np.ndarray, resolution: int) -> np.ndarray:
    height, width = images.shape[2:]
    if height < resolution or width < resolution:
        raise DenoiserLabError(
            f"cannot crop {height}x{width} images to {resolution}x{resolution}; use resolution_policy 'pad' or 'resize'"
        )
    top, left = (height - resolution) // 2, (width - resolution) // 2
    return np.ascontiguousarray(images[:, :, top : top + resolution, left : left + resolution])


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Lanczos resize of every channel with Pillow."""
    out = np.empty(images.shape[:2] + (resolution, resolution), dtype=np.uint8)
    for i, image in enumerate(images):
        for c, plane in enumerate(image):
            resized = Image.fromarray(plane).resize((resolution, resolution), Image.LANCZOS)
            out[i, c] = np.asarray(resized)
    return out
