"""A compiled CPU kernel for the local score machines (ELS and LS): one fused pass, vectorised and threaded.

The eager PyTorch path in `local_score.py` is the readable reference; this kernel computes the same posterior means
with the layout of `pspc_kernel.py` (16 training images side by side, one per SIMD lane; the training set split into
shares summed by Python threads). For each query, training block and pair of axis offsets (dy, dx) it
  1. forms the per-pixel squared differences e[u][v] = sum_c (q[c][u][v] - x[c][u + dy][v + dx])^2 over the padded
     rows and columns the valid outputs' windows cover (padding and wrap-around come in as index maps),
  2. takes P x P window sums of e without cancellation (`box_line` of the PSPC kernel), so a window distance costs
     O(1) for any P, and
  3. folds each valid output pixel's candidate into its running softmax: max m, sum s = sum exp(l - m) and numerator
     a_c = sum exp(l - m) * (candidate centre pixel, channel c), with one exp per (pixel, candidate) as in the PSPC
     kernel; candidates whose 16 logits all lie 87 below the running max are skipped (their weights are 0 in float32).
Float32 lanes are folded into float64 sums every FOLD_TERMS candidates per lane; the shares are merged in float64.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from denoiserlab.denoisers.pspc_kernel import C_COMMON, compiled_library, n_parts, run_parts

FOLD_TERMS = 1024  # candidates per lane summed in float32 before they are folded into the float64 sums

C_SOURCE = C_COMMON + f"\n#define FOLD_TERMS {FOLD_TERMS}\n" + r"""
/* Running float32 softmax state of one query: per pixel and lane the max m, the sum s and the numerators a[c];
   layout [HW][LANES] for m and s, [HW][C][LANES] for a. */
typedef struct { float *m, *s, *a; } LaneState;

static void lane_state_reset(LaneState t, int HW, int C) {
    for (long i = 0; i < (long)HW * LANES; i++) { t.m[i] = -FLT_MAX; t.s[i] = 0.0f; }
    memset(t.a, 0, sizeof(float) * (long)HW * C * LANES);
}

/* Merge the 16 lanes of every pixel into the float64 running sums dmax, dsum [HW] and dnum [C][HW]; then reset. */
static void fold_lanes(LaneState t, int HW, int C, double *dmax, double *dsum, double *dnum) {
    for (int p = 0; p < HW; p++) {
        const float *m = t.m + (long)p * LANES, *s = t.s + (long)p * LANES, *a = t.a + (long)p * C * LANES;
        float top = -FLT_MAX;
        for (int l = 0; l < LANES; l++) top = m[l] > top ? m[l] : top;
        if (top == -FLT_MAX) continue; /* no candidate since the last fold */
        double sum = 0.0, num[64] = {0.0};
        for (int l = 0; l < LANES; l++) {
            double w = exp((double)m[l] - top);
            sum += s[l] * w;
            for (int c = 0; c < C; c++) num[c] += a[(long)c * LANES + l] * w;
        }
        double new_max = dmax[p] > top ? dmax[p] : top;
        double old_scale = exp(dmax[p] - new_max), new_scale = exp(top - new_max);
        dsum[p] = dsum[p] * old_scale + sum * new_scale;
        for (int c = 0; c < C; c++) dnum[(long)c * HW + p] = dnum[(long)c * HW + p] * old_scale + num[c] * new_scale;
        dmax[p] = new_max;
    }
    lane_state_reset(t, HW, C);
}

/* The query padded by r on every side through the index maps (-1: zero padding): zpad [C][PH][PW]. */
static void pad_query(const float *z, int C, int H, int W, int PH, int PW, const int *query_rows,
                      const int *query_cols, float *zpad) {
    for (int c = 0; c < C; c++)
        for (int u = 0; u < PH; u++)
            for (int v = 0; v < PW; v++) {
                int y = query_rows[u], x = query_cols[v];
                zpad[((long)c * PH + u) * PW + v] = (y < 0 || x < 0) ? 0.0f : z[((long)c * H + y) * W + x];
            }
}

