"""The optimal empirical denoiser: the exact posterior mean under the training set (PSPC eq. 3; Karras et al. 2022, eq. 57)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.training_set import DeviceCopies, training_images
from denoiserlab.distances import chunked_squared_distances, squared_norms
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample


@dataclass(frozen=True)
class OptimalConfig:
    xflip: bool = False  # also use the horizontal flip of every training image


class OptimalDenoiser:
    """D(x, sigma) = sum_i softmax_i(-|x - x_i|^2 / (2 sigma^2)) x_i over the training images x_i.

    One streaming pass over chunks of the training set with an exact running log-sum-exp per query; distances
    in float64 (see `denoiserlab.distances`), so it stays exact down to sigma = 0.002.
    """

    config_class = OptimalConfig
    tunable = None  # no option to fit per sigma

    def __init__(self, train: Tensor | ImageSet, xflip: bool = False, chunk_size: int | None = None):
        self.config = OptimalConfig(xflip=xflip)
        images = training_images(train, xflip)
        self.image_shape_ = tuple(images.shape[1:])  # (C, H, W)
        # [N, D] float64, converted once: each call streams it straight into float64 GEMMs (8 bytes per value)
        self.train_flat_ = images.reshape(images.shape[0], -1).double()
        self.train_norms_ = squared_norms(self.train_flat_)  # [N] float64
        self.chunk_size = chunk_size
        self._device_copies = DeviceCopies(self.train_flat_, self.train_norms_)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns E[x0 | x] as [B, C, H, W] in x's dtype and device."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        train_flat, train_norms = self._device_copies.on(x.device)
        mean = posterior_mean(x.reshape(x.shape[0], -1), sigma, train_flat, train_norms, self.chunk_size)
        return mean.reshape(x.shape).to(x.dtype)

    def posterior_weights(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """The softmax weights over training images, float64 [B, N] (for analyses; holds all N at once)."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        train_flat, train_norms = self._device_copies.on(x.device)
        pieces = [-distances / (2 * sigma[:, None] ** 2)
                  for _, _, distances in chunked_squared_distances(x.reshape(x.shape[0], -1), train_flat, train_norms)]
        return torch.cat(pieces, 1).softmax(1)


def posterior_mean(queries: Tensor, sigma: Tensor, train_flat: Tensor, train_norms: Tensor,
                   chunk_size: int | None = None) -> Tensor:
    """Softmax-weighted mean of training rows with a running log-sum-exp. queries: [B, D]; sigma: [B] float64.

    Returns float64 [B, D]. Per chunk: logits l = -d / (2 sigma^2); running max m, running normaliser
    s = sum exp(l - m), running numerator acc = sum exp(l - m) y; rescaled by exp(m_old - m_new) when m grows.
    """
    batch, dim = queries.shape
    inv_two_var = 1.0 / (2 * sigma[:, None] ** 2)  # [B, 1]
    running_max = torch.full((batch, 1), -torch.inf, dtype=torch.float64, device=queries.device)
    normaliser = torch.zeros((batch, 1), dtype=torch.float64, device=queries.device)
    numerator = torch.zeros((batch, dim), dtype=torch.float64, device=queries.device)
    for _, chunk, distances in chunked_squared_distances(queries, train_flat, train_norms, chunk_size):
        logits = -distances * inv_two_var  # [B, n]
        new_max = torch.maximum(running_max, logits.max(1, keepdim=True).values)
        rescale = torch.exp(running_max - new_max)  # [B, 1]
        weights = torch.exp(logits - new_max)  # [B, n], in (0, 1]
        normaliser = normaliser * rescale + weights.sum(1, keepdim=True)
        numerator = numerator * rescale + weights @ chunk
        running_max = new_max
    return numerator / normaliser
