"""PSPC-Square: the Patch Set Posterior Composite over all s x s crops (Niedoba et al. 2025, sections 4-5).

Every s x s crop C of the image (stride 1, no padding) gets its own empirical posterior mean over the co-located
crops of the N training images, softmax_n(-|C z - C x_n|^2 / (2 sigma^2)); each output pixel is the average of
the posterior means of the crops that contain it. With s = H = W this is the optimal denoiser.

Fast and exact: every crop distance is a window sum of one per-pixel squared-difference map d_n = sum_c (z - x_n)^2,
so all crop distances come from one box filter (`box_filter.py`), and the composite is
sum_n x_n * (transposed box filter of the normalised crop weights of n) / (crops per pixel): O(B N H W) for any s.
Two streaming passes over the training set: per-crop log normalisers, then the weighted sums. The CPU default is
the fused C kernel (`pspc_kernel.py`); the eager PyTorch path below is the readable reference and runs anywhere.

Precision: float32 per-pixel differences and cancellation-free window sums give every crop distance D to a relative
error of ~1e-7. Each crop's softmax runs in distance space, exp(-(D - m) / (2 sigma^2)) with m its smallest
distance, so the nearest crop (and any exact tie) gets exponent exactly 0, and an exponent is off by
~1e-7 (D + m) / (2 sigma^2): ~1e-2 for D = 1 at sigma = 0.002, far less for the crops that carry the weight.
Normalisers and sums are float64. No sigma > 0 overflows: as sigma -> 0 the composite tends to that of the nearest
training crops (the mean of exactly tied ones), as sigma -> inf to that of the mean crops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers import pspc_kernel
from denoiserlab.denoisers.box_filter import box_sums, box_sums_transposed, windows_per_pixel
from denoiserlab.denoisers.schedules import Tunable
from denoiserlab.denoisers.streaming_softmax import streaming_nearest_sum
from denoiserlab.denoisers.training_set import DeviceCopies, training_images
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_finite_output,
    check_flag,
    check_images,
    check_optional_count,
    check_same_image_shape,
    sigma_per_sample,
)

KERNELS = ("auto", "compiled", "eager")


@dataclass(frozen=True)
class PSPCSquareConfig:
    patch_size: int | Callable[[float], int] = 3  # crop side in pixels, or a schedule sigma -> side (PatchSchedule)
    xflip: bool = False  # also use the horizontal flip of every training image
    kernel: str = "auto"  # "compiled" (C kernel, CPU), "eager" (PyTorch, any device), "auto": compiled on CPU
    chunk_size: int | None = None  # training images per chunk on the eager path (None: about 32 MiB of float32)

    def __post_init__(self):
        if not callable(self.patch_size):
            check_patch_size(self.patch_size)
        if self.kernel not in KERNELS:
            raise DenoiserLabError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        check_optional_count(self.chunk_size, "chunk_size")
        check_flag(self.xflip, "xflip")


def check_patch_size(patch_size: object) -> int:
    """A patch size must be an int >= 1; returns it."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise DenoiserLabError(f"patch size must be an int >= 1 or a schedule sigma -> int, got {patch_size!r}")
    if patch_size < 1:
        raise DenoiserLabError(f"patch size must be >= 1, got {patch_size}")
    return patch_size


