"""Gradient heatmaps of a denoiser (Niedoba et al. 2025, PSPC paper eq. 8) and their spatial extent.

For output pixel (y, x): H[y, x, y', x'] = E_z sum_c |dD(z)_{c,y,x} / dz_{c,y',x'}| with z = y0 + sigma eps,
y0 a training image ("same_channel" reading: each output channel's gradient with respect to the same input channel),
or E_z sum_{c, c'} |dD(z)_{c,y,x} / dz_{c',y',x'}| ("all_channels"). The Jacobian of each z comes from one forward
pass and C*H*W vector-Jacobian products, vectorised in chunks with torch.func.vmap. All z of a batch share each
product, so the denoiser must treat the samples of a batch independently (no batch statistics).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.analysis.noisy_inputs import Denoiser, check_positive_int, check_sigma, noisy_batches
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images


SAMPLINGS = ("iid", "systematic")
VMAP_FALLBACK_NOTICE = "There is a performance drop because we have not yet implemented the batching rule"
# z x products per vmapped pass on a CPU when products_per_pass is not given: past ~64 the pass's activations outgrow
# the caches and each product costs 2-5x more (benchmarks/bench_heatmaps_chunking.py); a GPU takes 64 products
CPU_SAMPLES_PER_PASS = 32
GPU_PRODUCTS_PER_PASS = 64


class RunningSums(Protocol):
    """Where gradient_heatmaps keeps its running sums between batches of z (the heatmaps command: a file in its
    .parts folder), so that a computation killed after hours resumes at its first unfinished batch."""

    def load(self) -> tuple[int, Tensor] | None:
        """(z done, sums) saved by an earlier run of the same computation, or None."""

    def save(self, z_done: int, sums: Tensor) -> None:
        """Keep the sums over the first z_done z (float64 [2 readings, G, H*W out, H, W in]); may skip calls."""


@dataclass(frozen=True)
class GradientHeatmaps:
    same_channel: Tensor  # float64 [H, W, H, W]: E_z sum_c |dD_{c,y,x} / dz_{c,y',x'}|, indexed [y, x, y', x']
    all_channels: Tensor  # float64 [H, W, H, W]: E_z sum_{c,c'} |dD_{c,y,x} / dz_{c',y',x'}|
    n_samples: int  # number of noisy images z averaged over
    groups_same_channel: Tensor | None = None  # float64 [G, H, W, H, W]: same_channel over each of G groups of z
    groups_all_channels: Tensor | None = None  # float64 [G, H, W, H, W]: all_channels over each of G groups of z


def gradient_heatmaps(den: Denoiser, images: Tensor, sigma: float, n_samples: int = 100, seed: int = 0,
                      batch_size: int = 16, products_per_pass: int | None = None, sampling: str = "iid",
                      labels: Tensor | None = None, antithetic: bool = False, groups: int = 1,
                      progress: bool = False, running_sums: RunningSums | None = None) -> GradientHeatmaps:
    """Both heatmap readings of den at noise level sigma, averaged over n_samples noisy images (module docstring).

    images: float [N, C, H, W] in [-1, 1]; den must be differentiable in x. How the z = y0 + sigma eps are drawn
    (every choice keeps the estimate unbiased for the mean over y0 uniform on `images` and eps standard normal):
    - sampling "iid": y0 with replacement, as in the paper;
    - sampling "systematic": y0 at evenly spaced positions (random start) of the images ordered by `labels` (then
      at random), so every class gets its share of z (stratified) and no image is drawn twice;
    - antithetic: z come in pairs y0 +- sigma eps sharing y0 and eps (n_samples must be even).
    With groups = G > 1 the z are dealt to G groups (pairs kept together) and each group's mean maps are returned
    too, for standard errors and convergence (groups_same_channel, groups_all_channels). batch_size noisy images go
    through one forward pass; products_per_pass vector-Jacobian products are vectorised at a time (memory grows with
    their product; None: default_products_per_pass). progress: a bar over the z (a colour image's z costs minutes on
    a CPU). running_sums: the sums are saved there after each batch and taken up from there at the start (what it
    loads is checked: sums of another shape or a z count that is not a batch boundary start the computation afresh);
    the result equals an uninterrupted computation's.
    """
    sigma = check_sigma(sigma)
    check_images(images, "images")
    check_positive_int(groups, "groups")
    if products_per_pass is None:
        products_per_pass = default_products_per_pass(batch_size, images.device)
    check_positive_int(products_per_pass, "products_per_pass")
    z = heatmap_inputs(images, sigma, n_samples, seed, batch_size, sampling, labels, antithetic)  # [n, C, H, W]
    group_of = group_assignment(n_samples, groups, 2 if antithetic else 1)  # [n]
    height, width = images.shape[2:]
    shape = (2, groups, height * width, height, width)  # [reading, G, H*W out, H, W in]: sums of |J(z)| over z
    z_done, sums = resumed_sums(running_sums, shape, n_samples, batch_size, images.device)
    with tqdm(total=n_samples, initial=z_done, desc=f"z at sigma {sigma:.3g}", unit="z", leave=False,
              disable=not progress) as bar:
        for start in range(z_done, n_samples, batch_size):
            membership = torch.nn.functional.one_hot(group_of[start : start + batch_size], groups)  # [B, G]
            sums += summed_abs_readings(den, z[start : start + batch_size], sigma, products_per_pass,
                                        membership.to(sums))
            bar.update(len(membership))
            if running_sums is not None and start + len(membership) < n_samples:
                running_sums.save(start + len(membership), sums)
    counts = torch.bincount(group_of, minlength=groups).to(sums)  # [G]
    same_per_group, all_per_group = sums.reshape(2, groups, height, width, height, width)  # [G, H, W, H, W] each
    same_channel, all_channels = same_per_group.sum(0) / n_samples, all_per_group.sum(0) / n_samples
    if groups == 1:
        return GradientHeatmaps(same_channel, all_channels, n_samples)
    return GradientHeatmaps(same_channel, all_channels, n_samples, same_per_group / counts.view(-1, 1, 1, 1, 1),
                            all_per_group / counts.view(-1, 1, 1, 1, 1))


def default_products_per_pass(batch_size: int, device: torch.device) -> int:
    """Vector-Jacobian products per vmapped pass when none is asked for: on a CPU enough to make about
    CPU_SAMPLES_PER_PASS z x products (at least 1), elsewhere GPU_PRODUCTS_PER_PASS."""
    if torch.device(device).type == "cpu":
        return max(1, CPU_SAMPLES_PER_PASS // batch_size)
    return GPU_PRODUCTS_PER_PASS


def resumed_sums(running_sums: RunningSums | None, shape: tuple[int, ...], n_samples: int, batch_size: int,
                 device: torch.device) -> tuple[int, Tensor]:
    """(z done, float64 sums of `shape`) to start gradient_heatmaps from: what running_sums saved when it is sums
    of that shape over a whole number of batches short of n_samples with finite, non-negative entries (anything else
    is a foreign or damaged save), else (0, zeros)."""
    saved = None if running_sums is None else running_sums.load()
    if saved is not None:
        z_done, sums = saved
        if (isinstance(sums, Tensor) and tuple(sums.shape) == shape and sums.dtype == torch.float64
                and isinstance(z_done, int) and 0 < z_done < n_samples and z_done % batch_size == 0
                and bool(torch.isfinite(sums).all()) and bool((sums >= 0).all())):
            return z_done, sums.to(device)
    return 0, torch.zeros(shape, dtype=torch.float64, device=device)


def heatmap_inputs(images: Tensor, sigma: float, n_samples: int, seed: int, batch_size: int, sampling: str,
                   labels: Tensor | None, antithetic: bool) -> Tensor:
    """The noisy images z of gradient_heatmaps: [n_samples, C, H, W] in images' dtype and device. "iid" without
    antithetic pairs draws exactly what noisy_batches(images, sigma, n_samples, batch_size, seed) does."""
    check_positive_int(n_samples, "n_samples")
    if sampling not in SAMPLINGS:
        raise DenoiserLabError(f"sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
    if antithetic and n_samples % 2:
        raise DenoiserLabError(f"antithetic pairs need an even n_samples, got {n_samples}")
    if sampling == "iid" and not antithetic:
        return torch.cat(list(noisy_batches(images, sigma, n_samples, batch_size, seed)))
    generator = torch.Generator().manual_seed(int(seed))
    n_clean = n_samples // 2 if antithetic else n_samples
    if sampling == "iid":
        indices = torch.randint(images.shape[0], (n_clean,), generator=generator)
    else:
        indices = systematic_indices(images.shape[0], n_clean, labels, generator)
    eps = torch.randn((n_clean, *images.shape[1:]), generator=generator).to(images.device, images.dtype)
    clean = images[indices.to(images.device)]
    if not antithetic:
        return clean + sigma * eps
    return torch.stack([clean + sigma * eps, clean - sigma * eps], 1).flatten(0, 1)  # pairs adjacent


def systematic_indices(n_images: int, n_draws: int, labels: Tensor | None, generator: torch.Generator) -> Tensor:
    """n_draws image indices at positions floor(u + k N / n_draws), u ~ U[0, N / n_draws), of the images ordered
    by label and at random within a label: each image is drawn with probability n_draws / N (unbiased), every
    label gets its share. int64 [n_draws]; n_draws <= N."""
    if n_draws > n_images:
        raise DenoiserLabError(f"systematic sampling draws each image at most once: {n_draws} z > {n_images} images")
    order = torch.randperm(n_images, generator=generator)
    if labels is not None:
        if labels.shape != (n_images,):
            raise DenoiserLabError(f"labels must have shape [{n_images}], got {tuple(labels.shape)}")
        order = order[torch.argsort(labels.cpu()[order], stable=True)]
    step = n_images / n_draws
    start = float(torch.rand((), generator=generator, dtype=torch.float64)) * step
    positions = (start + step * torch.arange(n_draws, dtype=torch.float64)).floor().long().clamp(max=n_images - 1)
    return order[positions]


def group_assignment(n_samples: int, groups: int, block: int) -> Tensor:
    """Group of each z: consecutive blocks of `block` z (antithetic pairs) dealt round-robin to the groups:
    int64 [n_samples]. Every group needs at least one block."""
    if n_samples // block < groups:
        raise DenoiserLabError(f"{groups} groups need at least {groups * block} z, got {n_samples}")
    return (torch.arange(n_samples) // block) % groups


def summed_abs_readings(den: Denoiser, z: Tensor, sigma: float, products_per_pass: int,
                        membership: Tensor) -> Tensor:
    """Sums over the batch of |dD(z_b) / dz_b| in both readings, per group of z, from one forward pass and D
    vector-Jacobian products (one-hot cotangents shared by every z_b of the batch). Each pass of products is reduced
    to the readings at once, so no [D, D] array is held (4.8 GB in float64 for 4 groups of 3x64x64 images).

    z: [B, C, H, W]; membership: float64 [B, G], z_b's group as one-hot. Returns float64 [2, G, H*W out, H, W in]:
    [0] sum_c |dD_{c,y,x} / dz_{c,y',x'}| (same_channel), [1] sum_{c,c'} |dD_{c,y,x} / dz_{c',y',x'}| (all_channels).
    """
    output, vjp_fn = torch.func.vjp(lambda inputs: den(inputs, sigma), z.detach())
    if output.shape != z.shape:
        raise DenoiserLabError(f"the denoiser must return the input's shape {tuple(z.shape)},"
                               f" got {tuple(output.shape)}")
    dim, pixels = z[0].numel(), z.shape[2] * z.shape[3]
    total = torch.zeros(2, membership.shape[1], pixels, *z.shape[2:], dtype=torch.float64, device=z.device)
    for start in range(0, dim, products_per_pass):
        rows = torch.arange(start, min(start + products_per_pass, dim), device=z.device)
        one_hot = torch.zeros(rows.shape[0], dim, dtype=output.dtype, device=z.device)
        one_hot[torch.arange(rows.shape[0]), rows] = 1
        cotangents = one_hot.reshape(-1, 1, *z.shape[1:]).expand(-1, *z.shape).contiguous()  # [k, B, C, H, W]
        with warnings.catch_warnings():  # PyTorch's notice that fused CPU attention is vmapped by a loop (measured:
            warnings.filterwarnings("ignore", message=VMAP_FALLBACK_NOTICE)  # no faster with the math backend)
            (gradients,) = torch.func.vmap(vjp_fn)(cotangents)  # [k, B, C, H, W]: rows `rows` of every J(z_b)
        sums = torch.einsum("kb...,bg->gk...", gradients.abs().double(), membership)  # [G, k, C, H, W in]
        out_channel, out_pixel = rows // pixels, rows % pixels  # output index = (channel, pixel)
        total[0].index_add_(1, out_pixel, sums[:, torch.arange(rows.shape[0]), out_channel])  # its own channel
        total[1].index_add_(1, out_pixel, sums.sum(2))  # every channel
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
