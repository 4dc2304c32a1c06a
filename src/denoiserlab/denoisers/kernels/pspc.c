/* The PSPC-Square / PSPC-Flex kernel (see denoisers/pspc_kernel.py for the layout, the build and the Python side,
   which declares the ctypes signature of every function below). Float32 throughout, per-pixel differences (never
   |a|^2 - 2ab + |b|^2); every allocation is checked and a failure is reported as -1, never dereferenced.

   The softmax over training images runs in distance space: with D the crop distance |C z - C x_n|^2, m its smallest
   value over n and g = 1 / (2 sigma^2), a crop's weights are exp(-(D - m) g) / sum_n exp(-(D - m) g). Every exponent
   is <= 0 and the nearest crop's is exactly 0, so no sigma > 0 overflows: g capped at FLT_MAX gives the sigma -> 0
   limit (the nearest crop, or the mean of exactly tied ones), g = 0 the sigma -> inf limit (the mean crop). */
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

/* Whether every buffer of a Scratch was allocated (free(NULL) is a no-op, so scratch_free works either way). */
static int scratch_ok(Scratch t) {
    return t.d && t.rows && t.crops && t.suffix && t.head && t.padded && t.padded_rows;
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

/* Distances |C z - C x|^2 of every crop for one block of training images: [n_crops][LANES] (lanes past the end of
   the training set hold the distances to zero padding, which callers skip). */
static void crop_distances(const float *z, const float *x, int C, Crops crops, Scratch t, float *distances) {
    int H = crops.H, W = crops.W, s = crops.s;
    pixel_squared_differences(z, x, C, H * W, t.d);
    if (crops.listed) {
        for (int k = 0; k < crops.n_crops; k++) {
            float *v = distances + (long)k * LANES;
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
        box_line(t.rows, distances, H, s, (long)P2 * LANES, t.suffix, t.head); /* whole rows at a time */
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

/* Pass 1 on share `part` of `parts` of the training set: per query and crop, the smallest distance m and the sum of
   exp(-(D - m) g). min_out, sum_out: [B][n_crops][parts]; distances_out (or NULL): [blocks][B][n_crops][LANES], kept
   for pass 2. Squares of side s when offsets is NULL, else the listed crops. Returns 0, or -1 when memory ran out. */
int pspc_pass1(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int n_crops,
                const int *offsets, const int *pixels, const float *counts, const float *inv_two_var,
                float *min_out, float *sum_out, float *distances_out, int part, int parts) {
    Crops crops = crops_make(H, W, s, n_crops, offsets, pixels, counts);
    int blocks = (N + LANES - 1) / LANES, P = crops.n_crops;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    long state = (long)B * P * LANES;
    Scratch t = scratch_new(H, W, s, P);
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
            float *mb = run_min + (long)b * P * LANES, *sb = run_sum + (long)b * P * LANES, g = inv_two_var[b];
            for (int p = 0; p < P; p++) {
                float *m = mb + (long)p * LANES, *sm = sb + (long)p * LANES, *v = distances + (long)p * LANES;
                /* running sum with one exp per element: e = exp(-|v - m| g), rescaling the sum when m shrinks */
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    float e = exp_nonpositive(-fabsf(v[l] - m[l]) * g);
                    int nearer = l < valid && v[l] < m[l];
                    sm[l] = nearer ? sm[l] * e + 1.0f : (l < valid ? sm[l] + e : sm[l]);
                    m[l] = nearer ? v[l] : m[l];
                }
            }
        }
    }
    for (long q = 0; q < (long)B * P; q++) {
        float m = FLT_MAX, sm = 0.0f, g = inv_two_var[q / P];
        for (int l = 0; l < LANES; l++) m = run_min[q * LANES + l] < m ? run_min[q * LANES + l] : m;
        for (int l = 0; l < LANES; l++)
            sm += run_sum[q * LANES + l] * exp_nonpositive(-(run_min[q * LANES + l] - m) * g);
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

/* Pass 2 on share `part` of `parts`: num[c][h][w] = sum_n x_n[c][h][w] * (sum over crops holding (h, w) of the
   weight exp(-(D_n - crop_min) g) / crop_sum). crop_min, crop_sum: [B][n_crops] from pass 1; distances_in: pass 1's
   distances_out, or NULL to recompute them; num_out: [B][parts][C][H][W]. Returns 0, or -1 when memory ran out. */
int pspc_pass2(const float *z, const float *xt, int B, int C, int H, int W, int N, int s, int n_crops,
                const int *offsets, const int *pixels, const float *counts, const float *inv_two_var,
                const float *crop_min, const float *crop_sum, const float *distances_in, float *num_out, int part,
                int parts) {
    Crops crops = crops_make(H, W, s, n_crops, offsets, pixels, counts);
    int blocks = (N + LANES - 1) / LANES, P = crops.n_crops, HW = H * W;
    long first = (long)blocks * part / parts, last = (long)blocks * (part + 1) / parts;
    Scratch t = scratch_new(H, W, s, P);
    float *acc = calloc((size_t)B * HALF * C * HW, sizeof(float)); /* lanes folded in two: half the traffic */
    if (!scratch_ok(t) || !acc) {
        free(acc); scratch_free(t);
        return -1;
    }
    for (long block = first; block < last; block++) {
        int valid = N - block * LANES < LANES ? (int)(N - block * LANES) : LANES;
        const float *x = xt + block * C * HW * LANES;
        for (int b = 0; b < B; b++) {
            const float *mz = crop_min + (long)b * P, *sz = crop_sum + (long)b * P, *distances = t.crops;
            float g = inv_two_var[b];
            if (distances_in)
                distances = distances_in + (block * B + b) * P * LANES;
            else
                crop_distances(z + (long)b * C * HW, x, C, crops, t, t.crops);
            float largest = 0.0f;
            for (int p = 0; p < P; p++) {
                const float *v = distances + (long)p * LANES;
                float *weight = t.crops + (long)p * LANES, m = mz[p], inverse_sum = 1.0f / sz[p];
#pragma omp simd reduction(max : largest)
                for (int l = 0; l < LANES; l++) {
                    weight[l] = l < valid ? exp_nonpositive(-(v[l] - m) * g) * inverse_sum : 0.0f;
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
    return 0;
}
