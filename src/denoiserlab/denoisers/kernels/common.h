/* Shared by denoiserlab's C kernels (pspc.c, els.c): the lane width, a vectorisable exp and cancellation-free window
   sums. Compiled by denoisers/pspc_kernel.py with the system C compiler; see that module for the build, the cache and
   the fallback to PyTorch. */
#ifndef DENOISERLAB_KERNEL_COMMON_H
#define DENOISERLAB_KERNEL_COMMON_H
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

#endif
