"""PSPC-Square and PSPC-Flex against a slow float64 loop over crops written here (STYLE section 10)."""


import pytest
import torch

from denoiserlab.denoisers import OptimalDenoiser, PSPCFlex, PSPCSquare
from denoiserlab.denoisers import pspc_flex, pspc_kernel
from denoiserlab.denoisers.pspc_kernel import KernelUnavailable, load_library
from denoiserlab.errors import DenoiserLabError
from conftest import TRITON_INTERPRETER


def compiled_kernel_available() -> bool:
    try:
        load_library()
    except KernelUnavailable:
        return False
    return True


KERNELS = ["eager", pytest.param("compiled", marks=pytest.mark.skipif(not compiled_kernel_available(),
                                                                    reason="C kernel cannot be built here"))]
# the Triton kernels of PSPC-Square and PSPC-Flex (through the interpreter on CPU)
# (conftest.py switches the interpreter on without CUDA; with CUDA the `cuda` test runs the kernels compiled)
TRITON_INTERPRETED = pytest.mark.skipif(not TRITON_INTERPRETER,
                                        reason="triton is not installed, or CUDA runs its kernels compiled")
# the kernels let exp((m - D) g) underflow through -inf (e.g. from the initial running minimum 3e38), which is exact
# on a GPU; Triton's interpreter computes with numpy, which warns about the overflow to -inf
INTERPRETER_OVERFLOW = pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
ALL_KERNELS = [*KERNELS, pytest.param("triton", marks=[TRITON_INTERPRETED, INTERPRETER_OVERFLOW])]


def reference_composite(x, sigmas, train, crops):
    """Loop over crops: float64 softmax over all training crops, posterior means averaged per pixel."""
    x, train = x.double(), train.double()
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        total = torch.zeros_like(x[b])
        count = torch.zeros(x.shape[2:], dtype=torch.float64)
        for crop in crops:
            query = x[b][:, crop].flatten()
            patches = train[:, :, crop].flatten(1)  # [N, C * k]
            logits = -((patches - query) ** 2).sum(1) / (2 * float(sigmas[b]) ** 2)  # [N]
            weights = torch.softmax(logits, 0)
            mean = (weights[:, None] * patches).sum(0).reshape(x.shape[1], -1)
            total[:, crop] += mean
            count[crop] += 1
        out[b] = torch.where(count > 0, total / count.clamp(min=1), x[b])
    return out


def square_crops(height, width, size):
    crops = []
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            crop = torch.zeros(height, width, dtype=torch.bool)
            crop[top : top + size, left : left + size] = True
            crops.append(crop)
    return crops


