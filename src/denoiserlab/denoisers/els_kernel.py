"""A compiled CPU kernel for the local score machines (ELS and LS): one fused pass, vectorised and threaded.

The eager PyTorch path in `local_score.py` is the readable reference; this kernel computes the same posterior means
with the layout of `pspc_kernel.py` (16 training images side by side, one per SIMD lane; the training set split into
shares summed by Python threads). For each query, training block and pair of axis offsets (dy, dx) it
  1. forms the per-pixel squared differences e[u][v] = sum_c (q[c][u][v] - x[c][u + dy][v + dx])^2 over the padded
     rows and columns the valid outputs' windows cover (padding and wrap-around come in as index maps),
  2. takes P x P window sums of e without cancellation (plain sums for small P, else `box_line` of the PSPC kernel,
     O(1) per window for any P), and
  3. folds each output pixel's candidate into its running softmax, kept relative to the nearest window distance m
     seen so far (robust at any sigma): s = sum exp(-(d - m) / (2 sigma^2)) and a_c = the same weights times the
     candidate's centre pixel in channel c, one exp per (pixel, candidate), a whole output row per flat loop; a row
     whose weights are all 0 in float32 is skipped.
Float32 lanes are folded into float64 sums every FOLD_TERMS candidates per lane; the shares are merged in float64.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from denoiserlab.denoisers.pspc_kernel import C_COMMON, compiled_library, n_parts, run_parts
from denoiserlab.errors import DenoiserLabError

FOLD_TERMS = 1024  # candidates per lane summed in float32 before they are folded into the float64 sums
DIRECT_SUMS_UP_TO = 5  # window sums of up to this many terms are plain sums, longer ones van Herk blocks

C_SOURCE = C_COMMON + f"\n#define FOLD_TERMS {FOLD_TERMS}\n#define DIRECT_SUMS_UP_TO {DIRECT_SUMS_UP_TO}\n" + r"""
/* Running float32 softmax state of one query: per pixel and lane the smallest window distance m seen so far, the
   sum s = sum exp(-(d - m) k) and the numerators a[c] = sum exp(-(d - m) k) * centre[c], with k = 1 / (2 sigma^2).
   Weights relative to the nearest distance, not to the largest logit -d k, stay right at any sigma: -d k may
   overflow at a tiny sigma, -(d - m) k only for candidates whose weight is 0 anyway. Layout [HW][LANES] for m and
   s, [C][HW][LANES] for a, so that an image row of any of them is contiguous. */
typedef struct { float *m, *s, *a; } LaneState;

static void lane_state_reset(LaneState t, int HW, int C) {
    for (long i = 0; i < (long)HW * LANES; i++) { t.m[i] = FLT_MAX; t.s[i] = 0.0f; }
    memset(t.a, 0, sizeof(float) * (long)HW * C * LANES);
}

/* Empty the sums but keep each lane's nearest distance: later candidates are summed relative to it, so it settles
   after the first blocks and the online update's rescaling branch is rarely taken again. */
static void lane_sums_reset(LaneState t, int HW, int C) {
    memset(t.s, 0, sizeof(float) * (long)HW * LANES);
    memset(t.a, 0, sizeof(float) * (long)HW * C * LANES);
}

/* Merge the 16 lanes of every pixel into the float64 running sums dmin, dsum [HW] and dnum [C][HW] (relative to the
   nearest distance dmin, +inf before the first candidate); then empty the lane sums, keeping the lanes' m. */
static void fold_lanes(LaneState t, int HW, int C, double k, double *dmin, double *dsum, double *dnum) {
    for (int p = 0; p < HW; p++) {
        const float *m = t.m + (long)p * LANES, *s = t.s + (long)p * LANES, *a = t.a + (long)p * LANES;
        float nearest = FLT_MAX;
        for (int l = 0; l < LANES; l++) nearest = m[l] < nearest ? m[l] : nearest;
        if (nearest == FLT_MAX) continue; /* no candidate yet */
        double sum = 0.0, num[64] = {0.0};
        for (int l = 0; l < LANES; l++) {
            if (s[l] == 0.0f) continue;
            double w = exp(-((double)m[l] - nearest) * k);
            sum += s[l] * w;
            for (int c = 0; c < C; c++) num[c] += a[(long)c * HW * LANES + l] * w;
        }
        double new_min = dmin[p] < nearest ? dmin[p] : nearest;
        double old_scale = dmin[p] == INFINITY ? 0.0 : exp(-(dmin[p] - new_min) * k);
        double new_scale = exp(-(nearest - new_min) * k);
        dsum[p] = dsum[p] * old_scale + sum * new_scale;
        for (int c = 0; c < C; c++) dnum[(long)c * HW + p] = dnum[(long)c * HW + p] * old_scale + num[c] * new_scale;
        dmin[p] = new_min;
    }
    lane_sums_reset(t, HW, C);
}

