"""A small compiled CPU kernel for PSPC-Square and PSPC-Flex: both passes fused, vectorised and threaded.

The eager PyTorch paths in `pspc_square.py` and `pspc_flex.py` are the readable references; this kernel computes
the same two passes (per-crop log normalisers, then the composite numerator) but keeps every
[pixels x 16 training images] intermediate in cache: training images are laid out 16 side by side (one per SIMD
lane), the training set is the outer loop (read from memory once per pass for all queries), and each of a few Python
threads sums its own shares of the training set (`run_parts`). Square crops use window sums without cancellation
(`box_filter.py`); listed (Flex) crops are pixel index lists, so a crop costs its size, not H * W as in a dense
GEMM. Float32 throughout, per-pixel differences (never |a|^2 - 2ab + |b|^2), a polynomial exp accurate to ~2 ulp.

The C source below is compiled once per machine with the system C compiler into the user cache directory
(~/.cache/denoiserlab/kernels, or $XDG_CACHE_HOME) on first use, about a second; nothing happens at import.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

LANES = 16  # training images side by side, as in the C source
LOGIT_CACHE_BYTES = 1 << 29  # keep pass-1 crop logits for pass 2 up to this size, else recompute them
COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]


class KernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded on this machine (no C compiler, ...)."""


# Shared by the C kernels (this one and `els_kernel.py`): the lane width, a vectorisable exp and window sums.
C_COMMON = r"""
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define HALF (LANES / 2)

/* exp(x) for x <= 0 (Cephes-style polynomial, ~2 ulp); exactly 0 below -87. Vectorisable. */
static inline float exp_nonpositive(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 0.0f ? 0.0f : x);
    float k = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int i; float f; } scale;
    scale.i = ((int)k + 127) << 23;
    return x < -87.0f ? 0.0f : p * scale.f;
}

/* Window sums of width s along a line of len elements, each `width` contiguous floats (a lane vector, or a whole
   image row of lane vectors for the vertical pass): out[i] = sum_{j<s} in[i + j] for i <= len - s.
   Van Herk / Gil-Werman blocks of length s: out[i] = (suffix sum of i's block from i) + (running prefix sum of the
   next block up to i + s - 1). Only non-negative terms are ever added: no cancellation. */
static void box_line(const float *in, float *out, int len, int s, long width, float *suffix, float *head) {
    int n_out = len - s + 1;
    for (int start = 0; start < n_out; start += s) {
        int last = start + s - 1; /* < len, since start <= len - s */
        memcpy(suffix + last * width, in + last * width, sizeof(float) * width);
        for (int i = last - 1; i >= start; i--) {
            const float *src = in + i * width;
            float *dst = suffix + i * width;
#pragma omp simd
            for (long l = 0; l < width; l++) dst[l] = dst[l + width] + src[l];
        }
        memcpy(out + start * width, suffix + start * width, sizeof(float) * width);
        memset(head, 0, sizeof(float) * width);
        int end = start + s < n_out ? start + s : n_out;
        for (int i = start + 1; i < end; i++) {
            const float *next = in + (long)(i + s - 1) * width, *tail = suffix + i * width;
            float *dst = out + i * width;
#pragma omp simd
            for (long l = 0; l < width; l++) { head[l] += next[l]; dst[l] = tail[l] + head[l]; }
        }
    }
}

"""

