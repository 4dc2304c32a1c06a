"""A small compiled CPU kernel for PSPC-Square and PSPC-Flex: both passes fused, vectorised and threaded.

The eager PyTorch paths in `pspc_square.py` and `pspc_flex.py` are the readable references; this kernel computes
the same two passes (per-crop nearest distance and normaliser, then the composite numerator) but keeps every
[pixels x 16 training images] intermediate in cache: training images are laid out 16 side by side (one per SIMD
lane), the training set is the outer loop (read from memory once per pass for all queries), and each of a few Python
threads sums its own shares of the training set (`run_parts`). Square crops use window sums without cancellation
(`box_filter.py`); listed (Flex) crops are sums of power-of-two row blocks (`row_block_cells`), so a crop costs
fewer terms than its size, not H * W as in a dense GEMM. Float32 throughout, per-pixel differences (never |a|^2 - 2ab + |b|^2), a polynomial 2^x (relative error
2e-7, shared with the ELS kernel).

The C source ships with the package (`kernels/pspc.c`, which includes `kernels/common.h`) and is compiled once per
machine with the system C compiler into the user cache folder (`user_cache_dir("kernels")`) on first use, about a
second; nothing happens at import. Every function has a declared ctypes signature and reports a failed allocation.
Any failure to build or load (no compiler, a compiler error or timeout, an unwritable cache folder, a damaged
library) is remembered for the rest of the process: the denoisers fall back to their eager PyTorch path with one
warning, and the build is not retried. Libraries are keyed by source, flags and CPU (they use -march=native), not by
host name, so machines sharing a home folder share a build only when their CPUs match.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import platform
import re
import shutil
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from denoiserlab.atomic import replacing
from denoiserlab.data.imageset import scale_to_unit_range_
from denoiserlab.denoisers.distributed import merge_nearest_sums_across, sum_across
from denoiserlab.denoisers.streaming_softmax import merge_nearest_sums
from denoiserlab.denoisers.training_set import TrainingImages
from denoiserlab.errors import DenoiserLabError
from denoiserlab.user_cache import user_cache_dir

LANES = 16  # training images side by side, as in the C source
LOGIT_CACHE_BYTES = 1 << 29  # keep pass-1 crop distances for pass 2 up to this size, else recompute them
RETAINED_CACHE_BYTES = 1 << 28  # and keep that room for the thread's next call up to this size (distance_cache)
COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]


KERNEL_FOLDER = Path(__file__).parent / "kernels"  # C sources, shipped as package data
COMPILE_TIMEOUT_SECONDS = 300  # a compiler that takes longer is treated as missing


class KernelUnavailable(DenoiserLabError):
    """The C kernel could not be built or loaded on this machine (no C compiler, ...)."""


_c_int, _c_long, _pointer_type = ctypes.c_int, ctypes.c_long, ctypes.c_void_p
# z, lanes, (B, C, H, W, N, s, n_crops), (offsets, entries, counts, cell_offsets, cell_crops), inv_two_var: the
# arguments both passes start with
_PASS_ARGUMENTS = [_pointer_type, _pointer_type, *[_c_int] * 7, *[_pointer_type] * 6]
PSPC_SIGNATURES = {  # function -> (restype, argtypes), as in kernels/pspc.c
    "pspc_pass1": (_c_int, [*_PASS_ARGUMENTS, _pointer_type, _pointer_type, _pointer_type, _c_int, _c_int]),
    "merge_parts": (None, [_pointer_type, _pointer_type, _c_long, _c_int, _c_int, _pointer_type, _pointer_type,
                           _pointer_type]),
    "pspc_pass2": (_c_int, [*_PASS_ARGUMENTS, *[_pointer_type] * 4, _c_int, _c_int]),
}

_libraries: dict[str, ctypes.CDLL] = {}  # stem -> loaded library
_workspace = threading.local()  # per thread: `distances`, the room distance_cache hands out
_failures: dict[str, str] = {}  # stem -> why it could not be built or loaded: remembered, never retried
_warned: set[str] = set()  # fallback warnings already shown in this process


def kernel_source(name: str) -> str:
    """The text of a C file shipped in KERNEL_FOLDER, with its `#include "file"` lines of shipped files replaced by
    their text, so the compiler reads it whole from stdin (no include path, nothing from the current folder)."""
    lines = (KERNEL_FOLDER / name).read_text(encoding="utf-8").splitlines(keepends=True)
    included = re.compile(r'\s*#\s*include\s+"([A-Za-z0-9_.]+)"')
    return "".join(kernel_source(match[1]) if (match := included.match(line)) else line for line in lines)


def kernel_cache_dir() -> Path:
    """Where built kernels are kept: the `kernels` folder of the user cache (denoiserlab.user_cache)."""
    return user_cache_dir("kernels")


def cpu_signature() -> str:
    """What a -march=native build depends on: the architecture and, on Linux, the CPU model and feature flags."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().split("\n\n")[0].splitlines()  # the first processor
        parts += [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    except OSError:
        pass
    return "\n".join(parts)


def _build(target: Path, source: str, stem: str) -> None:
    """Compile the C `source` (fed on stdin) into the shared library `target`, atomically, so parallel processes may
    race. Any failure is a KernelUnavailable."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise KernelUnavailable("no C compiler (gcc or cc) on PATH")
    try:
        with replacing(target) as built:
            command = [compiler, *COMPILE_FLAGS, "-x", "c", "-", "-x", "none", "-o", str(built), "-lm"]
            result = subprocess.run(command, input=source, capture_output=True, text=True,
                                    timeout=COMPILE_TIMEOUT_SECONDS)
            if result.returncode != 0:
                raise KernelUnavailable(f"building the {stem} kernel failed: {result.stderr.strip()[:500]}")
    except subprocess.TimeoutExpired:
        raise KernelUnavailable(f"building the {stem} kernel took over {COMPILE_TIMEOUT_SECONDS} s") from None
    except OSError as error:  # unwritable or full cache folder, compiler that cannot start, ...
        raise KernelUnavailable(f"building the {stem} kernel in {target.parent} failed: {error}") from None


def _load(target: Path, signatures: dict) -> ctypes.CDLL:
    """Load a built library and declare the ctypes signature of each function in `signatures`."""
    try:
        library = ctypes.CDLL(str(target))
        for name, (restype, argtypes) in signatures.items():
            function = getattr(library, name)
            function.restype, function.argtypes = restype, argtypes
    except (OSError, AttributeError) as error:
        raise KernelUnavailable(f"loading the kernel {target} failed: {error}") from None
    return library


def _build_and_load(source: str, stem: str, signatures: dict) -> ctypes.CDLL:
    key = hashlib.sha256("\n".join([source, *COMPILE_FLAGS, cpu_signature()]).encode())
    target = kernel_cache_dir() / f"{stem}_{key.hexdigest()[:16]}.so"
    if not target.is_file():
        _build(target, source, stem)
    try:
        return _load(target, signatures)
    except KernelUnavailable:  # a damaged or foreign file under our name: build it once more
        _build(target, source, stem)
        return _load(target, signatures)


def compiled_library(source_file: str, stem: str, signatures: dict | None = None) -> ctypes.CDLL:
    """The shared library built from the shipped C file `source_file` (kernel_source), built on first use into
    kernel_cache_dir() as <stem>_<key>.so and loaded once per process (the source is read only then), with
    `signatures` ({function: (restype, argtypes)}) declared. A failure raises KernelUnavailable, now and on every
    later call in this process (the build is not retried)."""
    if stem in _libraries:
        return _libraries[stem]
    if stem in _failures:
        raise KernelUnavailable(_failures[stem])
    try:
        _libraries[stem] = _build_and_load(kernel_source(source_file), stem, signatures or {})
    except KernelUnavailable as error:
        _failures[stem] = str(error)
        raise
    return _libraries[stem]


def load_library() -> ctypes.CDLL:
    """The compiled PSPC kernel (kernels/pspc.c), built on first use."""
    return compiled_library("pspc.c", "pspc", PSPC_SIGNATURES)


def warn_fallback(error: KernelUnavailable, name: str) -> None:
    """Say once per process and kernel failure that `name` runs on its eager PyTorch path instead."""
    if str(error) not in _warned:
        _warned.add(str(error))
        warnings.warn(f"{error}; {name} falls back to the slower eager PyTorch path", stacklevel=3)


def check_status(statuses: list, what: str, kernel: str = "PSPC") -> None:
    """Raise a clear error when a kernel call reported that its working memory could not be allocated."""
    if any(status != 0 for status in statuses):
        raise DenoiserLabError(f"the {kernel} kernel could not allocate its working memory in {what}; use smaller "
                               "batches")


def training_lanes(images: Tensor, blocks_per_copy: int = 1024, out: Tensor | None = None) -> Tensor:
    """[N, C, H, W] float32, or uint8 0..255 (converted as data.uint8_to_float: x / 127.5 - 1) -> float32
    [ceil(N / 16), C, H, W, 16]: 16 training images side by side, zero padded.

    Filled a slice of blocks at a time, so the only large allocation is the result itself; `out` (float32, at least
    that many blocks) is filled instead and its first blocks returned, so that streamed chunks reuse one buffer.
    """
    n_images = images.shape[0]
    n_blocks = -(-n_images // LANES)
    lanes = torch.empty((n_blocks, *images.shape[1:], LANES)) if out is None else out[:n_blocks]
    for first in range(0, n_blocks, blocks_per_copy):
        chunk = images[first * LANES : (first + blocks_per_copy) * LANES]
        full, rest = divmod(chunk.shape[0], LANES)
        if full:
            lanes[first : first + full] = chunk[: full * LANES].unflatten(0, (full, LANES)).permute(0, 2, 3, 4, 1)
        if rest:
            lanes[first + full, ..., :rest] = chunk[full * LANES :].permute(1, 2, 3, 0)
        if images.dtype == torch.uint8:
            scale_to_unit_range_(lanes[first : first + full + (rest > 0)])
        if rest:
            lanes[first + full, ..., rest:] = 0.0
    return lanes


def _pointer(tensor: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _optional_pointer(tensor: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None) if tensor is None else _pointer(tensor)


def _shape_arguments(queries: Tensor, n_train: int) -> list[ctypes.c_int]:
    return [ctypes.c_int(value) for value in (*queries.shape, n_train)]


def n_parts(n_blocks: int, threads: int) -> int:
    """Shares of the training set, each with its own partial sums: a few per thread, so that a thread slowed by
    other jobs on the machine does not hold up the others."""
    return max(1, min(n_blocks, 4 * threads))


def run_parts(function, arguments: list, parts: int, threads: int) -> list:
    """Call function(*arguments, part, parts) for every part on `threads` Python threads; returns their results.

    ctypes releases the GIL during the call, so the parts run in parallel; plain threads rather than OpenMP
    because OpenMP barriers stall badly (~100 ms a region here) when other jobs load the machine.
    """
    calls = [arguments + [ctypes.c_int(part), ctypes.c_int(parts)] for part in range(parts)]
    if threads == 1:
        return [function(*call) for call in calls]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda call: function(*call), calls))


@dataclass(frozen=True)
class KernelCrops:
    """Crops as the C kernel takes them: all size x size squares (offsets None), or listed crops as sums of the
    cells of a row-block table (`row_block_cells`), in compressed rows both by crop and by cell."""

    n_crops: int
    size: int = 1  # square side; 1 for listed crops
    offsets: Tensor | None = None  # int32 [K + 1]: crop k is the cells entries[offsets[k] : offsets[k + 1]]
    entries: Tensor | None = None  # int32 [total]: cells L * H * W + y * W + x (2^L pixels from (y, x) on), * 16
    counts: Tensor | None = None  # float32 [K]: how often each crop counts in the composite
    cell_offsets: Tensor | None = None  # int32 [levels * H * W + 1]: cell c is in the crops
    cell_crops: Tensor | None = None  # int32 [total]: cell_crops[cell_offsets[c] : cell_offsets[c + 1]], * 16


def square_crops(height: int, width: int, size: int) -> KernelCrops:
    """All size x size squares of an H x W image, in row-major order of their top-left corner."""
    return KernelCrops(n_crops=(height - size + 1) * (width - size + 1), size=size)


def listed_crops(masks: Tensor, counts: Tensor, image_size: tuple[int, int]) -> KernelCrops:
    """Crops from a 0/1 tensor [K, H * W] and their multiplicities [K]; image_size: (H, W)."""
    crop_of_entry, cell_of_entry = row_block_cells(masks.bool(), *image_size)
    n_cells = table_levels(image_size[1]) * image_size[0] * image_size[1]
    offsets, entries = compressed_rows(crop_of_entry, cell_of_entry * LANES, masks.shape[0])  # float offsets
    cell_offsets, cell_crops = compressed_rows(cell_of_entry, crop_of_entry * LANES, n_cells)
    return KernelCrops(n_crops=masks.shape[0], offsets=offsets, entries=entries, counts=counts.float().contiguous(),
                       cell_offsets=cell_offsets, cell_crops=cell_crops)


def table_levels(width: int) -> int:
    """Levels of the kernel's row-block table for images `width` pixels wide: blocks of 1, 2, 4, ... <= width
    pixels (table_levels in kernels/pspc.c)."""
    return width.bit_length()


def row_block_cells(masks: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Every crop of a bool [K, H * W] tensor as a sum of row blocks: each run of consecutive pixels of a crop's row
    is split into blocks of 2^L pixels by the binary digits of its length, highest first. Returns (crop, cell) long
    [entries], the cell of a block of 2^L pixels from pixel q being L * H * W + q. A crop of n pixels in r runs
    takes at most r * table_levels(W) entries (on heatmap masks 2-6x fewer than its n pixels)."""
    n_crops = masks.shape[0]
    rows = masks.reshape(n_crops * height, width)
    left = torch.zeros_like(rows)
    left[:, 1:] = rows[:, :-1]
    starts = rows & ~left
    run_id = torch.arange(rows.shape[0])[:, None] * (width + 1) + starts.cumsum(1)  # distinct for every run
    run_length = torch.bincount(run_id[rows], minlength=rows.shape[0] * (width + 1))[run_id]
    column = torch.arange(width).expand_as(rows)
    run_start = torch.zeros(rows.shape[0] * (width + 1), dtype=torch.long)
    run_start[run_id[starts]] = column[starts]
    position = column - run_start[run_id]  # within the run
    pixel = (torch.arange(rows.shape[0])[:, None] % height) * width + column
    crop = (torch.arange(rows.shape[0]) // height)[:, None].expand_as(rows)
    crops, cells = [], []
    for level in range(table_levels(width)):
        # a block of 2^L starts where the digits of the length above L end, if digit L is set
        starts_block = rows & (run_length >> level & 1).bool() & (position == run_length >> (level + 1) << (level + 1))
        crops.append(crop[starts_block])
        cells.append(level * height * width + pixel[starts_block])
    return torch.cat(crops), torch.cat(cells)


def compressed_rows(row_of: Tensor, column_of: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """Pairs (row, column) in compressed rows: offsets int32 [n_rows + 1] and columns int32, row r's columns being
    columns[offsets[r] : offsets[r + 1]] (in their order among the pairs)."""
    offsets = torch.zeros(n_rows + 1, dtype=torch.int32)
    offsets[1:] = torch.bincount(row_of, minlength=n_rows).cumsum(0)
    order = torch.sort(row_of, stable=True).indices
    return offsets, column_of[order].to(torch.int32).contiguous()


def _crop_arguments(crops: KernelCrops) -> list:
    return [ctypes.c_int(crops.size), ctypes.c_int(crops.n_crops), _optional_pointer(crops.offsets),
            _optional_pointer(crops.entries), _optional_pointer(crops.counts), _optional_pointer(crops.cell_offsets),
            _optional_pointer(crops.cell_crops)]


def distance_cache(batch: int, n_blocks: int, n_crops: int) -> Tensor | None:
    """Room for pass 1's crop distances [blocks, B, crops, 16] if they fit in LOGIT_CACHE_BYTES, else None.

    The room is this thread's buffer, kept between calls up to RETAINED_CACHE_BYTES: fresh memory costs a page fault
    per 4 KiB, which took 30-40 % of a PSPC-Flex call at 50 MB here, and faults of parallel threads queue on one
    lock. Larger rooms are allocated per call. A thread's next call reuses the buffer (calls never overlap within a
    thread), so the result is only valid until then."""
    values = batch * n_blocks * n_crops * LANES
    if 4 * values > LOGIT_CACHE_BYTES:
        return None
    if 4 * values > RETAINED_CACHE_BYTES:
        return torch.empty(n_blocks, batch, n_crops, LANES)
    kept = getattr(_workspace, "distances", None)
    if kept is None or kept.numel() < values:
        kept = _workspace.distances = torch.empty(values)
    return kept[:values].view(n_blocks, batch, n_crops, LANES)


def inverse_two_variance(sigma: Tensor) -> Tensor:
    """g = 1 / (2 sigma^2) as float32 [B], capped at the largest float32, so that a sigma whose g overflows still
    gives the sigma -> 0 limit (only distance gaps below ~1e-37 would tell the cap from the true value)."""
    return (1.0 / (2.0 * sigma.double() ** 2)).clamp(max=torch.finfo(torch.float32).max).float().contiguous()


def crop_normalisers_compiled(queries: Tensor, lanes: Tensor, n_train: int, inv_two_var: Tensor,
                              crops: KernelCrops, threads: int,
                              distances: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pass 1: per query and crop, the smallest crop distance m (float32 [B, K]) and sum_n exp(-(D_n - m) g)
    (float64 [B, K], >= 1). queries: [B, C, H, W]; lanes: `training_lanes`; inv_two_var: float32 [B] (g);
    distances: `distance_cache` (filled) or None."""
    parts = n_parts(lanes.shape[0], threads)
    minima = torch.empty(queries.shape[0], crops.n_crops, parts)
    sums = torch.empty_like(minima)
    queries = queries.float().contiguous()
    arguments = [_pointer(queries), _pointer(lanes), *_shape_arguments(queries, n_train), *_crop_arguments(crops),
                 _pointer(inv_two_var), _pointer(minima), _pointer(sums), _optional_pointer(distances)]
    library = load_library()
    check_status(run_parts(library.pspc_pass1, arguments, parts, threads), "pass 1")
    crop_min = torch.empty(minima.shape[:-1])
    crop_sum = torch.empty(minima.shape[:-1], dtype=torch.float64)
    library.merge_parts(_pointer(minima), _pointer(sums), ctypes.c_long(crop_min.numel()), ctypes.c_int(parts),
                        ctypes.c_int(crops.n_crops), _pointer(inv_two_var), _pointer(crop_min), _pointer(crop_sum))
    return crop_min, crop_sum


def numerators_compiled(queries: Tensor, lanes: Tensor, n_train: int, inv_two_var: Tensor, crops: KernelCrops,
                        crop_min: Tensor, crop_sum: Tensor, threads: int, distances: Tensor | None = None) -> Tensor:
    """Pass 2: sum_n x_n * (per pixel, the summed normalised weights of n over the crops holding it).

    Returns float64 [B, C, H, W]; distances: the tensor pass 1 filled, or None to recompute the crop distances.
    """
    parts = n_parts(lanes.shape[0], threads)
    numerators = torch.empty(queries.shape[0], parts, *queries.shape[1:])
    queries, crop_sum = queries.float().contiguous(), crop_sum.float().contiguous()
    arguments = [_pointer(queries), _pointer(lanes), *_shape_arguments(queries, n_train), *_crop_arguments(crops),
                 _pointer(inv_two_var), _pointer(crop_min), _pointer(crop_sum), _optional_pointer(distances),
                 _pointer(numerators)]
    check_status(run_parts(load_library().pspc_pass2, arguments, parts, threads), "pass 2")
    return sum_parts(numerators)


def sum_parts(numerators: Tensor) -> Tensor:
    """[B, parts, ...] float32 -> float64 [B, ...], summed one part at a time: each op then stays under torch's
    grain for threading, so no OpenMP region opens (whose threads would spin on the cores the next kernel call
    runs on)."""
    total = numerators[:, 0].double()
    for part in range(1, numerators.shape[1]):
        total += numerators[:, part]
    return total


def composite_numerators(queries: Tensor, lanes: Tensor, n_train: int, sigma: Tensor, crops: KernelCrops,
                         threads: int, distributed: bool = False) -> Tensor:
    """Both passes: the composite numerators float64 [B, C, H, W] (divide by the crops per pixel). distributed: the
    lanes hold this rank's shard; pass 1 is merged over the ranks and pass 2's numerators summed over them."""
    inv_two_var = inverse_two_variance(sigma)
    distances = distance_cache(queries.shape[0], lanes.shape[0], crops.n_crops)  # None when too large
    args = (queries, lanes, n_train, inv_two_var, crops)
    crop_min, crop_sum = crop_normalisers_compiled(*args, threads, distances)
    if distributed:
        crop_min, crop_sum = merge_nearest_sums_across(crop_min, inv_two_var.double()[:, None], crop_sum)
    numerators = numerators_compiled(*args, crop_min, crop_sum, threads, distances)
    return sum_across(numerators) if distributed else numerators


def streamed_chunk_images(image_shape: tuple[int, ...], chunk_size: int | None = None,
                          bytes_per_chunk: int = 1 << 25) -> int:
    """Training images per chunk of `composite_numerators_streamed`: chunk_size, or as many as fill about
    `bytes_per_chunk` of float32 lanes, rounded up to a multiple of LANES so chunks split the set into whole blocks."""
    n_images = chunk_size or bytes_per_chunk // (4 * math.prod(image_shape))
    return max(LANES, -(-n_images // LANES) * LANES)


def composite_numerators_streamed(queries: Tensor, images: TrainingImages, sigma: Tensor, crops: KernelCrops,
                                  threads: int, chunk_images: int, distributed: bool = False) -> Tensor:
    """Both passes over a training set read chunk by chunk: float64 [B, C, H, W] numerators, as
    `composite_numerators` on the whole set. queries: [B, C, H, W]; sigma: [B]; chunk_images: a multiple of LANES.

    Each pass lays out (`training_lanes`, converting uint8 storage on the way) one chunk at a time into one buffer
    reused for every chunk; pass 1's per-chunk nearest distances and normalisers are merged exactly in float64
    (`merge_nearest_sums`). Crop distances are those of the whole-set call (same blocks of 16 images, same float32
    values), so the result differs from it only in the order of float32 partial sums (~1e-7 relative). Extra
    memory: 4 n D bytes for the buffer of n images of D values (+ n D stored values for a chunk with flips, + 4 n D
    for one of float storage with flips), plus pass 1's distances [blocks, B, K, 16] when they fit in
    LOGIT_CACHE_BYTES, as in `composite_numerators`. distributed: `images` is this rank's shard, merged over the
    ranks as in `composite_numerators`.
    """
    inv_two_var = inverse_two_variance(sigma)
    n_train = len(images)
    distances = distance_cache(queries.shape[0], -(-n_train // LANES), crops.n_crops)  # None when too large
    buffer = torch.empty((-(-min(chunk_images, n_train) // LANES), *images.image_shape, LANES))  # one chunk's lanes

    def chunks():  # (lanes, images in the chunk, its blocks of the distance cache or None), in order
        for start in range(0, n_train, chunk_images):
            lanes = training_lanes(images.read_stored(start, start + chunk_images), out=buffer)
            blocks = None if distances is None else distances[start // LANES : start // LANES + lanes.shape[0]]
            yield lanes, min(chunk_images, n_train - start), blocks

    crop_min = crop_sum = None
    for lanes, n_images, blocks in chunks():
        chunk_min, chunk_sum = crop_normalisers_compiled(queries, lanes, n_images, inv_two_var, crops, threads, blocks)
        crop_min, crop_sum = (chunk_min, chunk_sum) if crop_min is None else merge_nearest_sums(
            crop_min, crop_sum, chunk_min, chunk_sum, inv_two_var.double()[:, None])
    if distributed:
        crop_min, crop_sum = merge_nearest_sums_across(crop_min, inv_two_var.double()[:, None], crop_sum)
    numerators = torch.zeros(queries.shape, dtype=torch.float64)
    for lanes, n_images, blocks in chunks():
        numerators += numerators_compiled(queries, lanes, n_images, inv_two_var, crops, crop_min, crop_sum, threads,
                                          blocks)
    return sum_across(numerators) if distributed else numerators