/* The query padded by r on every side through the index maps (-1: zero padding), each value repeated over the 16
   lanes so that differences with 16 training images are flat vector loops: zpad [C][PH][PW][LANES]. */
static void pad_query(const float *z, int C, int H, int W, int PH, int PW, const int *query_rows,
                      const int *query_cols, float *zpad) {
    for (int c = 0; c < C; c++)
        for (int u = 0; u < PH; u++)
            for (int v = 0; v < PW; v++) {
                int y = query_rows[u], x = query_cols[v];
                float value = (y < 0 || x < 0) ? 0.0f : z[((long)c * H + y) * W + x];
                float *out = zpad + (((long)c * PH + u) * PW + v) * LANES;
                for (int l = 0; l < LANES; l++) out[l] = value;
            }
}

/* Runs of padded columns x0 .. x0 + ew - 1 whose training columns are consecutive (or all zero padding):
   run k starts at column start[k] (relative to x0), holds length[k] columns and reads from column source[k]
   (-1: zero). Returns the number of runs (at most ew). */
static int column_runs(const int *cols, int x0, int ew, int *start, int *length, int *source) {
    int n = 0;
    for (int vv = 0; vv < ew; vv++) {
        int tc = cols[x0 + vv];
        int extends = n > 0 && ((tc < 0 && source[n - 1] < 0) ||
                                (tc >= 0 && source[n - 1] >= 0 && tc == source[n - 1] + length[n - 1]));
        if (extends) {
            length[n - 1]++;
        } else {
            start[n] = vv; length[n] = 1; source[n] = tc; n++;
        }
    }
    return n;
}

/* e[uu][vv][l] = sum_c (zpad[c][y0 + uu][x0 + vv] - x_l[c][rows[y0 + uu]][cols[x0 + vv]])^2 for uu < eh, vv < ew,
   one flat vector loop per run of consecutive training columns. */
static void offset_differences(const float *zpad, const float *x, int C, int H, int W, int PH, int PW, int y0, int x0,
                               int eh, int ew, const int *rows, int n_runs, const int *run_start,
                               const int *run_length, const int *run_source, float *e) {
    for (int uu = 0; uu < eh; uu++) {
        int u = y0 + uu, tr = rows[u];
        float *restrict row = e + (long)uu * ew * LANES;
        for (int c = 0; c < C; c++) {
            const float *zrow = zpad + (((long)c * PH + u) * PW + x0) * LANES;
            for (int k = 0; k < n_runs; k++) {
                long first = (long)run_start[k] * LANES, count = (long)run_length[k] * LANES;
                const float *restrict zq = zrow + first;
                float *restrict ev = row + first;
                const float *restrict xv = (tr < 0 || run_source[k] < 0) ? NULL
                                           : x + (((long)c * H + tr) * W + run_source[k]) * LANES;
                if (!xv && c == 0) {
#pragma omp simd
                    for (long i = 0; i < count; i++) ev[i] = zq[i] * zq[i];
                } else if (!xv) {
#pragma omp simd
                    for (long i = 0; i < count; i++) ev[i] += zq[i] * zq[i];
                } else if (c == 0) {
#pragma omp simd
                    for (long i = 0; i < count; i++) { float diff = zq[i] - xv[i]; ev[i] = diff * diff; }
                } else {
#pragma omp simd
                    for (long i = 0; i < count; i++) { float diff = zq[i] - xv[i]; ev[i] += diff * diff; }
                }
            }
        }
    }
}

