/* The PSPC-Square / PSPC-Flex kernel (see denoisers/pspc_kernel.py for the layout, the build and the Python side,
   which declares the ctypes signature of every function below). Float32 throughout, per-pixel differences (never
   |a|^2 - 2ab + |b|^2); every allocation is checked and a failure is reported as -1, never dereferenced.

   The softmax over training images runs in distance space: with D the crop distance |C z - C x_n|^2, m its smallest
   value over n and g = 1 / (2 sigma^2), a crop's weights are exp(-(D - m) g) / sum_n exp(-(D - m) g). Every exponent
   is <= 0 and the nearest crop's is exactly 0, so no sigma > 0 overflows: g capped at FLT_MAX gives the sigma -> 0
   limit (the nearest crop, or the mean of exactly tied ones), g = 0 the sigma -> inf limit (the mean crop). The exp
   is exp2_bounded(-(D - m) kl) with kl = log2(e) g, also capped at FLT_MAX (common.h). */
#include "common.h"
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

typedef struct { float *d, *rows, *crops, *suffix, *padded, *padded_rows; } Scratch;

/* Levels of the row-block table of listed crops: blocks of 1, 2, 4, ... pixels up to the image width. */
static int table_levels(int W) {
    int levels = 1;
    while ((2 << (levels - 1)) <= W) levels++;
    return levels;
}

/* d: the pixel differences, followed for listed crops by the other levels of their row-block table. */
static Scratch scratch_new(int H, int W, int s, int n_crops, int listed) {
    long longest = (H > W ? H : W) + 2L * s, most = (long)H * W > n_crops ? (long)H * W : n_crops;
    long padded_image = (long)(H + s) * W * LANES;
    Scratch t;
    t.d = malloc(sizeof(float) * LANES * H * W * (listed ? table_levels(W) : 1));
    t.rows = malloc(sizeof(float) * LANES * H * W);
    t.crops = malloc(sizeof(float) * LANES * most);
    t.suffix = malloc(sizeof(float) * padded_image);
    t.padded = malloc(sizeof(float) * LANES * longest);
    t.padded_rows = calloc(padded_image, sizeof(float)); /* rows s-1 .. s+P1-2 rewritten, the others stay 0 */
    return t;
}

/* Whether every buffer of a Scratch was allocated (free(NULL) is a no-op, so scratch_free works either way). */
static int scratch_ok(Scratch t) {
    return t.d && t.rows && t.crops && t.suffix && t.padded && t.padded_rows;
}

static void scratch_free(Scratch t) {
    free(t.d); free(t.rows); free(t.crops); free(t.suffix); free(t.padded); free(t.padded_rows);
}

/* The crops of a composite: all s x s squares (stride 1), or a list of crops, each counted counts[k] times, given
   as sums of row blocks: cell L * H * W + q of the row-block table is the 2^L pixels of an image row from pixel q on
   (pixel_squared_differences at L = 0; table_levels levels). Crop k is the cells entries[offsets[k]] ..
   entries[offsets[k + 1] - 1]; cell c is in the crops cell_crops[cell_offsets[c]] .. [cell_offsets[c + 1] - 1]
   (pspc_kernel.listed_crops builds both); entries and cell_crops are given times LANES, as float offsets. */
typedef struct {
    int listed, H, W, s, n_crops;
    const int *offsets, *entries, *cell_offsets, *cell_crops;
    const float *counts;
} Crops;

static Crops crops_make(int H, int W, int s, int n_crops, const int *offsets, const int *entries, const float *counts,
                        const int *cell_offsets, const int *cell_crops) {
    Crops crops = {offsets != NULL, H, W, s, offsets ? n_crops : (H - s + 1) * (W - s + 1), offsets, entries,
                   cell_offsets, cell_crops, counts};
    return crops;
}

/* Levels 1 and up of the row-block table whose level 0 (table[0 .. H * W)) is filled: cell (L, q) = (L - 1, q) +
   (L - 1, q + 2^(L - 1)) where the block fits in its row (the other cells are never read). */
static void fill_row_blocks(float *table, int H, int W) {
    long HW = (long)H * W;
    int levels = table_levels(W);
    for (int level = 1, half = 1; level < levels; level++, half *= 2) {
        float *cells = table + level * HW * LANES;
        const float *below = cells - HW * LANES;
        for (int y = 0; y < H; y++)
            for (int x = 0; x + 2 * half <= W; x++) {
                long q = (long)y * W + x;
                *(lane_vector *)(cells + q * LANES) = LANE_VECTOR(below + q * LANES) +
                                                      LANE_VECTOR(below + (q + half) * LANES);
            }
    }
}

