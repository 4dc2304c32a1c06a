/* The local score machines' kernel (ELS and LS; see denoisers/els_kernel.py for the method, the layout and the Python
   side, which declares the ctypes signature of els_part). Float32 work, float64 sums; every allocation is checked
   and a failure is reported as -1, never dereferenced.

   Training images lie 16 side by side (one per SIMD lane). For each training block, query and pair of axis offsets
   (dy, dx) the kernel
     1. forms the per-pixel squared differences e[u][v] = sum_c (q[c][u][v] - x[c][u + dy][v + dx])^2 of every padded
        row the outputs' windows cover and, in the same pass, their window sums along the row (`pair_window_sums`),
     2. sums P of those rows for each output row (plain sums of non-negative terms for P <= 5, van Herk blocks for
        larger P: O(1) per window for any P, no cancellation), and
     3. folds each output pixel's candidate into its running softmax, one exp per (pixel, candidate), a whole output
        row per flat loop (`pair_fold`).
   The exps bound the speed: a candidate costs about 20 vector operations for 16 lanes, 11 of them the exp.
   The block is first copied once, for all queries, into a layout read through the padding (`Block`): every window
   row and every output row's centre pixels are then runs of consecutive columns, with no index maps, gathers or
   branches in the inner loops, and the lanes past the end of the training set hold a sentinel whose windows are at
   distance +inf (weight exactly 0 at any sigma).

   Softmax state, per query, pixel and lane: a reference distance m, s = sum 2^((m - d) kl) and a[c] = the same sum
   of weights times the candidate's centre pixel in channel c, with kl = log2(e) / (2 sigma^2). Weights relative to a
   distance near the nearest one, not to the largest logit -d k, stay right at any sigma: -d k may overflow at a tiny
   sigma, (m - d) kl only for candidates whose weight is 0 anyway. m is the nearest distance seen, or a little above
   it: a row takes one of two paths.
     fast: when every reference m of the output row is known and below 100 / kl (so that no weight can exceed
       2^100), step 2 and the fold are one loop, and the few references that a candidate outweighs by more than
       2^REBASE_ABOVE are moved to it afterwards (`rebase_row`): a weight is then off by at most 8 roundings of its
       exponent, ~5e-7, less than the float32 rounding of the distances themselves;
     checked: otherwise the row's distances are first compared with the references; a row whose weights are all 0
       in float32 is skipped (most rows at a small sigma), a row without a nearer candidate takes plain sums, and the
       others the online update that keeps m the nearest distance.
   Float32 lanes are folded into float64 sums every FOLD_TERMS candidates per lane, and the shares of the training
   set are merged in float64. */
#include "common.h"

#define FOLD_TERMS 1024     /* candidates per lane summed in float32 before they are folded into the float64 sums */
#define DIRECT_SUMS_UP_TO 5 /* window sums of up to this many terms are plain sums, longer ones van Herk blocks */
#define SENTINEL 1e30f      /* pixel value of the lanes past the end of the training set: (q - SENTINEL)^2 is +inf */
#define FAST_BELOW 100.0f   /* a row takes the fast path when every m kl is at most this: weights stay below 2^100 */
#define REBASE_ABOVE 8.0f   /* the fast path moves a reference m to a candidate that weighs over 2^8 relative to it */
#if defined(__GNUC__) || defined(__clang__)
#define SPECIALISED static inline __attribute__((always_inline)) /* inlined where called with constant arguments */
#define ROW_LEVEL static __attribute__((noinline)) /* whole rows per call: kept apart, with registers of its own */
#else
#define SPECIALISED static inline
#define ROW_LEVEL static
#endif

/* The sum of exp2_bounded over t [n], repeats times: the fold's exp alone, whose rate gives benchmarks/bench_peers.py
   the floor of one exp per candidate. */
double els_exp2_sum(const float *t, long n, int repeats) {
    double total = 0.0;
    for (int k = 0; k < repeats; k++) {
        float partial = 0.0f;
#pragma omp simd reduction(+ : partial)
        for (long i = 0; i < n; i++) partial += exp2_bounded(t[i]);
        total += partial;
    }
    return total;
}

