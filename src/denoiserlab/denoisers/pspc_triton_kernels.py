"""The Triton kernels of `pspc_triton.py` (imported only when they are first used: importing triton is optional).

Pointers address contiguous float32 tensors; CB, HB, WB are the channel count and image sides rounded up to powers
of two (the tile of one image that a program holds).
"""

import triton
import triton.language as tl

@triton.jit
def image_tile(image_ptr, channels, height, width, CB: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr):
    """One image [C, H, W] as a [CB, HB, WB] tile, 0 outside the image."""
    c = tl.arange(0, CB)[:, None, None]
    r = tl.arange(0, HB)[None, :, None]
    q = tl.arange(0, WB)[None, None, :]
    return tl.load(image_ptr + (c * height + r) * width + q, mask=(c < channels) & (r < height) & (q < width),
                   other=0.0)


@triton.jit
def crop_distances(z, x_ptr, scratch_ptr, channels, height, width, size,
                   CB: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr):
    """z: the query's [CB, HB, WB] tile (0 outside the image); x_ptr: one training image [C, H, W]. Returns
    (the image's tile, D [HB, WB]: the distance of the size x size crop at (row, col), valid where
    row <= H - size and col <= W - size)."""
    image = image_tile(x_ptr, channels, height, width, CB, HB, WB)
    difference = z - image
    pixel = tl.sum(difference * difference, axis=0)  # [HB, WB], float32 per-pixel differences
    r = tl.arange(0, HB)[:, None]
    q = tl.arange(0, WB)[None, :]
    tl.store(scratch_ptr + r * WB + q, pixel)
    tl.debug_barrier()
    rows = tl.zeros([HB, WB], dtype=tl.float32)
    for dx in range(0, size):
        rows += tl.load(scratch_ptr + r * WB + q + dx, mask=q + dx < width, other=0.0)
    tl.store(scratch_ptr + HB * WB + r * WB + q, rows)
    tl.debug_barrier()
    crops = tl.zeros([HB, WB], dtype=tl.float32)
    for dy in range(0, size):
        crops += tl.load(scratch_ptr + HB * WB + (r + dy) * WB + q, mask=r + dy < height, other=0.0)
    return image, crops

@triton.jit
def normaliser_pass(queries_ptr, train_ptr, g_ptr, min_ptr, sum_ptr, scratch_ptr, n_train, per_program,
                    channels, height, width, size,
                    CB: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr):
    """Program (b, k): query b against training images [k P, (k + 1) P) (P = per_program). Writes per crop
    the smallest distance and sum_n exp(-(D_n - m) g_b) over them to min_ptr / sum_ptr [B, G, P1, P2]."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    n_programs = tl.num_programs(1)
    image_size = channels * height * width
    z = image_tile(queries_ptr + b * image_size, channels, height, width, CB, HB, WB)
    g = tl.load(g_ptr + b)
    scratch = scratch_ptr + (b * n_programs + k) * 2 * HB * WB
    running_min = tl.full([HB, WB], 3.0e38, tl.float32)
    running_sum = tl.zeros([HB, WB], dtype=tl.float32)
    first = k * per_program
    for n in range(first, tl.minimum(first + per_program, n_train)):
        _, crops = crop_distances(z, train_ptr + n * image_size, scratch, channels, height, width, size,
                                  CB, HB, WB)
        new_min = tl.minimum(running_min, crops)
        running_sum = running_sum * tl.exp((new_min - running_min) * g) + tl.exp((new_min - crops) * g)
        running_min = new_min
    r = tl.arange(0, HB)[:, None]
    q = tl.arange(0, WB)[None, :]
    crop_rows, crop_cols = height - size + 1, width - size + 1
    out = ((b * n_programs + k) * crop_rows + r) * crop_cols + q
    valid = (r < crop_rows) & (q < crop_cols)
    tl.store(min_ptr + out, running_min, mask=valid)
    tl.store(sum_ptr + out, running_sum, mask=valid)

@triton.jit
def numerator_pass(queries_ptr, train_ptr, g_ptr, min_ptr, inverse_sum_ptr, out_ptr, scratch_ptr, n_train,
                   per_program, channels, height, width, size,
                   CB: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr):
    """Program (b, k): sum over training images [k P, (k + 1) P) of x_n * (transposed box sum of the crop
    weights exp(-(D_n - m) g_b) / s), written to out_ptr [B, G, C, H, W]; min_ptr, inverse_sum_ptr: [B, P1, P2]
    (m and 1 / s of the whole training set)."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    n_programs = tl.num_programs(1)
    image_size = channels * height * width
    z = image_tile(queries_ptr + b * image_size, channels, height, width, CB, HB, WB)
    g = tl.load(g_ptr + b)
    r = tl.arange(0, HB)[:, None]
    q = tl.arange(0, WB)[None, :]
    crop_rows, crop_cols = height - size + 1, width - size + 1
    valid = (r < crop_rows) & (q < crop_cols)
    crop_min = tl.load(min_ptr + (b * crop_rows + r) * crop_cols + q, mask=valid, other=0.0)
    inverse_sum = tl.load(inverse_sum_ptr + (b * crop_rows + r) * crop_cols + q, mask=valid, other=0.0)
    scratch = scratch_ptr + (b * n_programs + k) * 2 * HB * WB
    total = tl.zeros([CB, HB, WB], dtype=tl.float32)
    first = k * per_program
    for n in range(first, tl.minimum(first + per_program, n_train)):
        image, crops = crop_distances(z, train_ptr + n * image_size, scratch, channels, height, width, size,
                                      CB, HB, WB)
        weights = tl.where(valid, tl.exp((crop_min - crops) * g) * inverse_sum, 0.0)
        tl.debug_barrier()  # every thread is done reading the scratch tile of crop_distances
        tl.store(scratch + r * WB + q, weights)
        tl.debug_barrier()
        rows = tl.zeros([HB, WB], dtype=tl.float32)
        for dx in range(0, size):
            rows += tl.load(scratch + r * WB + q - dx, mask=q >= dx, other=0.0)
        tl.store(scratch + HB * WB + r * WB + q, rows)
        tl.debug_barrier()
        pixel_weights = tl.zeros([HB, WB], dtype=tl.float32)
        for dy in range(0, size):
            pixel_weights += tl.load(scratch + HB * WB + (r - dy) * WB + q, mask=r >= dy, other=0.0)
        tl.debug_barrier()  # before the next image's crop_distances overwrites the scratch tile
        total += pixel_weights[None, :, :] * image
    c = tl.arange(0, CB)[:, None, None]
    r3 = tl.arange(0, HB)[None, :, None]
    q3 = tl.arange(0, WB)[None, None, :]
    tl.store(out_ptr + ((b * n_programs + k) * channels + c) * height * width + r3 * width + q3, total,
             mask=(c < channels) & (r3 < height) & (q3 < width))