/* The transpose of fill_row_blocks: add every cell of levels 1 and up into the two cells below it, from the top
   level down, so that level 0 holds per pixel the sum of all the cells covering it. */
static void spread_row_blocks(float *table, int H, int W) {
    long HW = (long)H * W;
    for (int level = table_levels(W) - 1; level >= 1; level--) {
        int half = 1 << (level - 1);
        const float *cells = table + level * HW * LANES;
        float *below = table + (level - 1) * HW * LANES;
        for (int y = 0; y < H; y++)
            for (int x = 0; x + 2 * half <= W; x++) {
                long q = (long)y * W + x;
                lane_vector cell = LANE_VECTOR(cells + q * LANES);
                *(lane_vector *)(below + q * LANES) = LANE_VECTOR(below + q * LANES) + cell;
                *(lane_vector *)(below + (q + half) * LANES) = LANE_VECTOR(below + (q + half) * LANES) + cell;
            }
    }
}

/* Distances |C z - C x|^2 of every crop for one block of training images: [n_crops][LANES] (lanes past the end of
   the training set hold the distances to zero padding, which callers skip). */
static void crop_distances(const float *z, const float *x, int C, Crops crops, Scratch t, float *distances) {
    int H = crops.H, W = crops.W, s = crops.s;
    pixel_squared_differences(z, x, C, H * W, t.d);
    if (crops.listed) {
        fill_row_blocks(t.d, H, W);
        for (int k = 0; k < crops.n_crops; k++) /* each sum in registers, stored once */
            *(lane_vector *)(distances + (long)k * LANES) =
                gathered_sum(t.d, crops.entries, crops.offsets[k], crops.offsets[k + 1]);
    } else {
        int P2 = W - s + 1;
        for (int h = 0; h < H; h++)
            box_line(t.d + (long)h * W * LANES, t.rows + (long)h * P2 * LANES, W, s, LANES, t.suffix);
        box_line(t.rows, distances, H, s, (long)P2 * LANES, t.suffix); /* whole rows at a time */
    }
}

/* Per pixel, the sum of the weights [n_crops][LANES] of the crops that contain it: out [H * W][LANES] (listed
   crops' weights already carry their counts: crop_weights). Listed crops: each cell of the row-block table gathers
   the weights of its crops (sums in registers, stored once), then spread_row_blocks brings them down to the pixels;
   out must then have room for the whole table. */
static void pixel_weights(const float *weights, Crops crops, Scratch t, float *out) {
    int H = crops.H, W = crops.W, s = crops.s;
    if (crops.listed) {
        long cells = (long)table_levels(W) * H * W;
        for (long c = 0; c < cells; c++)
            *(lane_vector *)(out + c * LANES) =
                gathered_sum(weights, crops.cell_crops, crops.cell_offsets[c], crops.cell_offsets[c + 1]);
        spread_row_blocks(out, H, W);
    } else {
        /* transposed window sums = window sums of the input zero-padded by s - 1 on every side */
        int P1 = H - s + 1, P2 = W - s + 1;
        memset(t.padded, 0, sizeof(float) * LANES * (P2 + 2 * (s - 1)));
        for (int p = 0; p < P1; p++) {
            memcpy(t.padded + (long)(s - 1) * LANES, weights + (long)p * P2 * LANES, sizeof(float) * LANES * P2);
            box_line(t.padded, t.padded_rows + (long)(p + s - 1) * W * LANES, P2 + 2 * (s - 1), s, LANES,
                     t.suffix);
        }
        box_line(t.padded_rows, out, P1 + 2 * (s - 1), s, (long)W * LANES, t.suffix);
    }
}

/* Pass 1's update of the running nearest distance m and sum of exp(-(D - m) g) of P crops [P][LANES] by one block's
   distances v [P][LANES], with one exp per element: e = exp(-|v - m| g), rescaling the sum when m shrinks. The full
   block's loop has no lane test, so it compiles to straight-line blends; the last, partial block skips lanes past
   the end of the training set. */