/* Running float32 softmax state of one query: m and s [HW][LANES], a [C][HW][LANES] (an image row of any of them is
   contiguous), and the largest m of each image row, row_max [H] (an upper bound: m only decreases between updates). */
typedef struct { float *m, *s, *a, *row_max; } LaneState;

static void lane_state_reset(LaneState t, int H, int W, int C) {
    for (long i = 0; i < (long)H * W * LANES; i++) { t.m[i] = FLT_MAX; t.s[i] = 0.0f; }
    memset(t.a, 0, sizeof(float) * (long)H * W * C * LANES);
    for (int y = 0; y < H; y++) t.row_max[y] = FLT_MAX;
}

/* The largest of n values. */
static float largest(const float *restrict values, long n) {
    float most = -INFINITY;
#pragma omp simd reduction(max : most)
    for (long i = 0; i < n; i++) most = values[i] > most ? values[i] : most;
    return most;
}

/* Merge the 16 lanes of every pixel into the float64 running sums dsum [HW] and dnum [C][HW], relative to dmin, the
   smallest reference so far (+inf before the first candidate); then empty the lane sums but keep each lane's m:
   later candidates are summed relative to it, so it settles after the first blocks and rows take the fast path.
   k = 1 / (2 sigma^2); num [C]: scratch. */
