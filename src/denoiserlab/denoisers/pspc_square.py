"""PSPC-Square: the Patch Set Posterior Composite over all s x s crops (Niedoba et al. 2025, sections 4-5).

Every s x s crop C of the image (stride 1, no padding) gets its own empirical posterior mean over the co-located
crops of the N training images, softmax_n(-|C z - C x_n|^2 / (2 sigma^2)); each output pixel is the average of
the posterior means of the crops that contain it. With s = H = W this is the optimal denoiser.

Fast and exact: every crop distance is a window sum of one per-pixel squared-difference map d_n = sum_c (z - x_n)^2,
so all crop distances come from one box filter (`box_filter.py`), and the composite is
sum_n x_n * (transposed box filter of the normalised crop weights of n) / (crops per pixel): O(B N H W) for any s.
Two streaming passes over the training set: per-crop log normalisers, then the weighted sums. The CPU default is
the fused C kernel (`pspc_kernel.py`), the CUDA default the fused Triton kernel (`pspc_triton.py`, when Triton is
installed); the eager PyTorch path below is the readable reference and runs anywhere.

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
from denoiserlab.denoisers import pspc_kernel, pspc_triton
from denoiserlab.denoisers.box_filter import box_sums, box_sums_transposed, windows_per_pixel
from denoiserlab.denoisers.distributed import check_same_queries, merge_nearest_sums_across, shard, sum_across
from denoiserlab.denoisers.schedules import Tunable, estimate_by_group
from denoiserlab.denoisers.streaming_softmax import streaming_nearest_sum
from denoiserlab.denoisers.training_set import (
    DeviceCopies,
    TrainingImages,
    check_storage,
    resolve_storage,
    training_source,
)
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_finite_output,
    check_flag,
    check_optional_count,
)

KERNELS = ("auto", "compiled", "eager", "triton")


@dataclass(frozen=True)
class PSPCSquareConfig:
    patch_size: int | Callable[[float], int] = 3  # crop side in pixels, or a schedule sigma -> side (PatchSchedule)
    xflip: bool = False  # also use the horizontal flip of every training image
    # "compiled" (C kernel, CPU), "triton" (fused Triton kernel, CUDA: pspc_triton.py), "eager" (PyTorch, any
    # device), "auto": compiled on CPU, triton on CUDA when Triton is installed (else eager, with a warning)
    kernel: str = "auto"
    # training images per chunk (None: about 32 MiB of float32 intermediates on the eager path, of float32 lanes
    # on the compiled path when streaming; streamed compiled chunks are rounded up to a multiple of 16)
    chunk_size: int | None = None
    # "ram": a float32 copy of the training set (and the C kernel's layout of it: 8 bytes a value), made once;
    # "stream": every call reads the set chunk by chunk from its storage (an ImageSet's uint8, memory-mapped or
    # not); "auto": ram for a float tensor and for an ImageSet whose copies fit in training_set.AUTO_RAM_BYTES
    # (1 GiB), else stream. Same results up to float32 summation order.
    storage: str = "auto"
    distributed: bool = False  # shard the training set over torch.distributed ranks, as OptimalConfig.distributed

    def __post_init__(self):
        if not callable(self.patch_size):
            check_patch_size(self.patch_size)
        if self.kernel not in KERNELS:
            raise DenoiserLabError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        check_optional_count(self.chunk_size, "chunk_size")
        check_flag(self.xflip, "xflip")
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


def check_patch_size(patch_size: object) -> int:
    """A patch size must be an int >= 1; returns it."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise DenoiserLabError(f"patch size must be an int >= 1 or a schedule sigma -> int, got {patch_size!r}")
    if patch_size < 1:
        raise DenoiserLabError(f"patch size must be >= 1, got {patch_size}")
    return patch_size