static void running_sums_full(const float *distances, float *run_min, float *run_sum, int P, float kl) {
    for (long i = 0; i < (long)P * LANES; i += LANES) {
        const float *v = distances + i;
        float *m = run_min + i, *sm = run_sum + i;
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            float e = exp2_bounded(-fabsf(v[l] - m[l]) * kl);
            int nearer = v[l] < m[l];
            sm[l] = nearer ? sm[l] * e + 1.0f : sm[l] + e;
            m[l] = nearer ? v[l] : m[l];
        }
    }
}

static void running_sums_partial(const float *distances, float *run_min, float *run_sum, int P, float kl,
                                 int valid) {
    for (long i = 0; i < (long)P * LANES; i += LANES)
        for (int l = 0; l < valid; l++) {
            float v = distances[i + l], *m = run_min + i + l, *sm = run_sum + i + l;
            float e = exp2_bounded(-fabsf(v - *m) * kl);
            *sm = v < *m ? *sm * e + 1.0f : *sm + e;
            *m = v < *m ? v : *m;
        }
}

/* Pass 1 on share `part` of `parts` of the training set: per query and crop, the smallest distance m and the sum of
   exp(-(D - m) g). min_out, sum_out: [B][n_crops][parts]; distances_out (or NULL): [blocks][B][n_crops][LANES], kept
   for pass 2. Squares of side s when offsets is NULL, else the listed crops. Returns 0, or -1 when memory ran out. */
int pspc_pass1(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int n_crops,
                const int *offsets, const int *entries, const float *counts, const int *cell_offsets,
                const int *cell_crops, const float *inv_two_var,
                float *min_out, float *sum_out, float *distances_out, int part, int parts) {
    Crops crops = crops_make(H, W, s, n_crops, offsets, entries, counts, cell_offsets, cell_crops);
    int blocks = (N + LANES - 1) / LANES, P = crops.n_crops;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    long state = (long)B * P * LANES;
    Scratch t = scratch_new(H, W, s, P, crops.listed);
    float *run_min = malloc(sizeof(float) * state), *run_sum = calloc(state, sizeof(float));
    if (!scratch_ok(t) || !run_min || !run_sum) {
        free(run_min); free(run_sum); scratch_free(t);
        return -1;
    }
    for (long i = 0; i < state; i++) run_min[i] = FLT_MAX; /* lanes that never see an image keep sum 0 */
    for (long block = first; block < last; block++) {
        int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
        for (int b = 0; b < B; b++) {
            float *distances = distances_out ? distances_out + (block * B + b) * P * LANES : t.crops;
            crop_distances(z + (long)b * C * H * W, xt + block * C * H * W * LANES, C, crops, t, distances);
            float *mb = run_min + (long)b * P * LANES, *sb = run_sum + (long)b * P * LANES;
            float kl = log2e_times(inv_two_var[b]);
            if (valid == LANES)
                running_sums_full(distances, mb, sb, P, kl);
            else
                running_sums_partial(distances, mb, sb, P, kl, valid);
        }
    }
    for (long q = 0; q < (long)B * P; q++) {
        float m = FLT_MAX, sm = 0.0f, kl = log2e_times(inv_two_var[q / P]);
        for (int l = 0; l < LANES; l++) m = run_min[q * LANES + l] < m ? run_min[q * LANES + l] : m;
        for (int l = 0; l < LANES; l++)
            sm += run_sum[q * LANES + l] * exp2_bounded(-(run_min[q * LANES + l] - m) * kl);
        min_out[q * parts + part] = m;
        sum_out[q * parts + part] = sm;
    }
    free(run_min); free(run_sum); scratch_free(t);
    return 0;
}

/* Merge the parts of pass 1, in double: min_out[q] = smallest min[q][part], sum_out[q] = sum_part sum[q][part] *
   exp(-(min[q][part] - min_out[q]) g). min_in, sum_in: [Q][parts] with Q = B * n_crops;
   g = inv_two_var[q / n_crops]. */
void merge_parts(const float *min_in, const float *sum_in, long Q, int parts, int n_crops, const float *inv_two_var,
                 float *min_out, double *sum_out) {
    for (long q = 0; q < Q; q++) {
        float m = FLT_MAX;
        double total = 0.0, g = inv_two_var[q / n_crops];
        for (int part = 0; part < parts; part++) m = min_in[q * parts + part] < m ? min_in[q * parts + part] : m;
        for (int part = 0; part < parts; part++)
            total += sum_in[q * parts + part] * exp(-((double)min_in[q * parts + part] - m) * g);
        min_out[q] = m;
        sum_out[q] = total;
    }
}