static void fold_lanes(LaneState t, int HW, int C, double k, double *dmin, double *dsum, double *dnum, double *num) {
    for (int p = 0; p < HW; p++) {
        const float *m = t.m + (long)p * LANES, *s = t.s + (long)p * LANES, *a = t.a + (long)p * LANES;
        float nearest = FLT_MAX;
        for (int l = 0; l < LANES; l++) nearest = m[l] < nearest ? m[l] : nearest;
        if (nearest == FLT_MAX) continue; /* no candidate yet */
        double sum = 0.0;
        for (int c = 0; c < C; c++) num[c] = 0.0;
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
    memset(t.s, 0, sizeof(float) * (long)HW * LANES);
    memset(t.a, 0, sizeof(float) * (long)HW * C * LANES);
}

/* Image coordinate read at coordinate t (any integer) of an axis of length L: t mod L when circular, else t inside
   the image and -1 (zero padding) outside. */
static int axis_source(int t, int L, int circular) {
    if (circular) return ((t % L) + L) % L;
    return t >= 0 && t < L ? t : -1;
}

/* One training block read through the padding: data [C][H + 1][width][LANES], where row H is zero and column
   col holds image column col + first (axis_source: wrapped, or zero outside the image). Lanes past the end of the
   training set hold SENTINEL inside the image. rows [3H + 2r]: the row that image row t reads, for t from -H - r
   (wrapped, or the zero row), so that no division is left in the loops. */
typedef struct {
    float *data;
    const float **rows;
    int width, first, row_origin;
    long row_stride, channel_stride;
} Block;

static void block_fill(const float *x, int valid, int C, int H, int W, int circular, Block b) {
    for (int c = 0; c < C; c++) {
        for (int y = 0; y < H; y++) {
            float *row = b.data + c * b.channel_stride + y * b.row_stride;
            for (int col = 0; col < b.width; col++) {
                int source = axis_source(col + b.first, W, circular);
                float *out = row + (long)col * LANES;
                if (source < 0) {
                    memset(out, 0, sizeof(float) * LANES);
                    continue;
                }
                memcpy(out, x + (((long)c * H + y) * W + source) * LANES, sizeof(float) * LANES);
                for (int l = valid; l < LANES; l++) out[l] = SENTINEL;
            }
        }
        memset(b.data + c * b.channel_stride + H * b.row_stride, 0, sizeof(float) * b.row_stride);
    }
}

/* b.rows[t + b.row_origin] = the block's row that image row t reads (axis_source, with the zero row H for padding),
   for t in [-H - r, 2 H + r) (row_origin = H + r): every row a window or a centre reads. */
static void block_row_table(Block b, int H, int circular) {
    for (int t = -b.row_origin; t < H + b.row_origin; t++) {
        int source = axis_source(t, H, circular);
        b.rows[t + b.row_origin] = b.data + (long)(source < 0 ? H : source) * b.row_stride;
    }
}

/* The block's row that image row t reads (|t| within the table). */
static inline const float *block_row(Block b, int t) { return b.rows[t + b.row_origin]; }

/* diff[l] = sum_c (zrow[c][v] - xrow[c][v][l])^2: one padded pixel of the query (plain floats, channel stride
   zstride) against the 16 training images (channel stride xstride). */
SPECIALISED void pixel_differences(const float *zrow, long zstride, const float *xrow, long xstride, int C, int v,
                                   float *restrict diff) {
    const float zv = zrow[v], *restrict xv = xrow + (long)v * LANES;
#pragma omp simd
    for (int l = 0; l < LANES; l++) { float d = zv - xv[l]; diff[l] = d * d; }
    for (int c = 1; c < C; c++) {
        const float zc = zrow[c * zstride + v], *restrict xc = xrow + c * xstride + (long)v * LANES;
#pragma omp simd
        for (int l = 0; l < LANES; l++) { float d = zc - xc[l]; diff[l] += d * d; }
    }
}

/* out[x][l] = e[x][l] + ... + e[x + s - 1][l] for x < n_out, where e[v] = pixel_differences at v: the squared
   differences and their window sums along the row in one pass, the last s - 1 differences kept in registers
   (s = 1, 3 or 5). */
SPECIALISED void row_window_sums_channels(const float *zrow, long zstride, const float *xrow, long xstride, int C,
                                          int s, int n_out, float *restrict out) {
    float e0[LANES], e1[LANES], e2[LANES], e3[LANES], en[LANES];
    if (s == 1) {
        for (int v = 0; v < n_out; v++) pixel_differences(zrow, zstride, xrow, xstride, C, v, out + (long)v * LANES);
    } else if (s == 3) {
        pixel_differences(zrow, zstride, xrow, xstride, C, 0, e0);
        pixel_differences(zrow, zstride, xrow, xstride, C, 1, e1);
        for (int v = 0; v < n_out; v++) {
            pixel_differences(zrow, zstride, xrow, xstride, C, v + 2, en);
            float *restrict o = out + (long)v * LANES;
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                o[l] = e0[l] + e1[l] + en[l];
                e0[l] = e1[l];
                e1[l] = en[l];
            }
        }
    } else {
        pixel_differences(zrow, zstride, xrow, xstride, C, 0, e0);
        pixel_differences(zrow, zstride, xrow, xstride, C, 1, e1);
        pixel_differences(zrow, zstride, xrow, xstride, C, 2, e2);
        pixel_differences(zrow, zstride, xrow, xstride, C, 3, e3);
        for (int v = 0; v < n_out; v++) {
            pixel_differences(zrow, zstride, xrow, xstride, C, v + 4, en);
            float *restrict o = out + (long)v * LANES;
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                o[l] = (e0[l] + e1[l]) + (e2[l] + e3[l]) + en[l];
                e0[l] = e1[l];
                e1[l] = e2[l];
                e2[l] = e3[l];
                e3[l] = en[l];
            }
        }
    }
}

/* row_window_sums_channels for n_rows padded rows: query rows zrow + row * zrow_stride, block rows xrows[row] +
   column; out [n_rows][n_out][LANES]. */
ROW_LEVEL void pair_window_sums(const float *zrow, long zrow_stride, long zstride, const float *const *xrows,
                                long column, long xstride, int C, int s, int n_rows, int n_out, float *restrict out) {
    for (int row = 0; row < n_rows; row++) {
        const float *zr = zrow + row * zrow_stride, *xr = xrows[row] + column;
        float *o = out + (long)row * n_out * LANES;
        if (C == 1) /* the common case, with the differences in registers */
            row_window_sums_channels(zr, zstride, xr, xstride, 1, s, n_out, o);
        else
            row_window_sums_channels(zr, zstride, xr, xstride, C, s, n_out, o);
    }
}