/* out[i] = in_0[i] + ... + in_{s-1}[i] for i < n: one pass, each term loaded once (s = 1, 3 or 5). */
static void add_terms(const float *const *in, int s, float *restrict out, long n) {
    const float *a = in[0], *b = in[s > 1 ? 1 : 0], *c = in[s > 2 ? 2 : 0], *d = in[s > 3 ? 3 : 0],
                *f = in[s > 4 ? 4 : 0];
    if (s == 1) {
        memcpy(out, a, sizeof(float) * n);
    } else if (s == 3) {
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = a[i] + b[i] + c[i];
    } else {
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = a[i] + b[i] + c[i] + d[i] + f[i];
    }
}

/* out[i][.] = sum_{j < s} in[i + j][.] for i < n_out, each element `width` floats: plain sums in one pass (s up to
   DIRECT_SUMS_UP_TO) or the van Herk blocks of box_line; only non-negative terms are added either way. */
static void window_sums(const float *in, float *out, int n_out, int s, long width, float *suffix, float *head) {
    if (s > DIRECT_SUMS_UP_TO) {
        box_line(in, out, n_out + s - 1, s, width, suffix, head);
        return;
    }
    const float *terms[DIRECT_SUMS_UP_TO];
    for (int j = 0; j < s; j++) terms[j] = in + (long)j * width;
    add_terms(terms, s, out, (long)n_out * width);
}

/* Scratch of one output row: weights e and flags g [W * LANES], centre pixels [C][W * LANES]. */
typedef struct { float *e, *centres; int *g; } RowScratch;

/* Fold one output row of candidates into the lane state: n = (row length) * LANES values, flat so that the exps of
   neighbouring pixels pipeline. dist: window distances; lane_weight: NULL, or 0 on the padding lanes past the end of
   the training set and 1 elsewhere; k = 1 / (2 sigma^2); centres [C][n] (channel stride cstride); m, s [n] and
   a [C][n] (channel stride astride) of the row. In the common case no distance is below its lane's m and the
   weights are exp(-(d - m) k) in plain sums; otherwise the online update with one exp per value
   (e = exp(-|d - m| k), sums rescaled where m shrinks). A row whose weights are all 0 in float32 is skipped. */
static void fold_row(const float *restrict dist, const float *restrict lane_weight, float k, long n, int C,
                     const float *restrict centres, long cstride, float *restrict m, float *restrict s,
                     float *restrict a, long astride, RowScratch w) {
    float *restrict e = w.e;
    int *restrict g = w.g;
    float closest = -INFINITY; /* max over the row of m - d: > 0 where a distance is below its lane's m */
#pragma omp simd reduction(max : closest)
    for (long i = 0; i < n; i++) closest = m[i] - dist[i] > closest ? m[i] - dist[i] : closest;
    int nearer = closest > 0.0f;
    if (!nearer && closest * k < -87.0f) return; /* every weight is 0 in float32 */
    if (!nearer && !lane_weight && C == 1) {
#pragma omp simd
        for (long i = 0; i < n; i++) {
            float ei = exp_nonpositive((m[i] - dist[i]) * k);
            s[i] += ei;
            a[i] += ei * centres[i];
        }
        return;
    }
    if (!nearer && !lane_weight) {
#pragma omp simd
        for (long i = 0; i < n; i++) {
            float ei = exp_nonpositive((m[i] - dist[i]) * k);
            e[i] = ei;
            s[i] += ei;
            a[i] += ei * centres[i];
        }
        for (int c = 1; c < C; c++) {
            const float *restrict t = centres + c * cstride;
            float *restrict ac = a + c * astride;
#pragma omp simd
            for (long i = 0; i < n; i++) ac[i] += e[i] * t[i];
        }
        return;
    }
    if (lane_weight) {
#pragma omp simd
        for (long i = 0; i < n; i++) {
            int gi = dist[i] < m[i] && lane_weight[i] > 0.0f;
            float ei = lane_weight[i] * exp_nonpositive(-fabsf(m[i] - dist[i]) * k);
            e[i] = ei;
            g[i] = gi;
            s[i] = gi ? s[i] * ei + 1.0f : s[i] + ei;
            m[i] = gi ? dist[i] : m[i];
        }
    } else {
#pragma omp simd
        for (long i = 0; i < n; i++) {
            int gi = dist[i] < m[i];
            float ei = exp_nonpositive(-fabsf(m[i] - dist[i]) * k);
            e[i] = ei;
            g[i] = gi;
            s[i] = gi ? s[i] * ei + 1.0f : s[i] + ei;
            m[i] = gi ? dist[i] : m[i];
        }
    }
    for (int c = 0; c < C; c++) {
        const float *restrict t = centres + c * cstride;
        float *restrict ac = a + c * astride;
#pragma omp simd
        for (long i = 0; i < n; i++) ac[i] = g[i] ? ac[i] * e[i] + t[i] : ac[i] + e[i] * t[i];
    }
}