/* Pass 2's normalised weights of one block: weight[p][l] = exp(-(D[p][l] - m[p]) g) / sum[p] for the valid lanes, 0
   past the end of the training set; inverse_sum[p] = count[p] / sum[p] for listed crops. Returns whether any weight
   is nonzero. */
static int crop_weights(const float *distances, const float *crop_min, const float *inverse_sum, int P, float kl,
                        int valid, float *weights) {
    float largest[LANES] = {0.0f};
    for (int p = 0; p < P; p++) {
        const float *v = distances + (long)p * LANES;
        float *weight = weights + (long)p * LANES, m = crop_min[p], scale = inverse_sum[p];
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            weight[l] = exp2_bounded(-(v[l] - m) * kl) * scale;
            largest[l] = weight[l] > largest[l] ? weight[l] : largest[l];
        }
    }
    if (valid < LANES)
        for (int p = 0; p < P; p++)
            for (int l = valid; l < LANES; l++) weights[(long)p * LANES + l] = 0.0f;
    for (int l = 0; l < valid; l++)
        if (largest[l] > 0.0f) return 1;
    return 0;
}

/* Pass 2's numerators of one block: a[c][p][l] += w[p][l] x[c][p][l] + w[p][l + HALF] x[c][p][l + HALF] (lanes
   folded in two: half the accumulator traffic), a pixel's weights loaded once for all channels. */
static void accumulate(const float *x, const float *w, float *a, int C, int HW) {
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) {
            const float *xv = x + ((long)c * HW + p) * LANES, *wv = w + (long)p * LANES;
            float *av = a + ((long)c * HW + p) * HALF;
#pragma omp simd
            for (int l = 0; l < HALF; l++) av[l] += wv[l] * xv[l] + wv[l + HALF] * xv[l + HALF];
        }
}

/* Pass 2 on share `part` of `parts`: num[c][h][w] = sum_n x_n[c][h][w] * (sum over crops holding (h, w) of the
   weight exp(-(D_n - crop_min) g) / crop_sum). crop_min, crop_sum: [B][n_crops] from pass 1; distances_in: pass 1's
   distances_out, or NULL to recompute them; num_out: [B][parts][C][H][W]. Returns 0, or -1 when memory ran out. */
int pspc_pass2(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int n_crops,
                const int *offsets, const int *entries, const float *counts, const int *cell_offsets,
                const int *cell_crops, const float *inv_two_var,
                const float *crop_min, const float *crop_sum, const float *distances_in, float *num_out, int part,
                int parts) {
    Crops crops = crops_make(H, W, s, n_crops, offsets, entries, counts, cell_offsets, cell_crops);
    int blocks = (N + LANES - 1) / LANES, P = crops.n_crops, HW = H * W;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    Scratch t = scratch_new(H, W, s, P, crops.listed);
    float *acc = calloc((size_t)B * HALF * C * HW, sizeof(float)); /* lanes folded in two: half the traffic */
    float *inverse_sums = malloc(sizeof(float) * B * P);
    if (!scratch_ok(t) || !acc || !inverse_sums) {
        free(acc); free(inverse_sums); scratch_free(t);
        return -1;
    }
    for (long q = 0; q < (long)B * P; q++) inverse_sums[q] = (crops.listed ? crops.counts[q % P] : 1.0f) / crop_sum[q];
    for (long block = first; block < last; block++) {
        int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
        const float *x = xt + block * C * HW * LANES;
        for (int b = 0; b < B; b++) {
            const float *distances = t.crops;
            if (distances_in)
                distances = distances_in + (block * B + b) * P * LANES;
            else
                crop_distances(z + (long)b * C * HW, x, C, crops, t, t.crops);
            if (!crop_weights(distances, crop_min + (long)b * P, inverse_sums + (long)b * P, P,
                              log2e_times(inv_two_var[b]), valid, t.crops))
                continue; /* every weight underflowed to exactly 0: nothing to add */
            pixel_weights(t.crops, crops, t, t.d);
            accumulate(x, t.d, acc + (long)b * C * HW * HALF, C, HW);
        }
    }
    for (long i = 0; i < (long)B * C * HW; i++) {
        float total = 0.0f;
        for (int l = 0; l < HALF; l++) total += acc[i * HALF + l];
        long b = i / ((long)C * HW), j = i % ((long)C * HW);
        num_out[(b * parts + part) * C * HW + j] = total;
    }
    free(acc); free(inverse_sums); scratch_free(t);
    return 0;
}