/* e[v] = pixel_differences at v for v < n: the squared differences of a padded row (for van Herk sums). */
static void row_differences(const float *zrow, long zstride, const float *xrow, long xstride, int C, int n,
                            float *restrict e) {
    for (int v = 0; v < n; v++) pixel_differences(zrow, zstride, xrow, xstride, C, v, e + (long)v * LANES);
}

/* The distances of one output row: the sum of its n_terms (1, 3 or 5) row window sums, or the column pass's row. */
typedef struct { const float *term[DIRECT_SUMS_UP_TO]; int n_terms; } RowTerms;

SPECIALISED float row_distance(RowTerms d, int n_terms, long i) {
    if (n_terms == 1) return d.term[0][i];
    if (n_terms == 3) return d.term[0][i] + d.term[1][i] + d.term[2][i];
    return (d.term[0][i] + d.term[1][i]) + (d.term[2][i] + d.term[3][i]) + d.term[4][i];
}

/* The candidates of one output row and the state they are folded into: n = (row length) * LANES values, flat so
   that the exps of neighbouring pixels pipeline; centres [C][n] (channel stride cstride); m, s [n] and a [C][n]
   (channel stride astride) of the row; e and g [n]: scratch. */
typedef struct {
    long n, cstride, astride;
    int C;
    const float *centres;
    float *m, *s, *a, *e;
    int *g;
} RowFold;

/* Fast path: every m kl of the row is at most FAST_BELOW, so weights stay below 2^FAST_BELOW and no reference needs
   moving before the sums. Sums the row's window distances (n_terms = d.n_terms) and folds them in one loop; returns
   the largest exponent (m - d) kl of the row. */
SPECIALISED float fold_row_fast_terms(RowTerms d, int n_terms, float kl, RowFold r) {
    float most = -INFINITY;
    const float *restrict centres = r.centres, *restrict m = r.m;
    float *restrict s = r.s, *restrict a = r.a, *restrict e = r.e;
    if (r.C == 1) {
#pragma omp simd reduction(max : most)
        for (long i = 0; i < r.n; i++) {
            float t = (m[i] - row_distance(d, n_terms, i)) * kl, ei = exp2_bounded(t);
            most = t > most ? t : most;
            s[i] += ei;
            a[i] += ei * centres[i];
        }
        return most;
    }
#pragma omp simd reduction(max : most)
    for (long i = 0; i < r.n; i++) {
        float t = (m[i] - row_distance(d, n_terms, i)) * kl, ei = exp2_bounded(t);
        most = t > most ? t : most;
        e[i] = ei;
        s[i] += ei;
    }
    for (int c = 0; c < r.C; c++) {
        const float *restrict t = centres + c * r.cstride;
        float *restrict ac = a + c * r.astride;
#pragma omp simd
        for (long i = 0; i < r.n; i++) ac[i] += e[i] * t[i];
    }
    return most;
}

static float fold_row_fast(RowTerms d, float kl, RowFold r) {
    if (d.n_terms == 1) return fold_row_fast_terms(d, 1, kl, r);
    if (d.n_terms == 3) return fold_row_fast_terms(d, 3, kl, r);
    return fold_row_fast_terms(d, 5, kl, r);
}

/* After the fast path: move the reference m of every value whose candidate weighs more than 2^REBASE_ABOVE relative
   to it onto that candidate, m = d, rescaling its sums by 2^-((m - d) kl) (the candidate then weighs 1). */
