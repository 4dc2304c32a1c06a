"""PSPC-Flex: the Patch Set Posterior Composite over arbitrary crops (Niedoba et al. 2025, section 5).

Crops are spatial bool masks [K, H, W] (applied to every channel), usually one per output pixel from gradient
heatmaps (`flex_masks.py`). Each crop gets its empirical posterior mean over the co-located crops of the training
images; each output pixel is the average over the crops that contain it (duplicated crops count as often as they
occur); pixels covered by no crop keep the noisy input value.

Identical masks are merged first (lambda = 1 is a single full-image crop). On CPU the default is the fused C kernel
(`pspc_kernel.py`), which holds each crop as a pixel index list, so a crop costs its size; on CUDA the fused Triton
kernel (`pspc_flex_triton.py`, when Triton is installed). The eager path below is
the readable reference and runs anywhere (GPU included): with d_n the per-pixel squared differences
sum_c (z - x_n)^2 ([B, n, H*W], never the |a|^2 - 2ab + |b|^2 expansion), all crop distances are one GEMM
d_n @ masks^T (a sum of non-negative terms, so no cancellation in float32), and the composite is
sum_n x_n * (weights_n @ masks), a second GEMM. Two streaming passes over the training set with an exact softmax
in distance space (relative to each crop's nearest distance, as in pspc_square, so any sigma > 0 works); the
distances of pass 1 are kept for pass 2 when they fit in LOGIT_CACHE_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers import pspc_flex_triton, pspc_kernel
from denoiserlab.denoisers.distributed import check_same_queries, merge_nearest_sums_across, shard, sum_across
from denoiserlab.denoisers.flex_masks import masks_from_heatmaps
from denoiserlab.denoisers.pspc_square import (
    KERNELS,
    eager_training_images,
    kernel_numerators,
    use_compiled_kernel,
    use_triton_kernel,
)
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

LOGIT_CACHE_BYTES = 1 << 28  # keep pass-1 crop distances for pass 2 up to this size, else recompute them


@dataclass(frozen=True)
class PSPCFlexConfig:
    masks: Tensor | Callable[[float], Tensor]  # bool [K, H, W] crops, or a schedule sigma -> such a tensor
    xflip: bool = False  # also use the horizontal flip of every training image
    # "compiled" (C kernel, CPU), "triton" (fused Triton kernel, CUDA: pspc_flex_triton.py), "eager" (two GEMMs,
    # any device), "auto": compiled on CPU, triton on CUDA when Triton is installed (else eager, with a warning)
    kernel: str = "auto"
    # training images per chunk (None: about 32 MiB of intermediates on the eager path, of float32 lanes on the
    # compiled path when streaming; streamed compiled chunks are rounded up to a multiple of 16)
    chunk_size: int | None = None
    storage: str = "auto"  # "ram", "stream" or "auto", as PSPCSquareConfig.storage (same results)
    distributed: bool = False  # shard the training set over torch.distributed ranks, as OptimalConfig.distributed

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise DenoiserLabError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not callable(self.masks) and not isinstance(self.masks, Tensor):
            raise DenoiserLabError("masks must be a bool tensor [K, H, W] or a callable sigma -> masks, "
                                   f"got {type(self.masks).__name__}")
        check_optional_count(self.chunk_size, "chunk_size")
        check_flag(self.xflip, "xflip")
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


@dataclass(frozen=True)
class CropSet:
    """Distinct crops of one mask tensor: `masks` float32 [U, H*W] (0/1), `counts` float32 [U] multiplicities."""

    masks: Tensor
    counts: Tensor

    @property
    def coverage(self) -> Tensor:
        """How many of the original crops contain each pixel: [H*W]."""
        return self.counts @ self.masks

    def to(self, device: torch.device) -> "CropSet":
        return CropSet(self.masks.to(device), self.counts.to(device))

    def for_kernel(self, image_size: tuple[int, int]) -> pspc_kernel.KernelCrops:
        """The same crops as the C kernel takes them (row blocks); image_size: (H, W)."""
        return pspc_kernel.listed_crops(self.masks.cpu(), self.counts.cpu(), image_size)


def check_masks(masks: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Check a crop tensor: bool [K, H, W], K >= 1, (H, W) the image size, no empty crop. Returns it."""
    if not isinstance(masks, Tensor):
        raise DenoiserLabError(f"masks must be a bool tensor [K, H, W], got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise DenoiserLabError(f"masks must have dtype torch.bool, got {masks.dtype}")
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise DenoiserLabError(f"masks must have shape [K, H, W] with K >= 1, got shape {tuple(masks.shape)}")
    if tuple(masks.shape[1:]) != tuple(image_size):
        raise DenoiserLabError(f"masks have size [H, W] = {list(masks.shape[1:])} but the images have {list(image_size)}")
    empty = (~masks.flatten(1).any(1)).nonzero().flatten()
    if len(empty):
        raise DenoiserLabError(f"mask {empty[0].item()} is empty (covers no pixel); {len(empty)} empty mask(s) in all")
    return masks


def unique_crops(masks: Tensor) -> CropSet:
    """Merge identical crops of a bool [K, H, W] tensor into a CropSet."""
    unique, counts = torch.unique(masks.flatten(1), dim=0, return_counts=True)
    return CropSet(unique.float(), counts.float())


class PSPCFlex:
    """PSPC-Flex denoiser D(x, sigma); sigma may differ per sample (samples are grouped by their mask tensor).

    Memory as PSPCSquare (see its docstring), with K the number of distinct crops: storage="stream" holds nothing
    per training image, and a compiled call adds one chunk's lanes (4 n D bytes) plus the kernel's per-crop state.
    With distributed=True, N is this rank's shard (see PSPCSquare).
    """

    config_class = PSPCFlexConfig
    # the heatmap threshold lambda (flex_masks) that a study turns into `masks` per sigma from a network's heatmaps
    tunable = Tunable("threshold", "threshold", (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0), option="masks",
                      needs=("heatmaps",), realise=masks_from_heatmaps, legacy_names=("thresholds", "flex"))

    def __init__(self, train: Tensor | ImageSet, masks: Tensor | Callable[[float], Tensor], xflip: bool = False,
                 kernel: str = "auto", chunk_size: int | None = None, storage: str = "auto",
                 distributed: bool = False):
        self.config = PSPCFlexConfig(masks=masks, xflip=xflip, kernel=kernel, chunk_size=chunk_size, storage=storage,
                                     distributed=distributed)
        source = training_source(train, xflip)
        if distributed:
            source = shard(source)  # this rank's images only; "auto" storage below decides on the shard
        self.image_shape_ = source.image_shape
        if isinstance(masks, Tensor):
            check_masks(masks, self.image_shape_[1:])
        self.storage_ = resolve_storage(storage, train, source, bytes_per_value=8)  # "ram" or "stream"
        self.train_ = source if self.storage_ == "stream" else None  # read chunk by chunk at every call
        if self.storage_ == "ram":
            self.images_ = source.read(0, len(source)).contiguous()  # [N, C, H, W] float32, CPU
            self.lanes_ = None  # the training set laid out for the C kernel, built on its first use
            self._device_copies = DeviceCopies(self.images_)
        self._crop_sets = []  # (mask tensor, CropSet, KernelCrops or None) for the mask tensors seen so far

    def masks_at(self, sigma: float) -> Tensor:
        """The checked bool [K, H, W] crops used at noise level sigma."""
        return check_masks(self._unchecked_masks_at(sigma), self.image_shape_[1:])

    def _unchecked_masks_at(self, sigma: float) -> Tensor:
        return self.config.masks(sigma) if callable(self.config.masks) else self.config.masks

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the PSPC-Flex estimate of x0, shape/dtype/device of x."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)  # so every rank takes the same groups below, in the same order
        index_of_sigma = {}  # one crop set lookup per distinct sigma, not per sample
        for value in sigma.tolist():
            if value not in index_of_sigma:
                index_of_sigma[value] = self._crop_set_index(self._unchecked_masks_at(value))
        out = estimate_by_group(x, [index_of_sigma[value] for value in sigma.tolist()],
                                lambda index, group: self.composite(x[group], sigma[group], index))
        return check_finite_output(out, "PSPC-Flex", sigma)

    def composite(self, x: Tensor, sigma: Tensor, index: int) -> Tensor:
        """The composite over crop set `index`. x: [B, C, H, W]; sigma: float64 [B]; returns float64 [B, C, H, W]."""
        crops = self._crop_sets[index][1]
        if use_triton_kernel(self, x.device, "PSPC-Flex"):
            crops = crops.to(x.device)
            return pspc_flex_triton.flex_composite_triton(x, sigma, eager_training_images(self, x.device), crops.masks,
                                                          crops.counts, self.config.chunk_size,
                                                          self.config.distributed)
        if not use_compiled_kernel(self, x.device, "PSPC-Flex"):
            train = eager_training_images(self, x.device)
            return flex_composite(x, sigma, train, crops.to(x.device), self.config.chunk_size, self.config.distributed)
        numerators = kernel_numerators(self, x, sigma, self._crop_sets[index][2])
        coverage = crops.coverage.double().reshape(x.shape[2:])
        return torch.where(coverage > 0, numerators / coverage.clamp(min=1), x.double())

    def _crop_set_index(self, masks: Tensor) -> int:
        """Index into the cache of deduplicated crop sets; the same (or an equal) mask tensor reuses its entry, and a
        new one is checked (check_masks) before it is added."""
        for index, (seen, _, _) in enumerate(self._crop_sets):
            if seen is masks:
                return index
        check_masks(masks, self.image_shape_[1:])
        for index, (seen, _, _) in enumerate(self._crop_sets):
            if seen.shape == masks.shape and torch.equal(seen, masks.to(seen.device)):
                return index
        crops = unique_crops(masks.cpu())
        kernel_crops = crops.for_kernel(tuple(masks.shape[1:])) if self.config.kernel in ("auto", "compiled") else None
        self._crop_sets.append((masks, crops, kernel_crops))
        return len(self._crop_sets) - 1


def default_flex_chunk(batch: int, n_pixels: int, n_crops: int, bytes_per_chunk: int = 1 << 25) -> int:
    """Training images per chunk so that the float32 [B, n, max(H*W, U)] intermediates are about `bytes_per_chunk`."""
    return max(1, bytes_per_chunk // (4 * batch * max(n_pixels, n_crops)))


def flex_composite(x: Tensor, sigma: Tensor, train: TrainingImages, crops: CropSet,
                   chunk_size: int | None = None, distributed: bool = False) -> Tensor:
    """PSPC-Flex composite. x: [B, C, H, W]; sigma: [B]; train: the N training images, read a chunk at a time on x's
    device (a float tensor [N, C, H, W] there: TrainingImages(images, False)); returns float64 [B, C, H, W].
    distributed: train is this rank's shard, pass 1 is merged over the ranks and the numerators summed over them."""
    queries = x.float().flatten(2)  # [B, C, H*W]
    inv_two_var = pspc_kernel.inverse_two_variance(sigma).to(x.device)  # g = 1 / (2 sigma^2), capped
    chunk_size = chunk_size or default_flex_chunk(x.shape[0], queries.shape[2], crops.masks.shape[0])
    starts = range(0, len(train), chunk_size)
    keep = 4 * x.shape[0] * len(train) * crops.masks.shape[0] <= LOGIT_CACHE_BYTES

    def train_pixels(start: int) -> Tensor:  # [n, C, H*W]
        return train.read(start, start + chunk_size, x.device).flatten(2)

    def distances_of(start: int) -> Tensor:
        chunk = train_pixels(start)
        pixel_distances = (queries[:, None] - chunk[None]).square().sum(2)  # [B, n, H*W]
        return pixel_distances @ crops.masks.T  # [B, n, U], sums of non-negative terms

    kept = {}

    def pass_one_distances(start: int) -> Tensor:
        distances = distances_of(start)
        if keep:
            kept[start] = distances
        return distances

    # per crop: smallest distance m and s = sum_n exp(-(D_n - m) g), in distance space (see pspc_square)
    crop_min, crop_sum = streaming_nearest_sum((pass_one_distances(start) for start in starts), inv_two_var)
    if distributed:
        crop_min, crop_sum = merge_nearest_sums_across(crop_min, inv_two_var.double()[:, None], crop_sum)
    crop_min, crop_sum, g = crop_min[:, None], crop_sum.float()[:, None], inv_two_var[:, None, None]  # [B, 1, U]
    crop_weights = crops.masks * crops.counts[:, None]  # [U, H*W], each crop as often as it occurs
    numerators = torch.zeros(queries.shape, dtype=torch.float64, device=x.device)
    for start in starts:
        distances = kept.pop(start) if keep else distances_of(start)
        pixel_weights = (torch.exp(-(distances - crop_min) * g) / crop_sum) @ crop_weights  # [B, n, H*W]
        numerators += (pixel_weights[:, :, None] * train_pixels(start)).sum(1, dtype=torch.float64)
    if distributed:
        numerators = sum_across(numerators)  # before the uncovered pixels take x, which no rank must add twice
    coverage = crops.coverage.double()
    composite = torch.where(coverage > 0, numerators / coverage.clamp(min=1), x.double().flatten(2))
    return composite.reshape(x.shape)
