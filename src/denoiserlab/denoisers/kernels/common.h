/* Shared by denoiserlab's C kernels (pspc.c, els.c): the lane width, a vectorisable exp and cancellation-free window
   sums. Compiled by denoisers/pspc_kernel.py with the system C compiler; see that module for the build, the cache and
   the fallback to PyTorch. */
#ifndef DENOISERLAB_KERNEL_COMMON_H
#define DENOISERLAB_KERNEL_COMMON_H
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define HALF (LANES / 2)

/* One float per lane as a GCC / Clang vector: kept in a register where a float[LANES] array may be kept on the stack,
   which turns a running sum into a chain of stores and loads. aligned(4): loads and stores at any float address. */
typedef float lane_vector __attribute__((vector_size(LANES * sizeof(float)), aligned(4)));
#define LANE_VECTOR(pointer) (*(const lane_vector *)(pointer))

/* sum_j base[offset[j] .. offset[j] + LANES) for j in [first, last), offsets in floats (multiples of LANES, so that
   the address needs no shift): four running sums, so that four additions are in flight rather than each waiting
   for the previous one. */
static inline lane_vector gathered_sum(const float *base, const int *offset, int first, int last) {
    lane_vector s0 = {0.0f}, s1 = {0.0f}, s2 = {0.0f}, s3 = {0.0f};
    int j = first;
    for (; j + 4 <= last; j += 4) {
        s0 += LANE_VECTOR(base + offset[j]);
        s1 += LANE_VECTOR(base + offset[j + 1]);
        s2 += LANE_VECTOR(base + offset[j + 2]);
        s3 += LANE_VECTOR(base + offset[j + 3]);
    }
    for (; j < last; j++) s0 += LANE_VECTOR(base + offset[j]);
    return (s0 + s1) + (s2 + s3);
}

/* 2^t for t < 127 (-inf included), vectorisable: t = k + f with k = rint(t) and |f| <= 1/2, 2^f by a degree-5
   polynomial (relative error 2e-7 in float32, below the rounding of t itself for |t| > 2), 2^k by the exponent
   bits; t < -126.5 gives exactly 0. Each step is one vector operation: t is clamped to -127 by an unsigned minimum
   of its bits (negative floats order like their magnitudes), and adding 1.5 * 2^23 + 127 rounds t to an integer
   and leaves rint(t) + 127, the exponent of 2^k, in the low bits. */
static inline float exp2_bounded(float t) {
    union { float f; uint32_t u; } clamped = {t}, y;
    const uint32_t lowest = 0xC2FE0000u; /* the bits of -127.0f */
    clamped.u = clamped.u < lowest ? clamped.u : lowest;
    y.f = clamped.f + 12583039.0f;
    float f = clamped.f - (y.f - 12583039.0f);
    float p = 1.3264726622e-3f;
    p = p * f + 9.6715129594e-3f;
    p = p * f + 5.5507337478e-2f;
    p = p * f + 2.4022242080e-1f;
    p = p * f + 6.9314697759e-1f;
    p = p * f + 1.0f;
    union { uint32_t u; float f; } scale = {y.u << 23}; /* rint(t) = -127: all bits 0, the float 0 */
    return p * scale.f;
}

/* log2(e) g, capped at FLT_MAX, so that exp(-d g) = exp2_bounded(-d log2e_times(g)) for every d >= 0 and g >= 0
   (d = 0 gives 1 even where g is capped). */
static inline float log2e_times(float g) {
    double scaled = (double)g * 1.4426950408889634;
    return scaled > FLT_MAX ? FLT_MAX : (float)scaled;
}

#if defined(__GNUC__) || defined(__clang__)
#define INLINED static inline __attribute__((always_inline)) /* specialised where called with constant arguments */
#else
#define INLINED static inline
#endif
#define BOX_SPAN (8 * LANES) /* floats of a wide line summed side by side in registers */

/* Window sums (as box_line) of `span` floats side by side along a line whose element i starts at in + i * stride,
   with the running sums in registers: through memory, every step of the chains waited for the previous store.
   suffix: laid out as in. span: LANES or BOX_SPAN. */
INLINED void box_columns(const float *in, float *out, int len, int s, long stride, float *suffix, const int span) {
    int n_out = len - s + 1;
    for (int start = 0; start < n_out; start += s) {
        int last = start + s - 1, end = start + s < n_out ? start + s : n_out; /* last < len */
        float running[BOX_SPAN], head[BOX_SPAN];
#pragma omp simd
        for (int l = 0; l < span; l++) { running[l] = in[last * stride + l]; head[l] = 0.0f; }
        for (int i = last; i >= start; i--) {
            if (i < last) {
#pragma omp simd
                for (int l = 0; l < span; l++) running[l] += in[i * stride + l];
            }
#pragma omp simd
            for (int l = 0; l < span; l++) suffix[i * stride + l] = running[l];
        }
#pragma omp simd
        for (int l = 0; l < span; l++) out[start * stride + l] = running[l];
        for (int i = start + 1; i < end; i++) {
#pragma omp simd
            for (int l = 0; l < span; l++) {
                head[l] += in[(i + s - 1) * stride + l];
                out[i * stride + l] = suffix[i * stride + l] + head[l];
            }
        }
    }
}

/* Window sums of width s along a line of len elements, each `width` contiguous floats (a lane vector, or a whole
   image row of lane vectors for the vertical pass; a multiple of LANES): out[i] = sum_{j<s} in[i + j] for
   i <= len - s. Van Herk / Gil-Werman blocks of length s: out[i] = (suffix sum of i's block from i) + (running
   prefix sum of the next block up to i + s - 1). Only non-negative terms are ever added: no cancellation. Wide
   lines go BOX_SPAN floats at a time. suffix: room for len * width floats. */
static void box_line(const float *in, float *out, int len, int s, long width, float *suffix) {
    long column = 0;
    for (; column + BOX_SPAN <= width; column += BOX_SPAN)
        box_columns(in + column, out + column, len, s, width, suffix + column, BOX_SPAN);
    for (; column < width; column += LANES)
        box_columns(in + column, out + column, len, s, width, suffix + column, LANES);
}

#endif