static void rebase_row(RowTerms d, float kl, RowFold r) {
    float *restrict m = r.m, *restrict s = r.s, *restrict e = r.e;
#pragma omp simd
    for (long i = 0; i < r.n; i++) {
        float di = row_distance(d, d.n_terms, i), t = (m[i] - di) * kl;
        int moved = t > REBASE_ABOVE;
        float scale = moved ? exp2_bounded(-t) : 1.0f;
        e[i] = scale;
        s[i] *= scale;
        m[i] = moved ? di : m[i];
    }
    for (int c = 0; c < r.C; c++) {
        float *restrict ac = r.a + c * r.astride;
#pragma omp simd
        for (long i = 0; i < r.n; i++) ac[i] *= e[i];
    }
}

/* dist[i] = the row's window distance (n_terms = d.n_terms) and the largest m[i] - dist[i]: > 0 where a candidate
   is nearer than its lane's m. */
SPECIALISED float row_distances_and_closest_terms(RowTerms d, int n_terms, const float *restrict m,
                                                  float *restrict dist, long n) {
    float closest = -INFINITY;
#pragma omp simd reduction(max : closest)
    for (long i = 0; i < n; i++) {
        float di = row_distance(d, n_terms, i);
        dist[i] = di;
        closest = m[i] - di > closest ? m[i] - di : closest;
    }
    return closest;
}

static float row_distances_and_closest(RowTerms d, const float *m, float *dist, long n) {
    if (d.n_terms == 3) return row_distances_and_closest_terms(d, 3, m, dist, n);
    return row_distances_and_closest_terms(d, 5, m, dist, n);
}

/* The largest m[i] - dist[i] over i < n. */
static float largest_gap(const float *restrict m, const float *restrict dist, long n) {
    float closest = -INFINITY;
#pragma omp simd reduction(max : closest)
    for (long i = 0; i < n; i++) closest = m[i] - dist[i] > closest ? m[i] - dist[i] : closest;
    return closest;
}

/* Checked path, given the row's distances dist and closest = the largest m - dist. With no distance below its
   lane's m, the weights 2^((m - d) kl) go into plain sums; otherwise the online update with one exp per value
   (e = 2^(-|d - m| kl), sums rescaled where m shrinks). A row whose weights are all 0 in float32 is skipped. Returns
   whether a reference moved. */
static int fold_row_checked(const float *restrict dist, float closest, float kl, RowFold r) {
    const float *restrict centres = r.centres;
    float *restrict m = r.m, *restrict s = r.s, *restrict a = r.a, *restrict e = r.e;
    int *restrict g = r.g;
    if (closest <= 0.0f && closest * kl < -127.0f) return 0; /* every weight is 0 in float32 */
    if (closest <= 0.0f) {
#pragma omp simd
        for (long i = 0; i < r.n; i++) {
            float ei = exp2_bounded((m[i] - dist[i]) * kl);
            e[i] = ei;
            s[i] += ei;
            a[i] += ei * centres[i];
        }
        for (int c = 1; c < r.C; c++) {
            const float *restrict t = centres + c * r.cstride;
            float *restrict ac = a + c * r.astride;
#pragma omp simd
            for (long i = 0; i < r.n; i++) ac[i] += e[i] * t[i];
        }
        return 0;
    }
#pragma omp simd
    for (long i = 0; i < r.n; i++) {
        int gi = dist[i] < m[i];
        float ei = exp2_bounded(-fabsf(m[i] - dist[i]) * kl);
        e[i] = ei;
        g[i] = gi;
        s[i] = gi ? s[i] * ei + 1.0f : s[i] + ei;
        m[i] = gi ? dist[i] : m[i];
    }
    for (int c = 0; c < r.C; c++) {
        const float *restrict t = centres + c * r.cstride;
        float *restrict ac = a + c * r.astride;
#pragma omp simd
        for (long i = 0; i < r.n; i++) ac[i] = g[i] ? ac[i] * e[i] + t[i] : ac[i] + e[i] * t[i];
    }
    return 1;
}

/* Fold one output row y (r's columns) into the state t: the fast path when the row's references allow it, else the
   checked one; keeps t.row_max[y] an upper bound of the row's m. dist [n]: scratch for the row's distances. */