C_SOURCE = C_COMMON + r"""
/* Per-pixel squared differences summed over channels: d[hw][l] = sum_c (z[c][hw] - x[c][hw][l])^2. */
static void pixel_squared_differences(const float *z, const float *x, int C, int HW, float *d) {
    for (int p = 0; p < HW; p++) {
        float *restrict dv = d + (long)p * LANES;
        const float *xv = x + (long)p * LANES;
        float zv = z[p];
#pragma omp simd
        for (int l = 0; l < LANES; l++) { float diff = zv - xv[l]; dv[l] = diff * diff; }
        for (int c = 1; c < C; c++) {
            const float *xc = xv + (long)c * HW * LANES;
            float zc = z[(long)c * HW + p];
#pragma omp simd
            for (int l = 0; l < LANES; l++) { float diff = zc - xc[l]; dv[l] += diff * diff; }
        }
    }
}

typedef struct { float *d, *rows, *crops, *suffix, *head, *padded, *padded_rows; } Scratch;

static Scratch scratch_new(int H, int W, int s, int n_crops) {
    long longest = (H > W ? H : W) + 2L * s, most = (long)H * W > n_crops ? (long)H * W : n_crops;
    long padded_image = (long)(H + s) * W * LANES;
    Scratch t;
    t.d = malloc(sizeof(float) * LANES * H * W);
    t.rows = malloc(sizeof(float) * LANES * H * W);
    t.crops = malloc(sizeof(float) * LANES * most);
    t.suffix = malloc(sizeof(float) * padded_image);
    t.head = malloc(sizeof(float) * LANES * W);
    t.padded = malloc(sizeof(float) * LANES * longest);
    t.padded_rows = calloc(padded_image, sizeof(float)); /* rows s-1 .. s+P1-2 rewritten, the others stay 0 */
    return t;
}

static void scratch_free(Scratch t) {
    free(t.d); free(t.rows); free(t.crops); free(t.suffix); free(t.head); free(t.padded); free(t.padded_rows);
}

/* The crops of a composite: all s x s squares (stride 1), or a list of crops given as pixel index lists
   (pixels of crop k: pixels[offsets[k]] .. pixels[offsets[k + 1] - 1], each crop counted counts[k] times). */
typedef struct {
    int listed, H, W, s, n_crops;
    const int *offsets, *pixels;
    const float *counts;
} Crops;

static Crops crops_make(int H, int W, int s, int n_crops, const int *offsets, const int *pixels, const float *counts) {
    Crops crops = {offsets != NULL, H, W, s, offsets ? n_crops : (H - s + 1) * (W - s + 1), offsets, pixels, counts};
    return crops;
}

/* Logits -|C z - C x|^2 * inv_two_var of every crop for one block of training images: [n_crops][LANES];
   lanes >= valid (padding past the end of the training set) get -inf. */
static void crop_logits(const float *z, const float *x, int C, Crops crops, float inv_two_var, int valid,
                        Scratch t, float *logits) {
    int H = crops.H, W = crops.W, s = crops.s;
    pixel_squared_differences(z, x, C, H * W, t.d);
    if (crops.listed) {
        for (int k = 0; k < crops.n_crops; k++) {
            float *v = logits + (long)k * LANES;
            memset(v, 0, sizeof(float) * LANES);
            for (int j = crops.offsets[k]; j < crops.offsets[k + 1]; j++) {
                const float *dv = t.d + (long)crops.pixels[j] * LANES;
#pragma omp simd
                for (int l = 0; l < LANES; l++) v[l] += dv[l];
            }
        }
    } else {
        int P2 = W - s + 1;
        for (int h = 0; h < H; h++)
            box_line(t.d + (long)h * W * LANES, t.rows + (long)h * P2 * LANES, W, s, LANES, t.suffix, t.head);
        box_line(t.rows, logits, H, s, (long)P2 * LANES, t.suffix, t.head); /* whole rows at a time */
    }
    for (int k = 0; k < crops.n_crops; k++) {
        float *v = logits + (long)k * LANES;
#pragma omp simd
        for (int l = 0; l < LANES; l++) v[l] = l < valid ? -v[l] * inv_two_var : -INFINITY;
    }
}

/* Per pixel, the sum of the weights [n_crops][LANES] of the crops that contain it (times their counts):
   out [H * W][LANES]. */
static void pixel_weights(const float *weights, Crops crops, Scratch t, float *out) {
    int H = crops.H, W = crops.W, s = crops.s;
    if (crops.listed) {
        memset(out, 0, sizeof(float) * LANES * H * W);
        for (int k = 0; k < crops.n_crops; k++) {
            float count = crops.counts[k];
            const float *wv = weights + (long)k * LANES;
            for (int j = crops.offsets[k]; j < crops.offsets[k + 1]; j++) {
                float *o = out + (long)crops.pixels[j] * LANES;
#pragma omp simd
                for (int l = 0; l < LANES; l++) o[l] += count * wv[l];
            }
        }
    } else {
        /* transposed window sums = window sums of the input zero-padded by s - 1 on every side */
        int P1 = H - s + 1, P2 = W - s + 1;
        memset(t.padded, 0, sizeof(float) * LANES * (P2 + 2 * (s - 1)));
        for (int p = 0; p < P1; p++) {
            memcpy(t.padded + (long)(s - 1) * LANES, weights + (long)p * P2 * LANES, sizeof(float) * LANES * P2);
            box_line(t.padded, t.padded_rows + (long)(p + s - 1) * W * LANES, P2 + 2 * (s - 1), s, LANES, t.suffix,
                     t.head);
        }
        box_line(t.padded_rows, out, P1 + 2 * (s - 1), s, (long)W * LANES, t.suffix, t.head);
    }
}

/* Pass 1 on share `part` of `parts` of the training set: per query and crop, max logit and sum of exp(logit - max).
   max_out, sum_out: [B][n_crops][parts]; logits_out (or NULL): [blocks][B][n_crops][LANES], kept for pass 2.
   Squares of side s when offsets is NULL, else the listed crops. */
void pspc_pass1(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int n_crops,
                const int *offsets, const int *pixels, const float *counts, const float *inv_two_var,
                float *max_out, float *sum_out, float *logits_out, int part, int parts) {
    Crops crops = crops_make(H, W, s, n_crops, offsets, pixels, counts);
    int blocks = (N + LANES - 1) / LANES, P = crops.n_crops;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    long state = (long)B * P * LANES;
    Scratch t = scratch_new(H, W, s, P);
    float *run_max = malloc(sizeof(float) * state), *run_sum = calloc(state, sizeof(float));
    for (long i = 0; i < state; i++) run_max[i] = -FLT_MAX;
    for (long block = first; block < last; block++) {
        int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
        for (int b = 0; b < B; b++) {
            float *logits = logits_out ? logits_out + (block * B + b) * P * LANES : t.crops;
            crop_logits(z + (long)b * C * H * W, xt + block * C * H * W * LANES, C, crops, inv_two_var[b], valid,
                        t, logits);
            float *mb = run_max + (long)b * P * LANES, *sb = run_sum + (long)b * P * LANES;
            for (int p = 0; p < P; p++) {
                float *m = mb + (long)p * LANES, *sm = sb + (long)p * LANES, *v = logits + (long)p * LANES;
                /* running log-sum-exp with one exp per element: e = exp(-|v - m|) */
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    float e = exp_nonpositive(-fabsf(v[l] - m[l]));
                    int grows = v[l] > m[l];
                    sm[l] = grows ? sm[l] * e + 1.0f : sm[l] + e;
                    m[l] = grows ? v[l] : m[l];
                }
            }
        }
    }
    for (long q = 0; q < (long)B * P; q++) {
        float m = -FLT_MAX, sm = 0.0f;
        for (int l = 0; l < LANES; l++) m = run_max[q * LANES + l] > m ? run_max[q * LANES + l] : m;
        for (int l = 0; l < LANES; l++) sm += run_sum[q * LANES + l] * expf(run_max[q * LANES + l] - m);
        max_out[q * parts + part] = m;
        sum_out[q * parts + part] = sm;
    }
    free(run_max); free(run_sum); scratch_free(t);
}

/* Merge the parts of pass 1: log_out[q] = log sum_part sum[q][part] * exp(max[q][part] - overall max), in double;
   max_in, sum_in: [Q][parts] with Q = B * n_crops. */
void merge_parts(const float *max_in, const float *sum_in, long Q, int parts, double *log_out) {
    for (long q = 0; q < Q; q++) {
        double m = -DBL_MAX, total = 0.0;
        for (int part = 0; part < parts; part++) m = max_in[q * parts + part] > m ? max_in[q * parts + part] : m;
        for (int part = 0; part < parts; part++) total += sum_in[q * parts + part] * exp(max_in[q * parts + part] - m);
        log_out[q] = m + log(total);
    }
}

/* Pass 2 on share `part` of `parts`: num[c][h][w] = sum_n x_n[c][h][w] * (sum over crops holding (h, w) of
   exp(logit_n - log_normaliser)). log_normaliser: [B][n_crops]; logits_in: pass 1's logits_out, or NULL to
   recompute them; num_out: [B][parts][C][H][W]. */
void pspc_pass2(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int n_crops,
                const int *offsets, const int *pixels, const float *counts, const float *inv_two_var,
                const float *log_normaliser, const float *logits_in, float *num_out, int part, int parts) {
    Crops crops = crops_make(H, W, s, n_crops, offsets, pixels, counts);
    int blocks = (N + LANES - 1) / LANES, P = crops.n_crops, HW = H * W;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    Scratch t = scratch_new(H, W, s, P);
    float *acc = calloc((size_t)B * HALF * C * HW, sizeof(float)); /* lanes folded in two: half the traffic */
    for (long block = first; block < last; block++) {
        int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
        const float *x = xt + block * C * HW * LANES;
        for (int b = 0; b < B; b++) {
            const float *lz = log_normaliser + (long)b * P, *logits = t.crops;
            if (logits_in)
                logits = logits_in + (block * B + b) * P * LANES;
            else
                crop_logits(z + (long)b * C * HW, x, C, crops, inv_two_var[b], valid, t, t.crops);
            float largest = 0.0f;
            for (int p = 0; p < P; p++) {
                const float *v = logits + (long)p * LANES;
                float *weight = t.crops + (long)p * LANES;
#pragma omp simd reduction(max : largest)
                for (int l = 0; l < LANES; l++) {
                    weight[l] = exp_nonpositive(v[l] - lz[p]);
                    largest = weight[l] > largest ? weight[l] : largest;
                }
            }
            if (largest == 0.0f) continue; /* every weight underflowed to exactly 0: nothing to add */
            pixel_weights(t.crops, crops, t, t.d);
            float *accb = acc + (long)b * C * HW * HALF;
            for (int c = 0; c < C; c++)
                for (int p = 0; p < HW; p++) {
                    float *a = accb + ((long)c * HW + p) * HALF;
                    const float *wv = t.d + (long)p * LANES, *xv = x + ((long)c * HW + p) * LANES;
#pragma omp simd
                    for (int l = 0; l < HALF; l++) a[l] += wv[l] * xv[l] + wv[l + HALF] * xv[l + HALF];
                }
        }
    }
    for (long i = 0; i < (long)B * C * HW; i++) {
        float total = 0.0f;
        for (int l = 0; l < HALF; l++) total += acc[i * HALF + l];
        long b = i / ((long)C * HW), j = i % ((long)C * HW);
        num_out[(b * parts + part) * C * HW + j] = total;
    }
    free(acc); scratch_free(t);
}
"""