def make_data(shape, n_train=20, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(n_train, *shape, generator=generator) * 2 - 1
    x = train[:batch] + 0.8 * torch.randn(batch, *shape, generator=generator)
    return train, x


SIGMAS = torch.tensor([0.4, 0.9, 2.0])


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("shape,size", [((1, 8, 8), 1), ((1, 8, 8), 3), ((1, 8, 8), 4), ((3, 6, 6), 2), ((3, 6, 6), 5)])
def test_square_matches_loop_reference(kernel, shape, size):
    train, x = make_data(shape)
    out = PSPCSquare(train, size, kernel=kernel)(x, SIGMAS)
    reference = reference_composite(x, SIGMAS, train, square_crops(*shape[1:], size))
    assert torch.allclose(out.double(), reference, atol=2e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_square_non_square_image(kernel):
    train, x = make_data((2, 5, 7))
    out = PSPCSquare(train, 3, kernel=kernel, chunk_size=7)(x, SIGMAS)
    assert torch.allclose(out.double(), reference_composite(x, SIGMAS, train, square_crops(5, 7, 3)), atol=2e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_square_full_size_and_larger_is_optimal(kernel):
    train, x = make_data((3, 6, 6))
    optimal = OptimalDenoiser(train)(x, SIGMAS)
    for size in (6, 40):  # 40 is clamped to the image size
        assert torch.allclose(PSPCSquare(train, size, kernel=kernel)(x, SIGMAS), optimal, atol=1e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_square_per_sample_patch_size_from_schedule(kernel):
    train, x = make_data((1, 8, 8), batch=4)
    sigmas = torch.tensor([2.0, 0.3, 1.0, 0.3])

    def schedule(sigma):
        return 5 if sigma > 1.5 else (2 if sigma < 0.5 else 3)

    out = PSPCSquare(train, schedule, kernel=kernel)(x, sigmas)
    for b, sigma in enumerate(sigmas.tolist()):
        reference = reference_composite(x[b : b + 1], sigmas[b : b + 1], train, square_crops(8, 8, schedule(sigma)))
        assert torch.allclose(out[b : b + 1].double(), reference, atol=2e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_square_xflip_uses_flipped_copies(kernel):
    train, x = make_data((1, 6, 6), n_train=10)
    out = PSPCSquare(train, 3, xflip=True, kernel=kernel)(x, SIGMAS)
    reference = reference_composite(x, SIGMAS, torch.cat([train, train.flip(-1)]), square_crops(6, 6, 3))
    assert torch.allclose(out.double(), reference, atol=2e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_square_exact_at_smallest_sigma(kernel):
    train, _ = make_data((3, 6, 6))
    train[1] = train[0]  # two identical images: their weights must split evenly, not collapse
    x = train[:3] + 0.002 * torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    sigmas = torch.full((3,), 0.002)
    out = PSPCSquare(train, 3, kernel=kernel)(x, sigmas)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), reference_composite(x, sigmas, train, square_crops(6, 6, 3)), atol=1e-5)


@pytest.mark.skipif(not compiled_kernel_available(), reason="C kernel cannot be built here")
@pytest.mark.parametrize("cache_bytes", [0, 1 << 29])  # recompute the crop logits in pass 2, or keep them
def test_square_compiled_agrees_with_eager_on_larger_input(monkeypatch, cache_bytes):
    monkeypatch.setattr(pspc_kernel, "LOGIT_CACHE_BYTES", cache_bytes)
    train, x = make_data((3, 12, 10), n_train=133, batch=4)  # 133: a partial block of 16 training images
    sigmas = torch.tensor([0.5, 1.0, 3.0, 0.05])
    for size in (1, 4, 7, 10):
        compiled = PSPCSquare(train, size, kernel="compiled")(x, sigmas)
        eager = PSPCSquare(train, size, kernel="eager", chunk_size=50)(x, sigmas)
        assert torch.allclose(compiled, eager, atol=1e-5)


@pytest.mark.skipif(not compiled_kernel_available(), reason="C kernel cannot be built here")
def test_flex_compiled_agrees_with_eager_on_larger_input():
    train, x = make_data((3, 12, 10), n_train=133, batch=4)
    sigmas = torch.tensor([0.5, 1.0, 3.0, 0.05])
    masks = random_masks(40, 12, 10, 7)
    compiled = PSPCFlex(train, masks, kernel="compiled")(x, sigmas)
    assert torch.allclose(compiled, PSPCFlex(train, masks, kernel="eager", chunk_size=50)(x, sigmas), atol=1e-5)


@TRITON_INTERPRETED
@INTERPRETER_OVERFLOW
def test_flex_triton_agrees_with_eager_over_several_tiles_and_chunks():
    """More crops (150), pixels (120) and images (133, chunks of 70) than one tile of the Triton kernel holds."""
    train, x = make_data((3, 12, 10), n_train=133, batch=3)
    sigmas = torch.tensor([0.5, 3.0, 0.05])
    masks = random_masks(150, 12, 10, 8)
    triton = PSPCFlex(train, masks, kernel="triton", chunk_size=70)(x, sigmas)
    assert torch.allclose(triton, PSPCFlex(train, masks, kernel="eager")(x, sigmas), atol=1e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_flex_all_true_mask_is_optimal(kernel):
    train, x = make_data((3, 6, 6))
    masks = torch.ones(4, 6, 6, dtype=torch.bool)  # duplicates of the full crop
    assert torch.allclose(PSPCFlex(train, masks, kernel=kernel)(x, SIGMAS), OptimalDenoiser(train)(x, SIGMAS), atol=1e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_flex_square_masks_equal_square(kernel):
    train, x = make_data((1, 8, 8))
    masks = torch.stack(square_crops(8, 8, 3))
    square = PSPCSquare(train, 3, kernel="eager")(x, SIGMAS)
    assert torch.allclose(PSPCFlex(train, masks, kernel=kernel)(x, SIGMAS), square, atol=1e-5)


def random_masks(count, height, width, seed):
    masks = torch.rand(count, height, width, generator=torch.Generator().manual_seed(seed)) < 0.3
    masks[:, 0, 0] = False  # pixel (0, 0) is covered by no crop
    masks[masks.flatten(1).sum(1) == 0, 1, 1] = True
    return torch.cat([masks, masks[:3]])  # with duplicated crops


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("cache_bytes", [0, 1 << 28])  # recompute the logits in pass 2, or keep them
def test_flex_random_masks_match_loop_reference(monkeypatch, cache_bytes, kernel):
    monkeypatch.setattr(pspc_flex, "LOGIT_CACHE_BYTES", cache_bytes)
    monkeypatch.setattr(pspc_kernel, "LOGIT_CACHE_BYTES", cache_bytes)
    for shape, seed in (((1, 8, 8), 0), ((3, 6, 6), 1)):
        train, x = make_data(shape, seed=seed)
        masks = random_masks(12, *shape[1:], seed)
        out = PSPCFlex(train, masks, kernel=kernel, chunk_size=7)(x, SIGMAS)
        reference = reference_composite(x, SIGMAS, train, list(masks))
        assert torch.allclose(out.double(), reference, atol=2e-5)
        assert torch.equal(out[:, :, 0, 0], x[:, :, 0, 0])


@pytest.mark.parametrize("height,width", [(5, 13), (28, 28), (4, 32), (3, 1)])
def test_row_block_cells_cover_every_crop_exactly(height, width):
    generator = torch.Generator().manual_seed(width)
    noisy = torch.rand(6, height * width, generator=generator) < 0.5
    rows = torch.arange(width)[None, None, :]
    runs = ((rows >= torch.randint(0, width, (6, height, 1), generator=generator))
            & (rows < torch.randint(0, width + 1, (6, height, 1), generator=generator))).flatten(1)  # one run a row
    masks = torch.cat([noisy, runs, torch.ones(1, height * width, dtype=torch.bool)])
    crops, cells = pspc_kernel.row_block_cells(masks, height, width)
    covered = torch.zeros(masks.shape, dtype=torch.int64)
    for crop, cell in zip(crops.tolist(), cells.tolist()):
        level, pixel = divmod(cell, height * width)
        assert pixel % width + 2**level <= width  # the block stays in its row
        covered[crop, pixel : pixel + 2**level] += 1
    assert torch.equal(covered, masks.long())  # every pixel once, nothing else
    assert len(cells) <= masks.sum()


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_flex_blob_masks_match_loop_reference(kernel):
    """Crops made of long row runs, so that the kernel sums blocks of up to 8 pixels (rectangles and discs)."""
    train, x = make_data((2, 9, 12), seed=5)
    yy, xx = torch.meshgrid(torch.arange(9), torch.arange(12), indexing="ij")
    masks = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) for cy, cx, r in ((4, 5, 4), (2, 9, 3), (6, 2, 2))]
                        + [(yy >= 1) & (yy < 8) & (xx >= 2) & (xx < 12), torch.ones(9, 12, dtype=torch.bool)])
    out = PSPCFlex(train, masks, kernel=kernel)(x, SIGMAS)
    assert torch.allclose(out.double(), reference_composite(x, SIGMAS, train, list(masks)), atol=2e-5)


@pytest.mark.skipif(not compiled_kernel_available(), reason="C kernel cannot be built here")
def test_kernel_distance_room_reused_across_calls_of_other_sizes():
    """distance_cache hands out one retained buffer per thread: calls of different sizes in turn give what each gives
    alone, and a call too large to retain gets fresh memory."""
    train, x = make_data((1, 8, 8), n_train=40, batch=3)
    small = PSPCSquare(train, 3, kernel="compiled")
    large = PSPCFlex(train, random_masks(12, 8, 8, 3), kernel="compiled")
    first_small, first_large = small(x, SIGMAS), large(x[:2], SIGMAS[:2])
    assert torch.equal(small(x, SIGMAS), first_small) and torch.equal(large(x[:2], SIGMAS[:2]), first_large)
    room = pspc_kernel.distance_cache(3, 3, 36)
    assert room.shape == (3, 3, 36, pspc_kernel.LANES)
    assert room.data_ptr() == pspc_kernel.distance_cache(2, 3, 12).data_ptr()  # the same retained buffer
    assert pspc_kernel.distance_cache(1 << 20, 1 << 10, 1 << 10) is None  # beyond LOGIT_CACHE_BYTES: recompute


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_flex_per_sample_masks_from_callable(kernel):
    train, x = make_data((1, 6, 6), batch=4)
    sigmas = torch.tensor([2.0, 0.3, 1.0, 0.3])
    small, large = random_masks(5, 6, 6, 2), torch.ones(1, 6, 6, dtype=torch.bool)

    def masks_at(sigma):
        return large if sigma > 1.5 else small.clone()  # equal but distinct tensors for 0.3 and 1.0

    out = PSPCFlex(train, masks_at, kernel=kernel)(x, sigmas)
    for b, sigma in enumerate(sigmas.tolist()):
        reference = reference_composite(x[b : b + 1], sigmas[b : b + 1], train, list(masks_at(sigma)))
        assert torch.allclose(out[b : b + 1].double(), reference, atol=2e-5)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_flex_xflip_and_smallest_sigma(kernel):
    train, _ = make_data((3, 6, 6), n_train=10)
    x = train[:3] + 0.002 * torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    masks = random_masks(8, 6, 6, 4)
    sigmas = torch.tensor([0.002, 0.002, 0.5])
    out = PSPCFlex(train, masks, xflip=True, kernel=kernel)(x, sigmas)
    assert torch.isfinite(out).all()
    reference = reference_composite(x, sigmas, torch.cat([train, train.flip(-1)]), list(masks))
    assert torch.allclose(out.double(), reference, atol=1e-5)


@pytest.mark.parametrize("patch_size", [0, -3, 2.5, True, "3"])
def test_square_rejects_bad_patch_size(patch_size):
    train, _ = make_data((1, 6, 6))
    with pytest.raises(DenoiserLabError, match="patch size"):
        PSPCSquare(train, patch_size)


def test_square_rejects_bad_schedule_value_bad_kernel_and_bad_input():
    train, x = make_data((1, 6, 6))
    with pytest.raises(DenoiserLabError, match="patch size must be >= 1"):
        PSPCSquare(train, lambda sigma: 0)(x, 1.0)
    with pytest.raises(DenoiserLabError, match="kernel"):
        PSPCSquare(train, 3, kernel="fast")
    square = PSPCSquare(train, 3)
    with pytest.raises(DenoiserLabError, match="sigma must be > 0"):
        square(x, 0.0)
    with pytest.raises(DenoiserLabError, match="mismatch"):
        square(torch.randn(2, 1, 7, 6), 1.0)
    with pytest.raises(DenoiserLabError, match="shape"):
        square(torch.randn(1, 6, 6), 1.0)


def test_triton_kernels_refuse_cpu_tensors_without_the_interpreter(monkeypatch):
    train, x = make_data((1, 6, 6))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    masks = torch.ones(1, 6, 6, dtype=torch.bool)
    for denoiser in (PSPCSquare(train, 3, kernel="triton"), PSPCFlex(train, masks, kernel="triton")):
        with pytest.raises(DenoiserLabError, match="runs on CUDA devices"):
            denoiser(x, 1.0)
    for denoiser in (PSPCSquare(train, 3, kernel="auto"), PSPCFlex(train, masks, kernel="auto")):
        assert denoiser(x, 1.0).shape == x.shape  # auto never picks Triton on CPU


@pytest.mark.parametrize(
    "masks,message",
    [
        (torch.ones(2, 6, 6), "dtype"),
        (torch.ones(6, 6, dtype=torch.bool), "shape"),
        (torch.ones(0, 6, 6, dtype=torch.bool), "shape"),
        (torch.ones(2, 6, 5, dtype=torch.bool), "size"),
        (torch.zeros(2, 6, 6, dtype=torch.bool), "empty"),
        ([[True]], "masks must be"),
    ],
)
def test_flex_rejects_bad_masks(masks, message):
    train, _ = make_data((1, 6, 6))
    with pytest.raises(DenoiserLabError, match=message):
        PSPCFlex(train, masks)


def test_flex_rejects_bad_masks_from_callable_and_bad_sigma():
    train, x = make_data((1, 6, 6))
    with pytest.raises(DenoiserLabError, match="size"):
        PSPCFlex(train, lambda sigma: torch.ones(1, 5, 5, dtype=torch.bool))(x, 1.0)
    with pytest.raises(DenoiserLabError, match="sigma must be > 0"):
        PSPCFlex(train, torch.ones(1, 6, 6, dtype=torch.bool))(x, -1.0)


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_cuda_matches_cpu_and_the_loop_reference():
    """On CUDA "auto" is the Triton kernel where Triton imports (CUDA builds of torch ship it): every kernel there
    against the CPU and, on more crops, pixels and images than one Triton tile holds, the float64 loop reference."""
    train, x = make_data((3, 8, 8))
    masks = random_masks(10, 8, 8, 0)
    for den in (PSPCSquare(train, 3, kernel="eager"), PSPCSquare(train, 3), PSPCFlex(train, masks, kernel="eager"),
                PSPCFlex(train, masks)):
        on_gpu = den(x.cuda(), SIGMAS.cuda())
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), den(x, SIGMAS), atol=1e-5)
    train, x = make_data((3, 12, 10), n_train=133, batch=3)
    masks = random_masks(150, 12, 10, 8)
    for den, crops in ((PSPCFlex(train, masks, chunk_size=70), list(masks)),
                       (PSPCSquare(train, 5), square_crops(12, 10, 5))):
        reference = reference_composite(x, SIGMAS, train, crops)
        assert torch.allclose(den(x.cuda(), SIGMAS.cuda()).cpu().double(), reference, atol=2e-5)