SPECIALISED void fold_output_row(RowTerms d, float kl, RowFold r, LaneState t, int y, int W, float *dist) {
    int moved;
    if (t.row_max[y] < FLT_MAX && t.row_max[y] * kl <= FAST_BELOW) { /* FLT_MAX: a lane without candidates */
        moved = fold_row_fast(d, kl, r) > REBASE_ABOVE;
        if (moved) rebase_row(d, kl, r);
    } else if (d.n_terms == 1) {
        moved = fold_row_checked(d.term[0], largest_gap(r.m, d.term[0], r.n), kl, r);
    } else {
        moved = fold_row_checked(dist, row_distances_and_closest(d, r.m, dist, r.n), kl, r);
    }
    if (moved) t.row_max[y] = largest(t.m + (long)y * W * LANES, (long)W * LANES);
}

/* Working memory of one share, allocated once: the block, the padded queries, the lane states of all queries and
   the row buffers. */
typedef struct {
    Block block;
    float *zpad;          /* [B][C][PH][PW]: the queries read through the padding */
    LaneState *states;    /* [B] */
    float *e;             /* [PW][LANES]: squared differences of one padded row (van Herk) */
    float *rows;          /* [PH][W][LANES]: the window sums along every padded row of a pair */
    float *dist;          /* [H][W][LANES]: window distances after the van Herk column pass */
    float *suffix; /* van Herk scratch */
    float *weights;       /* [W][LANES] */
    int *nearer;          /* [W][LANES] */
    float *row_dist;      /* [W][LANES]: one output row's window distances (checked path) */
    double *num;          /* [C]: fold_lanes scratch */
} Work;

static void work_free(Work w, int B) {
    if (w.states)
        for (int b = 0; b < B; b++) {
            free(w.states[b].m); free(w.states[b].s); free(w.states[b].a); free(w.states[b].row_max);
        }
    free(w.states); free(w.block.data); free(w.block.rows); free(w.zpad); free(w.e); free(w.rows); free(w.dist);
    free(w.suffix); free(w.weights); free(w.nearer); free(w.row_dist); free(w.num);
}

static int work_alloc(Work *w, int B, int C, int H, int W, int s, int block_width) {
    int r = s / 2, PH = H + 2 * r, PW = W + 2 * r, HW = H * W;
    long longest = (long)LANES * (PH * W > PW ? PH * W : PW);
    memset(w, 0, sizeof(Work));
    w->block.width = block_width;
    w->block.row_stride = (long)block_width * LANES;
    w->block.channel_stride = (long)(H + 1) * w->block.row_stride;
    w->block.data = malloc(sizeof(float) * C * w->block.channel_stride);
    w->block.row_origin = H + r;
    w->block.rows = malloc(sizeof(float *) * (3 * H + 2 * r));
    w->zpad = malloc(sizeof(float) * B * C * PH * PW);
    w->states = calloc(B, sizeof(LaneState));
    w->e = malloc(sizeof(float) * LANES * PW);
    w->rows = malloc(sizeof(float) * LANES * PH * W);
    w->dist = malloc(sizeof(float) * LANES * HW);
    w->suffix = malloc(sizeof(float) * longest);
    w->weights = malloc(sizeof(float) * LANES * W);
    w->nearer = malloc(sizeof(int) * LANES * W);
    w->row_dist = malloc(sizeof(float) * LANES * W);
    w->num = malloc(sizeof(double) * C);
    int ok = w->block.data && w->block.rows && w->zpad && w->states && w->e && w->rows && w->dist && w->suffix &&
             w->weights && w->nearer && w->row_dist && w->num;
    for (int b = 0; ok && b < B; b++) {
        LaneState *t = w->states + b;
        t->m = malloc(sizeof(float) * LANES * HW);
        t->s = malloc(sizeof(float) * LANES * HW);
        t->a = malloc(sizeof(float) * LANES * HW * C);
        t->row_max = malloc(sizeof(float) * H);
        ok = t->m && t->s && t->a && t->row_max;
    }
    return ok;
}