/* e[uu][vv][l] = sum_c (zpad[c][y0 + uu][x0 + vv] - x_l[c][rows[y0 + uu]][cols[x0 + vv]])^2 for uu < eh, vv < ew. */
static void offset_differences(const float *zpad, const float *x, int C, int H, int W, int PH, int PW, int y0, int x0,
                               int eh, int ew, const int *rows, const int *cols, float *e) {
    for (int uu = 0; uu < eh; uu++)
        for (int vv = 0; vv < ew; vv++) {
            int u = y0 + uu, v = x0 + vv, tr = rows[u], tc = cols[v];
            float *restrict ev = e + ((long)uu * ew + vv) * LANES;
            for (int l = 0; l < LANES; l++) ev[l] = 0.0f;
            for (int c = 0; c < C; c++) {
                float zq = zpad[((long)c * PH + u) * PW + v];
                if (tr < 0 || tc < 0) {
#pragma omp simd
                    for (int l = 0; l < LANES; l++) ev[l] += zq * zq;
                } else {
                    const float *xv = x + (((long)c * H + tr) * W + tc) * LANES;
#pragma omp simd
                    for (int l = 0; l < LANES; l++) { float diff = zq - xv[l]; ev[l] += diff * diff; }
                }
            }
        }
}

/* Fold the candidates of one offset pair into the lane state: output (y0 + yy, x0 + xx) has the window distance
   dist[yy][xx][l] and the candidate centre pixel x_l[c][rows[y + r]][cols[x + r]]. Lanes >= valid are padding. */
static void fold_candidates(const float *dist, const float *x, int C, int H, int W, int r, int y0, int x0, int hy,
                            int wx, const int *rows, const int *cols, float inv_two_var, int valid, LaneState t) {
    for (int yy = 0; yy < hy; yy++)
        for (int xx = 0; xx < wx; xx++) {
            int y = y0 + yy, xo = x0 + xx, p = y * W + xo;
            const float *dv = dist + ((long)yy * wx + xx) * LANES;
            float *m = t.m + (long)p * LANES, *s = t.s + (long)p * LANES, *a = t.a + (long)p * C * LANES;
            float v[LANES], best = -INFINITY;
#pragma omp simd reduction(max : best)
            for (int l = 0; l < LANES; l++) {
                v[l] = l < valid ? -dv[l] * inv_two_var : -INFINITY;
                float gap = v[l] - m[l];
                best = gap > best ? gap : best;
            }
            if (best < -87.0f) continue; /* every weight is 0 in float32 and no lane's max grows */
            const float *centre = x + ((long)rows[y + r] * W + cols[xo + r]) * LANES;
            float e[LANES];
            int grows[LANES];
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                e[l] = exp_nonpositive(-fabsf(v[l] - m[l]));
                grows[l] = v[l] > m[l];
                s[l] = grows[l] ? s[l] * e[l] + 1.0f : s[l] + e[l];
                m[l] = grows[l] ? v[l] : m[l];
            }
            for (int c = 0; c < C; c++) {
                const float *tv = centre + (long)c * H * W * LANES;
                float *ac = a + (long)c * LANES;
#pragma omp simd
                for (int l = 0; l < LANES; l++) ac[l] = grows[l] ? ac[l] * e[l] + tv[l] : ac[l] + e[l] * tv[l];
            }
        }
}

/* Share `part` of `parts` of the training blocks. Axis offsets: output rows y0 = dy_first[i] .. dy_last[i] take the
   training rows dy_source[i][u] (u: padded row, -1: zero) for offset i; likewise for columns. Outputs (float64):
   max_out, sum_out [parts][B][H][W] and num_out [parts][B][C][H][W]. */