class PSPCSquare:
    """PSPC-Square denoiser D(x, sigma); sigma may differ per sample (samples are grouped by their patch size)."""

    config_class = PSPCSquareConfig
    tunable = Tunable("patch_size", "patch_size", (1, 3, 5, 7, 9, 11, 15, 19, 23, 28, 32),  # clamped to the image
                      legacy_names=("patch_sizes", "square"))

    def __init__(self, train: Tensor | ImageSet, patch_size: int | Callable[[float], int], xflip: bool = False,
                 kernel: str = "auto", chunk_size: int | None = None):
        self.config = PSPCSquareConfig(patch_size=patch_size, xflip=xflip, kernel=kernel, chunk_size=chunk_size)
        self.images_ = training_images(train, xflip)  # [N, C, H, W] float32, CPU
        self.image_shape_ = tuple(self.images_.shape[1:])
        self.lanes_ = None  # the training set laid out for the C kernel, built on its first use
        self._device_copies = DeviceCopies(self.images_)

    def patch_size_at(self, sigma: float) -> int:
        """The crop side used at noise level sigma, clamped to the image size."""
        size = self.config.patch_size(sigma) if callable(self.config.patch_size) else self.config.patch_size
        return min(check_patch_size(size), *self.image_shape_[1:])

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the PSPC-Square estimate of x0, shape/dtype/device of x."""
        check_images(x)
        check_same_image_shape(x, self.image_shape_)
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)
        sizes = torch.tensor([self.patch_size_at(value) for value in sigma.tolist()])
        out = torch.empty_like(x)
        for size in sizes.unique().tolist():
            group = (sizes == size).nonzero().flatten().to(x.device)
            out[group] = self.composite(x[group], sigma[group], size).to(x.dtype)
        return check_finite_output(out, "PSPC-Square", sigma)

    def composite(self, x: Tensor, sigma: Tensor, size: int) -> Tensor:
        """The composite for one patch size. x: [B, C, H, W]; sigma: float64 [B]; returns float64 [B, C, H, W]."""
        if use_compiled_kernel(self, x.device, "PSPC-Square"):
            return self._composite_compiled(x, sigma, size)
        return square_composite(x, sigma, self._device_copies.on(x.device)[0], size, self.config.chunk_size)

    def _composite_compiled(self, x: Tensor, sigma: Tensor, size: int) -> Tensor:
        if self.lanes_ is None:
            self.lanes_ = pspc_kernel.training_lanes(self.images_)
        crops = pspc_kernel.square_crops(x.shape[2], x.shape[3], size)
        numerators = pspc_kernel.composite_numerators(x, self.lanes_, self.images_.shape[0], sigma, crops,
                                                      torch.get_num_threads())
        return numerators / windows_per_pixel(*x.shape[2:], size)


def use_compiled_kernel(denoiser, device: torch.device, name: str,
                        load: Callable[[], object] = pspc_kernel.load_library) -> bool:
    """Whether a call of `denoiser` (with config.kernel) goes to the C kernel that `load` builds: CPU only; "auto"
    falls back to eager, with a warning, when the kernel cannot be built, and records kernel="eager" in the
    denoiser's config."""
    if denoiser.config.kernel == "eager" or device.type != "cpu":
        if denoiser.config.kernel == "compiled":
            raise DenoiserLabError(f"kernel='compiled' runs on CPU only, got a tensor on {device}")
        return False
    try:
        load()
    except pspc_kernel.KernelUnavailable as error:
        if denoiser.config.kernel == "compiled":
            raise
        pspc_kernel.warn_fallback(error, name)
        denoiser.config = dataclasses.replace(denoiser.config, kernel="eager")
        return False
    return True


def default_square_chunk(batch: int, image_shape: tuple[int, ...], bytes_per_chunk: int = 1 << 25) -> int:
    """Training images per chunk so that a float32 [B, n, C, H, W] intermediate is about `bytes_per_chunk`."""
    per_image = 4 * batch * image_shape[0] * image_shape[1] * image_shape[2]
    return max(1, bytes_per_chunk // per_image)


def crop_distances(queries: Tensor, train_chunk: Tensor, size: int) -> Tensor:
    """|C z_b - C x_n|^2 for every size x size crop C: [B, C, H, W], [n, C, H, W] -> [B, n, P1, P2]."""
    pixel_distances = (queries[:, None] - train_chunk[None]).square().sum(2)  # [B, n, H, W], per-pixel differences
    return box_sums(pixel_distances, size)


def square_composite(x: Tensor, sigma: Tensor, train: Tensor, size: int, chunk_size: int | None = None) -> Tensor:
    """Eager PSPC-Square composite (float32 work, float64 sums). x: [B, C, H, W]; sigma: [B]; train: [N, C, H, W].

    Pass 1 streams each crop's smallest distance m and normaliser s = sum_n exp(-(D_n - m) g) over chunks of the
    training set (g = 1 / (2 sigma^2), capped: see pspc_kernel.inverse_two_variance); pass 2 streams
    sum_n x_n * box_sums_transposed(exp(-(D_n - m) g) / s). Returns float64 [B, C, H, W].
    """
    queries = x.float()
    inv_two_var = pspc_kernel.inverse_two_variance(sigma).to(x.device)
    chunk_size = chunk_size or default_square_chunk(x.shape[0], tuple(x.shape[1:]))

    def distance_chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, train.shape[0], chunk_size):
            chunk = train[start : start + chunk_size]
            yield chunk, crop_distances(queries, chunk, size)

    crop_min, crop_sum = streaming_nearest_sum((distances for _, distances in distance_chunks()), inv_two_var)
    crop_min, crop_sum = crop_min[:, None], crop_sum.float()[:, None]  # [B, 1, P1, P2]
    g = inv_two_var[:, None, None, None]
    numerators = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for chunk, distances in distance_chunks():
        weights = torch.exp(-(distances - crop_min) * g) / crop_sum  # [B, n, P1, P2]
        pixel_weights = box_sums_transposed(weights, size)  # [B, n, H, W]
        numerators += (pixel_weights[:, :, None] * chunk).sum(1, dtype=torch.float64)
    return numerators / windows_per_pixel(*x.shape[2:], size, device=x.device)
