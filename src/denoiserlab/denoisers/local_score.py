"""Shared machinery of the local score machines ELS and LS (Kamb & Ganguli, "An analytic theory of creativity in
convolutional diffusion models", ICML 2025).

Output pixel (y, x) is the posterior mean of the centre pixel of candidate P x P windows (all channels) of the
training images, given the query's P x P window around (y, x): weights softmax(-|q_window - c_window|^2 / (2 sigma^2))
over the candidates of that pixel. The machines differ in their candidates, which factor over the two axes: along an
axis, output coordinate y takes the candidate coordinates y + offset for the offsets whose output range holds y
(`AxisCandidates`). Windows read the images through index maps, so zero padding (-1) and circular padding (mod L)
are the same code.

Fast and exact: for one offset pair (dy, dx), the window distances of every output pixel are P x P window sums of
the per-pixel squared differences e[u][v] = sum_c (q[c][u][v] - x[c][u + dy][v + dx])^2 (`box_filter.box_sums`,
sums of non-negative terms: no cancellation), so a distance costs O(1) for any P, and each candidate costs one exp.
The eager PyTorch path below (any device; float64 work for float64 queries, else float32; float64 sums) is the
readable reference; on CPU the default is the fused C kernel (`els_kernel.py`). Both read the training set from a
float32 copy or chunk by chunk from its storage (`storage`), with the same results up to float32 summation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers import els_kernel, pspc_kernel
from denoiserlab.denoisers.box_filter import box_sums
from denoiserlab.denoisers.distributed import check_same_queries, merge_nearest_sums_across, shard
from denoiserlab.denoisers.pspc_square import KERNELS, use_compiled_kernel
from denoiserlab.denoisers.schedules import estimate_by_group, value_at
from denoiserlab.denoisers.training_set import (
    DeviceCopies,
    TrainingImages,
    check_storage,
    resolve_storage,
    training_source,
)
from denoiserlab.distances import chunk_bytes_on
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import (
    check_denoiser_call,
    check_finite_output,
    check_flag,
    check_optional_count,
)


@dataclass(frozen=True)
class AxisCandidates:
    """The candidate coordinates of every output coordinate along one image axis of length L, window radius r.

    Output coordinate y takes the candidate coordinate y + offsets[j] (mod L when circular) for every j with
    first[j] <= y <= last[j]. Padded coordinate u = 0 .. L + 2r - 1 stands for image coordinate u - r, so the window
    of output y covers u = y .. y + 2r.
    """

    length: int  # L, pixels along the axis
    radius: int  # r = P // 2
    circular: bool  # wrap around (circular padding) instead of zero padding
    offsets: tuple[int, ...]  # candidate coordinate minus output coordinate
    first: tuple[int, ...]  # per offset, the first output coordinate that takes it
    last: tuple[int, ...]  # per offset, the last output coordinate that takes it (inclusive)

    def source(self, offset: int) -> Tensor:
        """Image coordinate read at each padded coordinate of an image shifted by `offset`: int64 [L + 2r], -1: 0."""
        coordinates = torch.arange(self.length + 2 * self.radius) - self.radius + offset
        if self.circular:
            return coordinates % self.length
        return torch.where((coordinates >= 0) & (coordinates < self.length), coordinates, -1)

    def arrays(self) -> tuple[Tensor, Tensor, Tensor]:
        """int32 (offsets [n], first [n], last [n]) for the C kernel."""
        return tuple(torch.tensor(values, dtype=torch.int32) for values in (self.offsets, self.first, self.last))


def circular_axis(length: int, radius: int) -> AxisCandidates:
    """Every output coordinate takes every coordinate (offsets 0 .. L - 1, wrapping around)."""
    return AxisCandidates(length, radius, True, tuple(range(length)), (0,) * length, (length - 1,) * length)


def co_located_axis(length: int, radius: int) -> AxisCandidates:
    """Every output coordinate takes only its own coordinate (zero padding)."""
    return AxisCandidates(length, radius, False, (0,), (0,), (length - 1,))


def zero_padded_axis(length: int, radius: int) -> AxisCandidates:
    """ELS with zero padding: a coordinate within r of an edge takes only itself, an interior one (r .. L - r - 1)
    every interior coordinate."""
    offsets, first, last = [0], [0], [length - 1]  # offset 0: edge coordinates and every interior one
    interior = length - 2 * radius  # number of interior coordinates
    for offset in range(-(interior - 1), interior):
        low, high = max(radius, radius - offset), min(length - radius - 1, length - radius - 1 - offset)
        if offset != 0 and low <= high:
            offsets.append(offset)
            first.append(low)
            last.append(high)
    return AxisCandidates(length, radius, False, tuple(offsets), tuple(first), tuple(last))


def check_odd_patch_size(patch_size: object) -> int:
    """A local score machine's patch size must be an odd int >= 1; returns it."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise DenoiserLabError(f"patch size must be an odd int >= 1 or a schedule sigma -> odd int, got {patch_size!r}")
    return patch_size