_libraries: dict[str, ctypes.CDLL] = {}


def kernel_cache_dir() -> Path:
    """Where built kernels are kept: $XDG_CACHE_HOME/denoiserlab/kernels or ~/.cache/denoiserlab/kernels."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "denoiserlab" / "kernels"


def _build(target: Path, source: str, stem: str) -> None:
    """Compile the C `source` into the shared library `target` (atomically, so parallel processes may race)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise KernelUnavailable("no C compiler (gcc or cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source_file = Path(tmp) / f"{stem}.c"
        source_file.write_text(source)
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *COMPILE_FLAGS, str(source_file), "-o", str(built), "-lm"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelUnavailable(f"building the {stem} kernel failed: {result.stderr.strip()[:500]}")
        os.replace(built, target)


def compiled_library(source: str, stem: str) -> ctypes.CDLL:
    """The shared library built from the C `source`, built on first use into kernel_cache_dir() as <stem>_<key>.so
    (keyed by source, flags and machine, since it uses -march=native) and loaded once per process."""
    if stem not in _libraries:
        key = hashlib.sha256("\n".join([source, *COMPILE_FLAGS, platform.node(), platform.machine()]).encode())
        target = kernel_cache_dir() / f"{stem}_{key.hexdigest()[:16]}.so"
        if not target.exists():
            _build(target, source, stem)
        try:
            _libraries[stem] = ctypes.CDLL(str(target))
        except OSError as error:
            raise KernelUnavailable(f"loading the {stem} kernel {target} failed: {error}") from None
    return _libraries[stem]


def load_library() -> ctypes.CDLL:
    """The compiled PSPC kernel, built on first use."""
    return compiled_library(C_SOURCE, "pspc")


def training_lanes(images: Tensor, blocks_per_copy: int = 1024) -> Tensor:
    """[N, C, H, W] float32 -> [ceil(N / 16), C, H, W, 16]: 16 training images side by side, zero padded.

    Filled a slice of blocks at a time, so the only large allocation is the result itself.
    """
    n_images = images.shape[0]
    n_blocks = -(-n_images // LANES)
    lanes = torch.zeros((n_blocks, *images.shape[1:], LANES), dtype=torch.float32)
    for first in range(0, n_blocks, blocks_per_copy):
        chunk = images[first * LANES : (first + blocks_per_copy) * LANES]
        full, rest = divmod(chunk.shape[0], LANES)
        if full:
            lanes[first : first + full] = chunk[: full * LANES].unflatten(0, (full, LANES)).permute(0, 2, 3, 4, 1)
        if rest:
            lanes[first + full, ..., :rest] = chunk[full * LANES :].permute(1, 2, 3, 0)
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


def run_parts(function, arguments: list, parts: int, threads: int) -> None:
    """Call function(*arguments, part, parts) for every part on `threads` Python threads.

    ctypes releases the GIL during the call, so the parts run in parallel; plain threads rather than OpenMP
    because OpenMP barriers stall badly (~100 ms a region here) when other jobs load the machine.
    """
    calls = [arguments + [ctypes.c_int(part), ctypes.c_int(parts)] for part in range(parts)]
    if threads == 1:
        for call in calls:
            function(*call)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda call: function(*call), calls))