void els_part(const float *z, const float *xt, int B, int C, int H, int W, int N, int s,
              int n_dy, const int *dy_first, const int *dy_last, const int *dy_source, const int *query_rows,
              int n_dx, const int *dx_first, const int *dx_last, const int *dx_source, const int *query_cols,
              const float *inv_two_var, double *max_out, double *sum_out, double *num_out, int part, int parts) {
    int r = s / 2, PH = H + 2 * r, PW = W + 2 * r, HW = H * W;
    int blocks = (N + LANES - 1) / LANES;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    long pairs = (long)n_dy * n_dx; /* candidates per lane and pixel in one block, at most */
    float *zpad = malloc(sizeof(float) * C * PH * PW);
    float *e = malloc(sizeof(float) * LANES * PH * PW), *rows = malloc(sizeof(float) * LANES * PH * W);
    float *dist = malloc(sizeof(float) * LANES * HW);
    float *suffix = malloc(sizeof(float) * LANES * (PH * W > PW ? PH * W : PW)), *head = malloc(sizeof(float) * LANES * W);
    LaneState t = {malloc(sizeof(float) * LANES * HW), malloc(sizeof(float) * LANES * HW),
                   malloc(sizeof(float) * LANES * HW * C)};
    for (int b = 0; b < B; b++) {
        double *dmax = max_out + ((long)part * B + b) * HW, *dsum = sum_out + ((long)part * B + b) * HW;
        double *dnum = num_out + ((long)part * B + b) * C * HW;
        for (int p = 0; p < HW; p++) { dmax[p] = -INFINITY; dsum[p] = 0.0; }
        memset(dnum, 0, sizeof(double) * C * HW);
        pad_query(z + (long)b * C * HW, C, H, W, PH, PW, query_rows, query_cols, zpad);
        lane_state_reset(t, HW, C);
        long since_fold = 0;
        for (long block = first; block < last; block++) {
            int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
            const float *x = xt + block * C * HW * LANES;
            if (since_fold + pairs > FOLD_TERMS && since_fold > 0) {
                fold_lanes(t, HW, C, dmax, dsum, dnum);
                since_fold = 0;
            }
            since_fold += pairs;
            for (int i = 0; i < n_dy; i++) {
                int y0 = dy_first[i], hy = dy_last[i] - y0 + 1;
                const int *row_map = dy_source + (long)i * PH;
                for (int j = 0; j < n_dx; j++) {
                    int x0 = dx_first[j], wx = dx_last[j] - x0 + 1;
                    const int *col_map = dx_source + (long)j * PW;
                    int eh = hy + 2 * r, ew = wx + 2 * r;
                    offset_differences(zpad, x, C, H, W, PH, PW, y0, x0, eh, ew, row_map, col_map, e);
                    for (int uu = 0; uu < eh; uu++)
                        box_line(e + (long)uu * ew * LANES, rows + (long)uu * wx * LANES, ew, s, LANES, suffix, head);
                    box_line(rows, dist, eh, s, (long)wx * LANES, suffix, head);
                    fold_candidates(dist, x, C, H, W, r, y0, x0, hy, wx, row_map, col_map, inv_two_var[b], valid, t);
                }
            }
        }
        fold_lanes(t, HW, C, dmax, dsum, dnum);
    }
    free(zpad); free(e); free(rows); free(dist); free(suffix); free(head); free(t.m); free(t.s); free(t.a);
}
"""

MAX_CHANNELS = 64  # fold_lanes keeps one float64 numerator per channel on the stack


def load_library() -> ctypes.CDLL:
    """The compiled ELS kernel, built on first use (see `pspc_kernel.compiled_library`)."""
    return compiled_library(C_SOURCE, "els")


def _pointer(tensor: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _axis_arguments(first: Tensor, last: Tensor, sources: Tensor, query: Tensor) -> list:
    """ctypes arguments of one axis: int32 first [n], last [n], sources [n, L + 2r], query [L + 2r]."""
    return [ctypes.c_int(first.shape[0]), _pointer(first), _pointer(last), _pointer(sources), _pointer(query)]


def local_posterior_compiled(queries: Tensor, lanes: Tensor, n_train: int, sigma: Tensor, size: int, rows: tuple,
                             cols: tuple, threads: int) -> Tensor:
    """Posterior means of the candidates' centre pixels, float64 [B, C, H, W].

    queries: [B, C, H, W]; lanes: `pspc_kernel.training_lanes`; sigma: [B]; size: the odd window side P;
    rows, cols: (first, last, sources, query) int32 tensors of each axis (see `local_score.AxisCandidates.arrays`).
    """
    if queries.shape[1] > MAX_CHANNELS:
        raise ValueError(f"the ELS kernel takes at most {MAX_CHANNELS} channels, got {queries.shape[1]}")
    parts = n_parts(lanes.shape[0], threads)
    batch, channels, height, width = queries.shape
    maxima = torch.empty(parts, batch, height, width, dtype=torch.float64)
    sums = torch.empty_like(maxima)
    numerators = torch.empty(parts, batch, channels, height, width, dtype=torch.float64)
    queries = queries.float().contiguous()
    inv_two_var = (1.0 / (2.0 * sigma.double() ** 2)).float().contiguous()
    arguments = [_pointer(queries), _pointer(lanes), *[ctypes.c_int(v) for v in (batch, channels, height, width)],
                 ctypes.c_int(n_train), ctypes.c_int(size), *_axis_arguments(*rows), *_axis_arguments(*cols),
                 _pointer(inv_two_var), _pointer(maxima), _pointer(sums), _pointer(numerators)]
    run_parts(load_library().els_part, arguments, parts, threads)
    scale = torch.exp(maxima - maxima.amax(0))  # [parts, B, H, W]
    return (numerators * scale[:, :, None]).sum(0) / (sums * scale).sum(0)[:, None]
