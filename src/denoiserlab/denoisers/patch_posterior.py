"""The empirical posterior mean of a single crop, for analyses (Niedoba et al. 2025, patch posterior, eq. 6).

For a crop C (a spatial bool mask [H, W] applied to every channel): weights softmax_n(-|C z - C x_n|^2 / (2 sigma^2))
over the N training images, and the posterior mean sum_n weights_n C x_n of the crop's pixels. Float64 throughout,
streamed over the training set like the optimal denoiser, chunk by chunk from its storage (an ImageSet's uint8,
memory-mapped or not): a call holds one chunk of images and its crop pixels, never a float copy of the set.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.optimal import posterior_mean, softmax_weights
from denoiserlab.denoisers.training_set import TrainingImages, training_source
from denoiserlab.distances import squared_distances_to, squared_norms
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample

CHUNK_IMAGES = 4096  # training images converted at a time


def square_crop(image_size: tuple[int, int], top: int, left: int, size: int) -> Tensor:
    """The bool [H, W] mask of the size x size square with top-left pixel (top, left); must lie inside the image."""
    height, width = image_size
    if size < 1 or not (0 <= top <= height - size and 0 <= left <= width - size):
        raise DenoiserLabError(f"a {size} x {size} square at (top={top}, left={left}) "
                               f"does not fit a {height} x {width} image")
    crop = torch.zeros(height, width, dtype=torch.bool)
    crop[top : top + size, left : left + size] = True
    return crop


def crop_pixels(images: Tensor, crop: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C * k]: the k pixels of crop (row-major) of every channel, flattened channel-major."""
    return images[:, :, crop.to(images.device)].flatten(1)


def patch_posterior(x: Tensor, sigma: float | Tensor, train: Tensor | ImageSet, crop: Tensor, xflip: bool = False,
                    return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Posterior mean of the crop's pixels. x: [B, C, H, W]; crop: bool [H, W], non-empty.

    Returns float64 [B, C, k] (the crop's k pixels in row-major order, as x[:, :, crop]); with return_weights also
    the softmax weights over the (N, or 2N with xflip) training images, float64 [B, N]. Memory: about 4 n D + 24 n k C
    + 24 B n bytes for chunks of n = CHUNK_IMAGES images of D values (+ 8 B N for the weights).
    """
    images = training_source(train, xflip)
    check_images(x)
    check_same_image_shape(x, images.image_shape)
    if not isinstance(crop, Tensor) or crop.dtype != torch.bool or tuple(crop.shape) != images.image_shape[1:]:
        raise DenoiserLabError(f"crop must be a bool tensor of the image size {list(images.image_shape[1:])}, got "
                               f"{crop!r:.80}")
    if not crop.any():
        raise DenoiserLabError("crop is empty (covers no pixel)")
    sigma = sigma_per_sample(sigma, x.shape[0], x.device)
    queries = crop_pixels(x, crop)  # [B, C * k]
    mean = posterior_mean(queries, sigma, crop_chunks(images, crop, x.device)).reshape(x.shape[0], x.shape[1], -1)
    if not return_weights:
        return mean
    chunks = crop_chunks(images, crop, x.device)
    distances = torch.cat([distances for _, distances in squared_distances_to(queries, chunks)], 1)
    return mean, softmax_weights(distances, sigma)


def crop_chunks(images: TrainingImages, crop: Tensor, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The crop's pixels of the training images, chunk by chunk: (float64 [n, C * k], their squared norms [n])."""
    for chunk in images.chunks(CHUNK_IMAGES, device):
        patches = crop_pixels(chunk, crop).double()  # [n, C * k]
        yield patches, squared_norms(patches)
