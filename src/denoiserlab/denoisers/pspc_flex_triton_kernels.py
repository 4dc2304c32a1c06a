"""The Triton kernels of `pspc_flex_triton.py` (imported only when they are first used: importing triton is optional).

Pointers address contiguous float32 tensors: queries [B, C, P], training images [n, C, P] (P = H W pixels), crops as
0/1 rows [U, P] and transposed [P, U]. BN, BP, BU are the tile sides over training images, pixels and crops (each
>= 16, as tl.dot needs). Every tl.dot runs in IEEE float32 (`input_precision="ieee"`): TF32 would round the pixel
differences to 10 bits of mantissa.
"""

import triton
import triton.language as tl

FAR = tl.constexpr(3.0e38)  # the distance of a row past the last training image: its weight exp(-(FAR - m) g) is 0


@triton.jit
def pixel_differences(z_ptr, x_ptr, n0, n_end, p0, channels, n_pixels, BN: tl.constexpr, BP: tl.constexpr):
    """[BN, BP] sum_c (z - x_n)^2 over images n0 ... n0 + BN - 1 and pixels p0 ... p0 + BP - 1 (0 for images at or
    past n_end and for pixels past n_pixels)."""
    n = n0 + tl.arange(0, BN)[:, None]
    p = p0 + tl.arange(0, BP)[None, :]
    valid = (n < n_end) & (p < n_pixels)
    total = tl.zeros([BN, BP], dtype=tl.float32)
    for c in range(0, channels):
        z = tl.load(z_ptr + c * n_pixels + p, mask=p < n_pixels, other=0.0)
        x = tl.load(x_ptr + (n * channels + c) * n_pixels + p, mask=valid, other=0.0)
        difference = z - x
        total += difference * difference
    return tl.where(valid, total, 0.0)


@triton.jit
def crop_distance_tile(z_ptr, x_ptr, masks_t_ptr, n0, n_end, u0, channels, n_pixels, n_crops,
                       BN: tl.constexpr, BP: tl.constexpr, BU: tl.constexpr):
    """[BN, BU] distances of crops u0 ... u0 + BU - 1 between the query and images n0 ... n0 + BN - 1: the pixel
    differences times the 0/1 crop columns, a sum of non-negative terms; FAR for images at or past n_end."""
    u = u0 + tl.arange(0, BU)[None, :]
    distances = tl.zeros([BN, BU], dtype=tl.float32)
    for p0 in range(0, n_pixels, BP):
        differences = pixel_differences(z_ptr, x_ptr, n0, n_end, p0, channels, n_pixels, BN, BP)
        p = p0 + tl.arange(0, BP)[:, None]
        columns = tl.load(masks_t_ptr + p * n_crops + u, mask=(p < n_pixels) & (u < n_crops), other=0.0)
        distances += tl.dot(differences, columns, input_precision="ieee")
    rows = n0 + tl.arange(0, BN)[:, None] < n_end
    return tl.where(rows, distances, FAR)


@triton.jit
def flex_normaliser_pass(queries_ptr, train_ptr, masks_t_ptr, g_ptr, min_ptr, sum_ptr, n_train, per_program,
                         channels, n_pixels, n_crops, BN: tl.constexpr, BP: tl.constexpr, BU: tl.constexpr):
    """Program (b, k, t): query b against training images [k P, (k + 1) P) (P = per_program) for crops
    [t BU, (t + 1) BU). Writes per crop the smallest distance m and sum_n exp(-(D_n - m) g_b) to min_ptr / sum_ptr
    [B, G, U]."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    u0 = tl.program_id(2) * BU
    z_ptr = queries_ptr + b * channels * n_pixels
    g = tl.load(g_ptr + b)
    running_min = tl.full([BU], FAR, tl.float32)
    running_sum = tl.zeros([BU], dtype=tl.float32)
    first = k * per_program
    last = tl.minimum(first + per_program, n_train)
    for n0 in range(first, last, BN):
        distances = crop_distance_tile(z_ptr, train_ptr, masks_t_ptr, n0, last, u0, channels, n_pixels, n_crops,
                                       BN, BP, BU)
        new_min = tl.minimum(running_min, tl.min(distances, axis=0))
        running_sum = (running_sum * tl.exp((new_min - running_min) * g)
                       + tl.sum(tl.exp((new_min[None, :] - distances) * g), axis=0))
        running_min = new_min
    u = u0 + tl.arange(0, BU)
    out = (b * tl.num_programs(1) + k) * n_crops + u
    tl.store(min_ptr + out, running_min, mask=u < n_crops)
    tl.store(sum_ptr + out, running_sum, mask=u < n_crops)


@triton.jit
def flex_numerator_pass(queries_ptr, train_ptr, masks_t_ptr, crop_weights_ptr, g_ptr, min_ptr, inverse_sum_ptr,
                        out_ptr, n_train, per_program, channels, n_pixels, n_crops,
                        BN: tl.constexpr, BP: tl.constexpr, BU: tl.constexpr):
    """Program (b, k): adds to out_ptr [B, G, C, P] (zeros on entry) the sum over training images
    [k P, (k + 1) P) of x_n times their pixel weights sum_u c_u [p in u] exp(-(D_nu - m_u) g_b) / s_u, with m, 1 / s
    of the whole training set in min_ptr / inverse_sum_ptr [B, U] and c_u [p in u] in crop_weights_ptr [U, P]."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    z_ptr = queries_ptr + b * channels * n_pixels
    out = out_ptr + (b * tl.num_programs(1) + k) * channels * n_pixels
    g = tl.load(g_ptr + b)
    first = k * per_program
    last = tl.minimum(first + per_program, n_train)
    for n0 in range(first, last, BN):
        n = n0 + tl.arange(0, BN)[:, None]
        for u0 in range(0, n_crops, BU):
            distances = crop_distance_tile(z_ptr, train_ptr, masks_t_ptr, n0, last, u0, channels, n_pixels,
                                           n_crops, BN, BP, BU)
            u = u0 + tl.arange(0, BU)
            crop_min = tl.load(min_ptr + b * n_crops + u, mask=u < n_crops, other=0.0)
            inverse_sum = tl.load(inverse_sum_ptr + b * n_crops + u, mask=u < n_crops, other=0.0)
            weights = tl.exp((crop_min[None, :] - distances) * g) * inverse_sum[None, :]  # [BN, BU]; 0 past ends
            for p0 in range(0, n_pixels, BP):
                p = p0 + tl.arange(0, BP)
                rows = tl.load(crop_weights_ptr + u[:, None] * n_pixels + p[None, :],
                               mask=(u[:, None] < n_crops) & (p[None, :] < n_pixels), other=0.0)
                pixel_weights = tl.dot(weights, rows, input_precision="ieee")  # [BN, BP]
                for c in range(0, channels):
                    x = tl.load(train_ptr + (n * channels + c) * n_pixels + p[None, :],
                                mask=(n < last) & (p[None, :] < n_pixels), other=0.0)
                    total = tl.load(out + c * n_pixels + p, mask=p < n_pixels, other=0.0)
                    tl.store(out + c * n_pixels + p, total + tl.sum(pixel_weights * x, axis=0), mask=p < n_pixels)
                    tl.debug_barrier()  # this program's next read of the same pixels sees the sum
