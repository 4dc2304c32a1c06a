"""The empirical posterior mean of a single crop, for analyses (Niedoba et al. 2025, patch posterior, eq. 6).

For a crop C (a spatial bool mask [H, W] applied to every channel): weights softmax_n(-|C z - C x_n|^2 / (2 sigma^2))
over the N training images, and the posterior mean sum_n weights_n C x_n of the crop's pixels. Float64 throughout,
streamed over the training set like the optimal denoiser.
"""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.optimal import posterior_mean, softmax_weights
from denoiserlab.denoisers.training_set import training_images
from denoiserlab.distances import chunked_squared_distances, row_chunks, squared_norms
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample


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
    the softmax weights over the (N, or 2N with xflip) training images, float64 [B, N].
    """
    images = training_images(train, xflip)
    check_images(x)
    check_same_image_shape(x, tuple(images.shape[1:]))
    if not isinstance(crop, Tensor) or crop.dtype != torch.bool or tuple(crop.shape) != tuple(images.shape[2:]):
        raise DenoiserLabError(f"crop must be a bool tensor of the image size {list(images.shape[2:])}, got {crop!r:.80}")
    if not crop.any():
        raise DenoiserLabError("crop is empty (covers no pixel)")
    sigma = sigma_per_sample(sigma, x.shape[0], x.device)
    queries = crop_pixels(x, crop)  # [B, C * k]
    patches = crop_pixels(images, crop).to(x.device)  # [N, C * k]
    norms = squared_norms(patches)
    mean = posterior_mean(queries, sigma, row_chunks(patches, norms)).reshape(x.shape[0], x.shape[1], -1)
    if not return_weights:
        return mean
    distances = torch.cat([distances for _, _, distances in chunked_squared_distances(queries, patches, norms)], 1)
    return mean, softmax_weights(distances, sigma)