@dataclass(frozen=True)
class LocalScoreConfig:
    """The options ELS and LS share."""

    patch_size: int | Callable[[float], int] = 3  # odd window side P, or a schedule sigma -> P (PatchSchedule)
    xflip: bool = False  # also use the horizontal flip of every training image
    kernel: str = "auto"  # "compiled" (C kernel, CPU), "eager" (PyTorch, any device), "auto": compiled for CPU float32
    # training images per chunk (None: about 32 MiB of intermediates on the eager path, of float32 lanes on the
    # compiled path when streaming; streamed compiled chunks are rounded up to a multiple of 16)
    chunk_size: int | None = None
    # "ram": a float32 copy of the training set (and the C kernel's layout of it: 8 bytes a value), made once;
    # "stream": every call reads the set chunk by chunk from its storage (an ImageSet's uint8, memory-mapped or
    # not); "auto": ram for a float tensor and for an ImageSet whose copies fit in training_set.AUTO_RAM_BYTES
    # (1 GiB), else stream. Same results up to float32 summation order.
    storage: str = "auto"
    # shard the training set over the processes of an initialised torch.distributed group (rank r of W holds the
    # images [r N / W, (r + 1) N / W)); calls are collective and every rank gets the one-process result
    distributed: bool = False

    def __post_init__(self):
        if not callable(self.patch_size):
            check_odd_patch_size(self.patch_size)
        check_flag(self.xflip, "xflip")
        if self.kernel not in KERNELS:
            raise DenoiserLabError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        check_optional_count(self.chunk_size, "chunk_size")
        check_storage(self.storage)
        check_flag(self.distributed, "distributed")