/* zpad [C][PH][PW] = the query z [C][H][W] read through the padding (wrapped, or zero). */
static void pad_query(const float *z, int C, int H, int W, int r, int circular, float *zpad) {
    int PH = H + 2 * r, PW = W + 2 * r;
    for (int c = 0; c < C; c++)
        for (int u = 0; u < PH; u++)
            for (int v = 0; v < PW; v++) {
                int y = axis_source(u - r, H, circular), x = axis_source(v - r, W, circular);
                zpad[((long)c * PH + u) * PW + v] = (y < 0 || x < 0) ? 0.0f : z[((long)c * H + y) * W + x];
            }
}

/* The axis offsets of one pair and the outputs that take it: rows y0 .. y0 + hy - 1, columns x0 .. x0 + wx - 1. */
typedef struct { int dy, dx, y0, hy, x0, wx; } Pair;

/* The fold of output row y of pair p: its centre pixels in the block and its state. */
static RowFold row_fold(Pair p, int y, const Work *w, LaneState t, int C, int H, int W) {
    long at = ((long)y * W + p.x0) * LANES;
    long centre_column = (long)(p.x0 + p.dx - w->block.first) * LANES;
    RowFold f = {(long)p.wx * LANES, w->block.channel_stride, (long)H * W * LANES, C,
                 block_row(w->block, y + p.dy) + centre_column, t.m + at, t.s + at, t.a + at, w->weights, w->nearer};
    return f;
}

/* Fold the output rows of pair p into the lane state t, given the window sums of its rows: sums [rows][wx][LANES],
   output row y0 + yy summing rows yy .. yy + n_terms - 1 (n_terms = s with plain sums, 1 after the van Herk pass). */
ROW_LEVEL void pair_fold(const float *sums, int n_terms, Pair p, float kl, int C, int H, int W, Work *w,
                         LaneState t) {
    long row_values = (long)p.wx * LANES;
    for (int yy = 0; yy < p.hy; yy++) {
        RowTerms d = {{0}, n_terms};
        for (int k = 0; k < n_terms; k++) d.term[k] = sums + (yy + k) * row_values;
        int y = p.y0 + yy;
        fold_output_row(d, kl, row_fold(p, y, w, t, C, H, W), t, y, W, w->row_dist);
    }
}

/* Fold the candidates of one pair (one training block, one query) into the query's lane state: the window sums
   along every padded row the outputs' windows cover (plain sums for s <= DIRECT_SUMS_UP_TO; else van Herk blocks
   along the rows, then down the columns), then the output rows. */
static void fold_pair(Pair p, const float *zpad, Work *w, LaneState t, float kl, int C, int H, int W, int s) {
    int r = s / 2, PH = H + 2 * r, PW = W + 2 * r, eh = p.hy + 2 * r, ew = p.wx + 2 * r;
    long row_values = (long)p.wx * LANES, zstride = (long)PH * PW;
    Block b = w->block;
    long first_column = (long)(p.x0 - r + p.dx - b.first) * LANES; /* block column of padded column x0 */
    const float *const *xrows = b.rows + (p.y0 - r + p.dy + b.row_origin); /* block rows of padded rows y0 .. */
    const float *zrow = zpad + (long)p.y0 * PW + p.x0;
    if (s <= DIRECT_SUMS_UP_TO) {
        pair_window_sums(zrow, PW, zstride, xrows, first_column, b.channel_stride, C, s, eh, p.wx, w->rows);
        pair_fold(w->rows, s, p, kl, C, H, W, w, t);
        return;
    }
    for (int uu = 0; uu < eh; uu++) {
        row_differences(zrow + (long)uu * PW, zstride, xrows[uu] + first_column, b.channel_stride, C, ew, w->e);
        box_line(w->e, w->rows + uu * row_values, ew, s, LANES, w->suffix);
    }
    box_line(w->rows, w->dist, eh, s, row_values, w->suffix);
    pair_fold(w->dist, 1, p, kl, C, H, W, w, t);
}