@dataclass(frozen=True)
class KernelCrops:
    """Crops as the C kernel takes them: all size x size squares (offsets None), or listed crops in CSR form."""

    n_crops: int
    size: int = 1  # square side; 1 for listed crops
    offsets: Tensor | None = None  # int32 [K + 1]: crop k holds pixels[offsets[k] : offsets[k + 1]]
    pixels: Tensor | None = None  # int32 [total]: flat pixel indices y * W + x
    counts: Tensor | None = None  # float32 [K]: how often each crop counts in the composite


def square_crops(height: int, width: int, size: int) -> KernelCrops:
    """All size x size squares of an H x W image, in row-major order of their top-left corner."""
    return KernelCrops(n_crops=(height - size + 1) * (width - size + 1), size=size)


def listed_crops(masks: Tensor, counts: Tensor) -> KernelCrops:
    """Crops from a 0/1 tensor [K, H * W] and their multiplicities [K]."""
    masks = masks.bool()
    offsets = torch.zeros(masks.shape[0] + 1, dtype=torch.int32)
    offsets[1:] = masks.sum(1).cumsum(0)
    pixels = masks.nonzero()[:, 1].to(torch.int32).contiguous()  # row-major: grouped by crop
    return KernelCrops(n_crops=masks.shape[0], offsets=offsets, pixels=pixels, counts=counts.float().contiguous())


