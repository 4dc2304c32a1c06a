"""An affine map W x + b on flattened images as a denoiser callable (for distilled linear models)."""

from __future__ import annotations

from torch import Tensor

from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample


class LinearDenoiser:
    """D(x) = W x + b at one noise level, W [D, D], b [D] on flattened [C, H, W] images (sigma is only checked)."""

    def __init__(self, weight: Tensor, bias: Tensor, image_shape: tuple[int, int, int]):
        dim = 1
        for size in image_shape:
            dim *= size
        if weight.shape != (dim, dim) or bias.shape != (dim,):
            raise DenoiserLabError(f"for images {tuple(image_shape)} the weight must be [{dim}, {dim}] and the bias"
                                   f" [{dim}], got {tuple(weight.shape)} and {tuple(bias.shape)}")
        self.weight = weight
        self.bias = bias
        self.image_shape_ = tuple(image_shape)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; returns W x + b as [B, C, H, W] in x's dtype and device."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_, "the linear map's images")
        sigma_per_sample(sigma, x.shape[0], x.device)
        weight, bias = self.weight.to(x.device, x.dtype), self.bias.to(x.device, x.dtype)
        return (x.reshape(x.shape[0], -1) @ weight.T + bias).reshape(x.shape)