class PSPCSquare:
    """PSPC-Square denoiser D(x, sigma); sigma may differ per sample (samples are grouped by their patch size).

    Memory (N training images, 2N with xflip, of D = C*H*W values; B queries; K crops; n images per chunk):
    storage="ram" holds 4 N D bytes of float32 images, plus 4 N D of the C kernel's lanes from its first call.
    storage="stream" holds nothing per image (an ImageSet's uint8 storage stays where it is, e.g. memory-mapped,
    file-backed pages); a compiled call adds 4 n D bytes (one reused buffer of lanes, n about 32 MiB / 4 D by
    default; + n D for chunks with flips) + 4 B K (2 P + 32 T) + 4 B P D (P = 4 T shares of T threads) + pass 1's crop distances
    64 B K ceil(N / 16) when that is at most pspc_kernel.LOGIT_CACHE_BYTES (512 MiB), that room kept for the
    thread's next call up to pspc_kernel.RETAINED_CACHE_BYTES (256 MiB); an eager call adds 4 n D for
    the chunk plus its [B, n, H, W] intermediates (about 32 MiB each at the default n). With distributed=True, N is
    this rank's shard, and a call adds one all_reduce of 48 bytes (the same-queries check) and three per patch
    size: 4 B K and 8 B K bytes (the merge of pass 1), then 8 B D (the numerators).
    """

    config_class = PSPCSquareConfig
    tunable = Tunable("patch_size", "patch_size", (1, 3, 5, 7, 9, 11, 15, 19, 23, 28, 32),  # clamped to the image
                      legacy_names=("patch_sizes", "square"))

    def __init__(self, train: Tensor | ImageSet, patch_size: int | Callable[[float], int], xflip: bool = False,
                 kernel: str = "auto", chunk_size: int | None = None, storage: str = "auto",
                 distributed: bool = False):
        self.config = PSPCSquareConfig(patch_size=patch_size, xflip=xflip, kernel=kernel, chunk_size=chunk_size,
                                       storage=storage, distributed=distributed)
        source = training_source(train, xflip)
        if distributed:
            source = shard(source)  # this rank's images only; "auto" storage below decides on the shard
        self.image_shape_ = source.image_shape
        self.storage_ = resolve_storage(storage, train, source, bytes_per_value=8)  # "ram" or "stream"
        self.train_ = source if self.storage_ == "stream" else None  # read chunk by chunk at every call
        if self.storage_ == "ram":
            self.images_ = source.read(0, len(source)).contiguous()  # [N, C, H, W] float32, CPU
            self.lanes_ = None  # the training set laid out for the C kernel, built on its first use
            self._device_copies = DeviceCopies(self.images_)

    def patch_size_at(self, sigma: float) -> int:
        """The crop side used at noise level sigma, clamped to the image size."""
        size = self.config.patch_size(sigma) if callable(self.config.patch_size) else self.config.patch_size
        return min(check_patch_size(size), *self.image_shape_[1:])

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the PSPC-Square estimate of x0, shape/dtype/device of x."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)  # so every rank takes the same groups below, in the same order
        out = estimate_by_group(x, [self.patch_size_at(value) for value in sigma.tolist()],
                                lambda size, group: self.composite(x[group], sigma[group], size))
        return check_finite_output(out, "PSPC-Square", sigma)

    def composite(self, x: Tensor, sigma: Tensor, size: int) -> Tensor:
        """The composite for one patch size. x: [B, C, H, W]; sigma: float64 [B]; returns float64 [B, C, H, W]."""
        if use_compiled_kernel(self, x.device, "PSPC-Square"):
            numerators = kernel_numerators(self, x, sigma, pspc_kernel.square_crops(x.shape[2], x.shape[3], size))
            return numerators / windows_per_pixel(*x.shape[2:], size)
        if use_triton_kernel(self, x.device):
            return pspc_triton.square_composite_triton(x, sigma, eager_training_images(self, x.device), size,
                                                       self.config.chunk_size, self.config.distributed)
        return square_composite(x, sigma, eager_training_images(self, x.device), size, self.config.chunk_size,
                                self.config.distributed)


def kernel_numerators(denoiser, x: Tensor, sigma: Tensor, crops: pspc_kernel.KernelCrops) -> Tensor:
    """The C kernel's composite numerators, float64 [B, C, H, W], for a PSPC denoiser (Square or Flex) in either
    storage: read chunk by chunk from its storage, or from the lanes of its in-RAM images (built on first use);
    summed over the ranks' shards when the denoiser is distributed."""
    threads, distributed = torch.get_num_threads(), denoiser.config.distributed
    if denoiser.storage_ == "stream":
        chunk_images = pspc_kernel.streamed_chunk_images(denoiser.image_shape_, denoiser.config.chunk_size)
        return pspc_kernel.composite_numerators_streamed(x, denoiser.train_, sigma, crops, threads, chunk_images,
                                                         distributed)
    if denoiser.lanes_ is None:
        denoiser.lanes_ = pspc_kernel.training_lanes(denoiser.images_)
    return pspc_kernel.composite_numerators(x, denoiser.lanes_, denoiser.images_.shape[0], sigma, crops, threads,
                                            distributed)