def _crop_arguments(crops: KernelCrops) -> list:
    return [ctypes.c_int(crops.size), ctypes.c_int(crops.n_crops), _optional_pointer(crops.offsets),
            _optional_pointer(crops.pixels), _optional_pointer(crops.counts)]


def logit_cache(batch: int, n_blocks: int, n_crops: int) -> Tensor | None:
    """Room for pass 1's crop logits [blocks, B, crops, 16] if they fit in LOGIT_CACHE_BYTES, else None."""
    if 4 * batch * n_blocks * n_crops * LANES > LOGIT_CACHE_BYTES:
        return None
    return torch.empty(n_blocks, batch, n_crops, LANES)


def log_normalisers_compiled(queries: Tensor, lanes: Tensor, n_train: int, inv_two_var: Tensor, crops: KernelCrops,
                             threads: int, logits: Tensor | None = None) -> Tensor:
    """Pass 1: log sum_n exp(crop logit) per query and crop, float64 [B, K].

    queries: [B, C, H, W]; lanes: `training_lanes`; inv_two_var: [B]; logits: `logit_cache` (filled) or None.
    """
    parts = n_parts(lanes.shape[0], threads)
    maxima = torch.empty(queries.shape[0], crops.n_crops, parts)
    sums = torch.empty_like(maxima)
    queries, inv_two_var = queries.float().contiguous(), inv_two_var.float().contiguous()
    arguments = [_pointer(queries), _pointer(lanes), *_shape_arguments(queries, n_train), *_crop_arguments(crops),
                 _pointer(inv_two_var), _pointer(maxima), _pointer(sums), _optional_pointer(logits)]
    library = load_library()
    run_parts(library.pspc_pass1, arguments, parts, threads)
    log_normalisers = torch.empty(maxima.shape[:-1], dtype=torch.float64)
    library.merge_parts(_pointer(maxima), _pointer(sums), ctypes.c_long(log_normalisers.numel()), ctypes.c_int(parts),
                        _pointer(log_normalisers))
    return log_normalisers