/* The candidates' centre pixels of output row y, columns x0 .. x0 + wx - 1: a pointer into the training block when
   their columns are consecutive, else gathered into w.centres. Returns the channel stride through *cstride. */
static const float *centre_row(const float *x, int C, int H, int W, int tr, const int *cols, int wx, RowScratch w,
                               long *cstride) {
    int consecutive = 1;
    for (int xx = 1; xx < wx; xx++) consecutive &= cols[xx] == cols[0] + xx;
    if (consecutive) {
        *cstride = (long)H * W * LANES;
        return x + ((long)tr * W + cols[0]) * LANES;
    }
    *cstride = (long)W * LANES;
    for (int c = 0; c < C; c++)
        for (int xx = 0; xx < wx; xx++)
            memcpy(w.centres + (long)c * W * LANES + (long)xx * LANES, x + (((long)c * H + tr) * W + cols[xx]) * LANES,
                   sizeof(float) * LANES);
    return w.centres;
}

/* Fold output row y (columns x0 .. x0 + wx - 1) of one offset pair, given its window distances dist [wx][LANES]. */
static void fold_output_row(const float *dist, const float *x, int C, int H, int W, int r, int y, int x0, int wx,
                            const int *row_map, const int *col_map, const float *lane_weight, float k, LaneState t,
                            RowScratch w) {
    long p = (long)y * W + x0, cstride;
    const float *centres = centre_row(x, C, H, W, row_map[y + r], col_map + x0 + r, wx, w, &cstride);
    fold_row(dist, lane_weight, k, (long)wx * LANES, C, centres, cstride, t.m + p * LANES, t.s + p * LANES,
             t.a + p * LANES, (long)H * W * LANES, w);
}

/* Share `part` of `parts` of the training blocks. Axis offsets: output rows y0 = dy_first[i] .. dy_last[i] take the
   training rows dy_source[i][u] (u: padded row, -1: zero) for offset i; likewise for columns. Outputs (float64):
   min_out (nearest distance), sum_out [parts][B][H][W] and num_out [parts][B][C][H][W]. */
