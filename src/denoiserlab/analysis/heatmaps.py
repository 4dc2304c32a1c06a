"""Gradient heatmaps of a denoiser (Niedoba et al. 2025, PSPC paper eq. 8) and their spatial extent.

For output pixel (y, x): H[y, x, y', x'] = E_z sum_c |dD(z)_{c,y,x} / dz_{c,y',x'}| with z = y0 + sigma eps,
y0 a training image ("same_channel" reading: each output channel's gradient with respect to the same input channel),
or E_z sum_{c, c'} |dD(z)_{c,y,x} / dz_{c',y',x'}| ("all_channels"). The Jacobian of each z comes from one forward
pass and C*H*W vector-Jacobian products, vectorised in chunks with torch.func.vmap. All z of a batch share each
product, so the denoiser must treat the samples of a batch independently (no batch statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from denoiserlab.analysis.noisy_inputs import Denoiser, check_positive_int, check_sigma, noisy_batches
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images


@dataclass(frozen=True)
class GradientHeatmaps:
    same_channel: Tensor  # float64 [H, W, H, W]: E_z sum_c |dD_{c,y,x} / dz_{c,y',x'}|, indexed [y, x, y', x']
    all_channels: Tensor  # float64 [H, W, H, W]: E_z sum_{c,c'} |dD_{c,y,x} / dz_{c',y',x'}|
    n_samples: int  # number of noisy images z averaged over


def gradient_heatmaps(den: Denoiser, images: Tensor, sigma: float, n_samples: int = 100, seed: int = 0,
                      batch_size: int = 16, products_per_pass: int = 64) -> GradientHeatmaps:
    """Both heatmap readings of den at noise level sigma, averaged over n_samples noisy images (module docstring).

    images: float [N, C, H, W] in [-1, 1], drawn (seeded) with replacement; den must be differentiable in x.
    batch_size noisy images go through one forward pass; products_per_pass vector-Jacobian products are
    vectorised at a time (memory grows with batch_size * products_per_pass).
    """
    sigma = check_sigma(sigma)
    check_images(images, "images")
    check_positive_int(products_per_pass, "products_per_pass")
    channels, height, width = images.shape[1:]
    abs_jacobian = torch.zeros(channels * height * width, channels, height, width, dtype=torch.float64,
                               device=images.device)  # [D out, C, H, W in], sum over z of |J(z)|
    for z in noisy_batches(images, sigma, n_samples, batch_size, seed):
        abs_jacobian += summed_abs_jacobian(den, z, sigma, products_per_pass)
    abs_jacobian = abs_jacobian.reshape(channels, height, width, channels, height, width) / n_samples
    same_channel = torch.diagonal(abs_jacobian, dim1=0, dim2=3).sum(-1)  # [H, W, H, W]
    return GradientHeatmaps(same_channel, abs_jacobian.sum((0, 3)), n_samples)


def summed_abs_jacobian(den: Denoiser, z: Tensor, sigma: float, products_per_pass: int) -> Tensor:
    """sum over the batch of |dD(z_b) / dz_b|, float64 [D out, C, H, W in], from one forward pass and D
    vector-Jacobian products (one-hot cotangents shared by every z_b of the batch). z: [B, C, H, W]."""
    output, vjp_fn = torch.func.vjp(lambda inputs: den(inputs, sigma), z.detach())
    if output.shape != z.shape:
        raise DenoiserLabError(f"the denoiser must return the input's shape {tuple(z.shape)},"
                               f" got {tuple(output.shape)}")
    dim = z[0].numel()
    total = torch.empty(dim, *z.shape[1:], dtype=torch.float64, device=z.device)
    for start in range(0, dim, products_per_pass):
        rows = torch.arange(start, min(start + products_per_pass, dim), device=z.device)
        one_hot = torch.zeros(rows.shape[0], dim, dtype=output.dtype, device=z.device)
        one_hot[torch.arange(rows.shape[0]), rows] = 1
        cotangents = one_hot.reshape(-1, 1, *z.shape[1:]).expand(-1, *z.shape).contiguous()  # [k, B, C, H, W]
        (gradients,) = torch.func.vmap(vjp_fn)(cotangents)  # [k, B, C, H, W]: rows `rows` of every J(z_b)
        total[start : start + rows.shape[0]] = gradients.abs().sum(1)
    return total


def heatmap_extent(heatmap: Tensor, mass: float = 0.9) -> Tensor:
    """Spatial extent: the number of input pixels in the smallest set holding `mass` of each output pixel's map,
    averaged over the output pixels whose map is not all zero (an output that ignores its input, e.g. a pixel the
    Gaussian denoiser holds at a zero-variance mean, has no extent; NaN if no pixel has any mass).

    heatmap: [..., H, W, H, W] (output pixel first, as from gradient_heatmaps, non-negative); returns float64 [...]
    (0-d for one map).
    """
    if heatmap.ndim < 4 or heatmap.shape[-4:-2] != heatmap.shape[-2:]:
        raise DenoiserLabError(f"heatmap must have shape [..., H, W, H, W], got {tuple(heatmap.shape)}")
    if not 0 < mass <= 1:
        raise DenoiserLabError(f"mass must lie in (0, 1], got {mass}")
    if (heatmap < 0).any():
        raise DenoiserLabError("heatmap has negative entries (expected mean absolute gradients)")
    maps = heatmap.double().flatten(-2)  # [..., H, W, H*W]
    ordered = maps.sort(-1, descending=True).values
    fraction = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True)
    counts = ((fraction < mass * (1 - 1e-12)).sum(-1) + 1).clamp(max=maps.shape[-1]).double()  # [..., H, W]
    counts[ordered.sum(-1) == 0] = torch.nan
    return counts.flatten(-2).nanmean(-1)