def eager_training_images(denoiser, device: torch.device) -> TrainingImages:
    """The training set a PSPC denoiser's eager path reads on `device`: its storage when streaming, else its
    in-RAM float32 images (copied to `device` once)."""
    if denoiser.storage_ == "stream":
        return denoiser.train_
    return TrainingImages(denoiser._device_copies.on(device)[0], xflip=False)


def use_compiled_kernel(denoiser, device: torch.device, name: str,
                        load: Callable[[], object] = pspc_kernel.load_library) -> bool:
    """Whether a call of `denoiser` (with config.kernel) goes to the C kernel that `load` builds: CPU only; "auto"
    falls back to eager, with a warning, when the kernel cannot be built, and records kernel="eager" in the
    denoiser's config."""
    if denoiser.config.kernel in ("eager", "triton") or device.type != "cpu":
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


def use_triton_kernel(denoiser, device: torch.device, name: str = "PSPC-Square") -> bool:
    """Whether a call of PSPC denoiser `denoiser` (`name` in warnings) on `device` goes to its Triton kernel: always
    for kernel="triton" (which raises where Triton cannot run), for "auto" on CUDA when Triton is installed; "auto"
    falls back to eager, with a warning, and records kernel="eager" in the denoiser's config."""
    if denoiser.config.kernel == "triton":
        pspc_triton.check_available(device)
        return True
    if denoiser.config.kernel != "auto" or device.type != "cuda":
        return False
    try:
        pspc_triton.check_available(device)
    except pspc_triton.TritonUnavailable as error:
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


def square_composite(x: Tensor, sigma: Tensor, train: TrainingImages, size: int,
                     chunk_size: int | None = None, distributed: bool = False) -> Tensor:
    """Eager PSPC-Square composite (float32 work, float64 sums). x: [B, C, H, W]; sigma: [B]; train: the N training
    images, read a chunk at a time on x's device (a float tensor [N, C, H, W] there: TrainingImages(images, False));
    distributed: train is this rank's shard, pass 1 is merged over the ranks and the numerators summed over them.

    Pass 1 streams each crop's smallest distance m and normaliser s = sum_n exp(-(D_n - m) g) over chunks of the
    training set (g = 1 / (2 sigma^2), capped: see pspc_kernel.inverse_two_variance); pass 2 streams
    sum_n x_n * box_sums_transposed(exp(-(D_n - m) g) / s). Returns float64 [B, C, H, W].
    """
    queries = x.float()
    inv_two_var = pspc_kernel.inverse_two_variance(sigma).to(x.device)
    chunk_size = chunk_size or default_square_chunk(x.shape[0], tuple(x.shape[1:]))

    def distance_chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(train), chunk_size):
            chunk = train.read(start, start + chunk_size, x.device)
            yield chunk, crop_distances(queries, chunk, size)

    crop_min, crop_sum = streaming_nearest_sum((distances for _, distances in distance_chunks()), inv_two_var)
    if distributed:
        crop_min, crop_sum = merge_nearest_sums_across(crop_min, inv_two_var.double()[:, None, None], crop_sum)
    crop_min, crop_sum = crop_min[:, None], crop_sum.float()[:, None]  # [B, 1, P1, P2]
    g = inv_two_var[:, None, None, None]
    numerators = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for chunk, distances in distance_chunks():
        weights = torch.exp(-(distances - crop_min) * g) / crop_sum  # [B, n, P1, P2]
        pixel_weights = box_sums_transposed(weights, size)  # [B, n, H, W]
        numerators += (pixel_weights[:, :, None] * chunk).sum(1, dtype=torch.float64)
    if distributed:
        numerators = sum_across(numerators)
    return numerators / windows_per_pixel(*x.shape[2:], size, device=x.device)