void els_part(const float *z, const float *xt, int B, int C, int H, int W, int N, int s,
              int n_dy, const int *dy_first, const int *dy_last, const int *dy_source, const int *query_rows,
              int n_dx, const int *dx_first, const int *dx_last, const int *dx_source, const int *query_cols,
              const float *inv_two_var, double *min_out, double *sum_out, double *num_out, int part, int parts) {
    int r = s / 2, PH = H + 2 * r, PW = W + 2 * r, HW = H * W;
    int blocks = (N + LANES - 1) / LANES;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    long pairs = (long)n_dy * n_dx; /* candidates per lane and pixel in one block, at most */
    float *zpad = malloc(sizeof(float) * LANES * C * PH * PW);
    int *run_start = malloc(sizeof(int) * PW), *run_length = malloc(sizeof(int) * PW);
    int *run_source = malloc(sizeof(int) * PW);
    float *e = malloc(sizeof(float) * LANES * PH * PW), *rows = malloc(sizeof(float) * LANES * PH * W);
    float *dist = malloc(sizeof(float) * LANES * HW);
    float *suffix = malloc(sizeof(float) * LANES * (PH * W > PW ? PH * W : PW));
    float *head = malloc(sizeof(float) * LANES * W);
    LaneState t = {malloc(sizeof(float) * LANES * HW), malloc(sizeof(float) * LANES * HW),
                   malloc(sizeof(float) * LANES * HW * C)};
    RowScratch w = {malloc(sizeof(float) * LANES * W), malloc(sizeof(float) * LANES * W * C),
                    malloc(sizeof(int) * LANES * W)};
    float *lane_weights = malloc(sizeof(float) * LANES * W);
    for (int b = 0; b < B; b++) {
        double *dmin = min_out + ((long)part * B + b) * HW, *dsum = sum_out + ((long)part * B + b) * HW;
        double *dnum = num_out + ((long)part * B + b) * C * HW;
        for (int p = 0; p < HW; p++) { dmin[p] = INFINITY; dsum[p] = 0.0; }
        memset(dnum, 0, sizeof(double) * C * HW);
        pad_query(z + (long)b * C * HW, C, H, W, PH, PW, query_rows, query_cols, zpad);
        lane_state_reset(t, HW, C);
        long since_fold = 0;
        for (long block = first; block < last; block++) {
            int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
            for (long i = 0; i < (long)W * LANES; i++) lane_weights[i] = i % LANES < valid ? 1.0f : 0.0f;
            const float *lane_weight = valid < LANES ? lane_weights : NULL;
            const float *x = xt + block * C * HW * LANES;
            if (since_fold + pairs > FOLD_TERMS && since_fold > 0) {
                fold_lanes(t, HW, C, inv_two_var[b], dmin, dsum, dnum);
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
                    int n_runs = column_runs(col_map, x0, ew, run_start, run_length, run_source);
                    long row_values = (long)wx * LANES;
                    for (int uu = 0; uu < eh; uu++) {
                        /* squared differences of padded row y0 + uu, then its window sums along the row; with plain
                           sums, rows is a ring of the last s rows and each output row is folded as soon as its s
                           rows are in (all in L1), else the van Herk column pass runs over whole columns below */
                        int slot = s <= DIRECT_SUMS_UP_TO ? uu % s : uu;
                        offset_differences(zpad, x, C, H, W, PH, PW, y0 + uu, x0, 1, ew, row_map, n_runs, run_start,
                                           run_length, run_source, e);
                        window_sums(e, rows + slot * row_values, wx, s, LANES, suffix, head);
                        if (s <= DIRECT_SUMS_UP_TO && uu >= s - 1) {
                            const float *terms[DIRECT_SUMS_UP_TO];
                            for (int k = 0; k < s; k++) terms[k] = rows + k * row_values;
                            add_terms(terms, s, dist, row_values);
                            fold_output_row(dist, x, C, H, W, r, y0 + uu - (s - 1), x0, wx, row_map, col_map,
                                            lane_weight, inv_two_var[b], t, w);
                        }
                    }
                    if (s > DIRECT_SUMS_UP_TO) {
                        window_sums(rows, dist, hy, s, row_values, suffix, head);
                        for (int yy = 0; yy < hy; yy++)
                            fold_output_row(dist + yy * row_values, x, C, H, W, r, y0 + yy, x0, wx, row_map, col_map,
                                            lane_weight, inv_two_var[b], t, w);
                    }
                }
            }
        }
        fold_lanes(t, HW, C, inv_two_var[b], dmin, dsum, dnum);
    }
    free(run_start); free(run_length); free(run_source);
    free(zpad); free(e); free(rows); free(dist); free(suffix); free(head); free(t.m); free(t.s); free(t.a);
    free(w.e); free(w.centres); free(w.g); free(lane_weights);
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
        raise DenoiserLabError(f"the ELS kernel takes at most {MAX_CHANNELS} channels (use kernel='eager'), "
                               f"got {queries.shape[1]}")
    parts = n_parts(lanes.shape[0], threads)
    batch, channels, height, width = queries.shape
    nearest = torch.empty(parts, batch, height, width, dtype=torch.float64)
    sums = torch.empty_like(nearest)
    numerators = torch.empty(parts, batch, channels, height, width, dtype=torch.float64)
    queries = queries.float().contiguous()
    # capped at the float32 maximum: a tiny sigma then still gives the nearest candidates, never 0 * inf
    inv_two_var = (1.0 / (2.0 * sigma.double() ** 2)).clamp(max=torch.finfo(torch.float32).max).float().contiguous()
    arguments = [_pointer(queries), _pointer(lanes), *[ctypes.c_int(v) for v in (batch, channels, height, width)],
                 ctypes.c_int(n_train), ctypes.c_int(size), *_axis_arguments(*rows), *_axis_arguments(*cols),
                 _pointer(inv_two_var), _pointer(nearest), _pointer(sums), _pointer(numerators)]
    run_parts(load_library().els_part, arguments, parts, threads)
    k = inv_two_var.double()[None, :, None, None]
    scale = torch.exp(-(nearest - nearest.amin(0)) * k)  # [parts, B, H, W], 1 for the part with the nearest
    return (numerators * scale[:, :, None]).sum(0) / (sums * scale).sum(0)[:, None]