/* Share `part` of `parts` of the training blocks. z: queries [B][C][H][W]; xt: training lanes [blocks][C][H][W][16]
   of N images; s: odd window side; circular: wrap around (else zero padding). Axis offsets: output rows
   dy_first[i] .. dy_last[i] take the candidate rows y + dy_offset[i], likewise for columns (|offset| < the axis
   length). inv_two_var [B]: 1 / (2 sigma^2), at most FLT_MAX. Outputs (float64): min_out (nearest distance),
   sum_out [parts][B][H][W] and num_out [parts][B][C][H][W]. Returns 0, or -1 if working memory could not be
   allocated. */
int els_part(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int circular,
             int n_dy, const int *dy_offset, const int *dy_first, const int *dy_last,
             int n_dx, const int *dx_offset, const int *dx_first, const int *dx_last,
             const float *inv_two_var, double *min_out, double *sum_out, double *num_out, int part, int parts) {
    int r = s / 2, PH = H + 2 * r, PW = W + 2 * r, HW = H * W;
    int blocks = (N + LANES - 1) / LANES;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    long pairs = (long)n_dy * n_dx; /* candidates per lane and pixel in one block, at most */
    int low = 0, high = 0;          /* the range of dx offsets */
    for (int j = 0; j < n_dx; j++) {
        low = dx_offset[j] < low ? dx_offset[j] : low;
        high = dx_offset[j] > high ? dx_offset[j] : high;
    }
    Work w;
    if (!work_alloc(&w, B, C, H, W, s, high - low + PW)) {
        work_free(w, B);
        return -1;
    }
    w.block.first = low - r; /* image column of block column 0: padded column 0 at the smallest offset */
    for (int b = 0; b < B; b++) {
        double *dmin = min_out + ((long)part * B + b) * HW, *dsum = sum_out + ((long)part * B + b) * HW;
        for (int p = 0; p < HW; p++) { dmin[p] = INFINITY; dsum[p] = 0.0; }
        memset(num_out + ((long)part * B + b) * C * HW, 0, sizeof(double) * C * HW);
        pad_query(z + (long)b * C * HW, C, H, W, r, circular, w.zpad + (long)b * C * PH * PW);
        lane_state_reset(w.states[b], H, W, C);
    }
    long since_fold = 0;
    for (long block = first; block < last; block++) {
        int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
        block_fill(xt + block * C * HW * LANES, valid, C, H, W, circular, w.block);
        block_row_table(w.block, H, circular);
        if (since_fold + pairs > FOLD_TERMS && since_fold > 0) {
            for (int b = 0; b < B; b++)
                fold_lanes(w.states[b], HW, C, inv_two_var[b], min_out + ((long)part * B + b) * HW,
                           sum_out + ((long)part * B + b) * HW, num_out + ((long)part * B + b) * C * HW, w.num);
            since_fold = 0;
        }
        since_fold += pairs;
        for (int b = 0; b < B; b++) {
            /* kl > 0, so that a sentinel's distance +inf gives the exponent -inf (weight 0), never inf * 0 */
            float kl = (float)fmax(fmin((double)inv_two_var[b] * 1.4426950408889634, FLT_MAX), FLT_MIN);
            for (int i = 0; i < n_dy; i++)
                for (int j = 0; j < n_dx; j++) {
                    Pair p = {dy_offset[i], dx_offset[j], dy_first[i], dy_last[i] - dy_first[i] + 1, dx_first[j],
                              dx_last[j] - dx_first[j] + 1};
                    fold_pair(p, w.zpad + (long)b * C * PH * PW, &w, w.states[b], kl, C, H, W, s);
                }
        }
    }
    for (int b = 0; b < B; b++)
        fold_lanes(w.states[b], HW, C, inv_two_var[b], min_out + ((long)part * B + b) * HW,
                   sum_out + ((long)part * B + b) * HW, num_out + ((long)part * B + b) * C * HW, w.num);
    work_free(w, B);
    return 0;
}