def numerators_compiled(queries: Tensor, lanes: Tensor, n_train: int, inv_two_var: Tensor, crops: KernelCrops,
                        log_normalisers: Tensor, threads: int, logits: Tensor | None = None) -> Tensor:
    """Pass 2: sum_n x_n * (per pixel, the summed normalised weights of n over the crops holding it).

    Returns float64 [B, C, H, W]; logits: the tensor pass 1 filled, or None to recompute the crop logits.
    """
    parts = n_parts(lanes.shape[0], threads)
    numerators = torch.empty(queries.shape[0], parts, *queries.shape[1:])
    queries, inv_two_var = queries.float().contiguous(), inv_two_var.float().contiguous()
    log_normalisers = log_normalisers.float().contiguous()
    arguments = [_pointer(queries), _pointer(lanes), *_shape_arguments(queries, n_train), *_crop_arguments(crops),
                 _pointer(inv_two_var), _pointer(log_normalisers), _optional_pointer(logits), _pointer(numerators)]
    run_parts(load_library().pspc_pass2, arguments, parts, threads)
    return numerators.sum(1, dtype=torch.float64)


def composite_numerators(queries: Tensor, lanes: Tensor, n_train: int, sigma: Tensor, crops: KernelCrops,
                         threads: int) -> Tensor:
    """Both passes: the composite numerators float64 [B, C, H, W] (divide by the crops per pixel)."""
    inv_two_var = 1.0 / (2.0 * sigma.double() ** 2)
    logits = logit_cache(queries.shape[0], lanes.shape[0], crops.n_crops)  # None when too large
    args = (queries, lanes, n_train, inv_two_var, crops)
    log_normalisers = log_normalisers_compiled(*args, threads, logits)
    return numerators_compiled(*args, log_normalisers, threads, logits)