class LocalScoreMachine:
    """Base of ELS and LS: patch sizes per sigma, kernel choice, and the posterior over the candidates that the
    subclass's `axes(size)` defines. Subclasses set `name` and `config` (with patch_size, kernel, chunk_size,
    storage).

    Memory (N training images, 2N with xflip, of D = C*H*W values; B queries; n images per chunk): storage="ram"
    holds 4 N D bytes of float32 images, plus 4 N D of the C kernel's lanes from its first call. storage="stream"
    holds nothing per image (an ImageSet's uint8 storage stays where it is); a compiled call adds 4 n D bytes (one
    reused buffer of lanes, n about 32 MiB / 4 D by default; + n D for chunks with flips) and 24 P B D for the
    partial sums of P shares; an eager call adds 4 n D for the chunk plus its [B, n, C, H + 2r, W + 2r]
    intermediates (about 32 MiB each at the default n).
    """

    name = "local score machine"

    def __init__(self, train: Tensor | ImageSet, xflip: bool):
        source = training_source(train, xflip)
        if self.config.distributed:
            source = shard(source)  # this rank's images only; "auto" storage below decides on the shard
        self.image_shape_ = source.image_shape
        self.storage_ = resolve_storage(self.config.storage, train, source, bytes_per_value=8)  # "ram" or "stream"
        self.train_ = source if self.storage_ == "stream" else None  # read chunk by chunk at every call
        if self.storage_ == "ram":
            self.images_ = source.read(0, len(source)).contiguous()  # [N, C, H, W] float32, CPU
            self.lanes_ = None  # the training set laid out for the C kernel, built on its first use
            self._device_copies = DeviceCopies(self.images_)
        self.axes_ = {}  # patch size -> (row AxisCandidates, column AxisCandidates), built on use

    def axes(self, size: int) -> tuple[AxisCandidates, AxisCandidates]:
        """The candidates along the rows and the columns for patch size `size`."""
        raise NotImplementedError

    def largest_useful_size(self) -> int | None:
        """A patch size beyond which the output no longer changes (sizes are clamped to it), or None."""
        return None

    def patch_size_at(self, sigma: float) -> int:
        """The (odd) window side used at noise level sigma."""
        size = check_odd_patch_size(value_at(self.config.patch_size, sigma))
        largest = self.largest_useful_size()
        return size if largest is None else min(size, largest)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns the estimate of x0 with x's shape, dtype and device."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        if self.config.distributed:
            check_same_queries(x, sigma)
        out = estimate_by_group(x, [self.patch_size_at(s) for s in sigma.tolist()],
                                lambda size, group: self.posterior(x[group], sigma[group], size))
        return check_finite_output(out, self.name, sigma)

    def posterior(self, x: Tensor, sigma: Tensor, size: int) -> Tensor:
        """Posterior means for one patch size. x: [B, C, H, W]; sigma: float64 [B]; returns float64 [B, C, H, W].
        With distributed=True a collective call: every rank's partial sums are merged (`distributed.py`)."""
        nearest, total, numerator, inv_two_var = self.partials(x, sigma, size)
        if self.config.distributed:  # numerator as [C, B, H, W]: its trailing dims meet the [B, H, W] rescaling
            _, total, numerator = merge_nearest_sums_across(nearest, inv_two_var[:, None, None], total,
                                                            numerator.transpose(0, 1))
            numerator = numerator.transpose(0, 1)
        return numerator / total[:, None]

    def partials(self, x: Tensor, sigma: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The softmax sums of every output pixel over this process's training images, relative to a reference
        distance per pixel: (reference [B, H, W], sum of weights [B, H, W], numerator [B, C, H, W], the g = 1 /
        (2 sigma^2) [B] they used), all float64.

        kernel="auto" takes the C kernel for float32 queries on CPU and the eager path (float64 work) for float64.
        """
        if size not in self.axes_:
            self.axes_[size] = self.axes(size)
        rows, cols = self.axes_[size]
        auto_float64 = self.config.kernel == "auto" and x.dtype == torch.float64
        if auto_float64 or not use_compiled_kernel(self, x.device, self.name, els_kernel.load_library):
            images = self.train_ if self.storage_ == "stream" else TrainingImages(self._device_copies.on(x.device)[0],
                                                                                   xflip=False)
            state = local_partials(x, sigma, images, size, rows, cols, self.config.chunk_size)
            return state.nearest, state.total, state.numerator, state.inv_two_var
        # both axes share the padding: one circular flag for the kernel
        axes = (size, rows.circular, rows.arrays(), cols.arrays(), torch.get_num_threads())
        inv_two_var = pspc_kernel.inverse_two_variance(sigma).double()  # the kernel's g
        if self.storage_ == "stream":
            chunk_images = pspc_kernel.streamed_chunk_images(self.image_shape_, self.config.chunk_size)
            return *els_kernel.local_partials_compiled_streamed(x, self.train_, sigma, *axes, chunk_images), inv_two_var
        if self.lanes_ is None:
            self.lanes_ = pspc_kernel.training_lanes(self.images_)
        return *els_kernel.local_partials_compiled(x, self.lanes_, self.images_.shape[0], sigma, *axes), inv_two_var


def gather_padded(images: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """images [n, C, H, W] read at row indices [h] and column indices [w] (-1: zero): [n, C, h, w]."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, 1, 0, 1))  # index H (W) is a zero row (column)
    rows = torch.where(rows < 0, height, rows).to(images.device)
    cols = torch.where(cols < 0, width, cols).to(images.device)
    return padded[:, :, rows[:, None], cols[None, :]]


# Bytes of one chunk's [B, n, C, H + 2r, W + 2r] intermediate on the CPU, and on a GPU: there every chunk costs
# ~25 kernel launches per offset pair, ~3,500 pairs for P = 3 on 32 x 32, so 32 MiB chunks (42 at N = 10,000, B = 10)
# left ELS's benchmark row on an H200 (two calls and a small check) unfinished after 138 s (benchmarks/measured/).
# A call's peak memory is a few times this.
LOCAL_CHUNK_BYTES = 1 << 25
GPU_LOCAL_CHUNK_BYTES = 1 << 29


def default_local_chunk(batch: int, padded_shape: tuple[int, ...], itemsize: int,
                        bytes_per_chunk: int = LOCAL_CHUNK_BYTES) -> int:
    """Training images per chunk so that a [B, n, C, H + 2r, W + 2r] intermediate is about `bytes_per_chunk`."""
    per_image = itemsize * batch * padded_shape[0] * padded_shape[1] * padded_shape[2]
    return max(1, bytes_per_chunk // per_image)


@dataclass
class RunningPosterior:
    """Running softmax sums per query pixel, float64, relative to the nearest window distance seen so far (so that no
    logit -d / (2 sigma^2) has to be formed, which overflows at a tiny sigma): nearest d_min [B, H, W] (+inf before the
    first candidate), sum of exp(-(d - d_min) k) [B, H, W] and the numerator with the centre pixels [B, C, H, W];
    k = 1 / (2 sigma^2) per query [B]."""

    nearest: Tensor
    total: Tensor
    numerator: Tensor
    inv_two_var: Tensor

    @classmethod
    def empty(cls, shape: tuple[int, ...], inv_two_var: Tensor) -> "RunningPosterior":
        batch, channels, height, width = shape
        device = inv_two_var.device
        return cls(torch.full((batch, height, width), torch.inf, dtype=torch.float64, device=device),
                   torch.zeros(batch, height, width, dtype=torch.float64, device=device),
                   torch.zeros(shape, dtype=torch.float64, device=device), inv_two_var)

    def add(self, rows: slice, cols: slice, distances: Tensor, centres: Tensor) -> None:
        """Fold candidates into the pixels [rows, cols]. distances: [B, n, h, w]; centres: [n, C, h, w]."""
        k = self.inv_two_var[:, None, None]  # [B, 1, 1] float64
        old = self.nearest[:, rows, cols]
        new = torch.minimum(old, distances.amin(1).double())  # [B, h, w]
        rescale = torch.where(old.isinf(), 0.0, torch.exp(-(old - new) * k))
        offsets = distances - new[:, None].to(distances.dtype)  # [B, n, h, w], >= 0
        weights = torch.exp(-offsets * k[:, None].to(distances.dtype))  # in [0, 1], 1 for the nearest
        self.total[:, rows, cols] = self.total[:, rows, cols] * rescale + weights.sum(1, dtype=torch.float64)
        weighted = torch.einsum("bnhw,nchw->bchw", weights, centres).double()  # [B, C, h, w]
        self.numerator[:, :, rows, cols] = self.numerator[:, :, rows, cols] * rescale[:, None] + weighted
        self.nearest[:, rows, cols] = new

    def mean(self) -> Tensor:
        return self.numerator / self.total[:, None]


def local_partials(x: Tensor, sigma: Tensor, images: TrainingImages, size: int, rows: AxisCandidates,
                   cols: AxisCandidates, chunk_size: int | None = None) -> "RunningPosterior":
    """Eager local score machine: its running softmax sums after every chunk (the posterior means are their
    `mean()`). x: [B, C, H, W]; sigma: [B]; images: the N training images, read in chunks on x's device.

    One streaming pass over chunks of the training set; per chunk and offset pair, the window distances of the
    outputs that take that offset pair, and their running softmax (`RunningPosterior`).
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    radius = size // 2
    queries = gather_padded(x.to(work), rows.source(0), cols.source(0))  # [B, C, H + 2r, W + 2r]
    inv_two_var = (1.0 / (2.0 * sigma.double() ** 2)).clamp(max=torch.finfo(work).max)  # [B], capped: no 0 * inf
    chunk_size = chunk_size or default_local_chunk(x.shape[0], tuple(queries.shape[1:]), queries.element_size(),
                                                   chunk_bytes_on(x.device, LOCAL_CHUNK_BYTES, GPU_LOCAL_CHUNK_BYTES))
    state = RunningPosterior.empty(tuple(x.shape), inv_two_var)
    for chunk in images.chunks(chunk_size, x.device):
        chunk = chunk.to(work)
        for row_offset, row_first, row_last in zip(rows.offsets, rows.first, rows.last):
            row_sources = rows.source(row_offset)[row_first : row_last + 2 * radius + 1]
            for col_offset, col_first, col_last in zip(cols.offsets, cols.first, cols.last):
                col_sources = cols.source(col_offset)[col_first : col_last + 2 * radius + 1]
                candidates = gather_padded(chunk, row_sources, col_sources)  # [n, C, h + 2r, w + 2r]
                window = queries[:, :, row_first : row_last + 2 * radius + 1, col_first : col_last + 2 * radius + 1]
                pixel_distances = (window[:, None] - candidates[None]).square().sum(2)  # [B, n, h + 2r, w + 2r]
                distances = box_sums(pixel_distances, size)  # [B, n, h, w]
                centres = candidates[:, :, radius : radius + row_last - row_first + 1,
                                     radius : radius + col_last - col_first + 1]
                state.add(slice(row_first, row_last + 1), slice(col_first, col_last + 1), distances, centres)
    return state
