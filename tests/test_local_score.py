"""ELS and LS against float64 per-pixel loop references written here, and the limits the maths gives."""

import pytest
import torch

from denoiserlab.denoisers import ELS, LS, OptimalDenoiser, PatchSchedule, create
from denoiserlab.denoisers.els_kernel import load_library
from denoiserlab.denoisers.pspc_kernel import KernelUnavailable
from denoiserlab.errors import DenoiserLabError


def kernel_available() -> bool:
    try:
        load_library()
    except KernelUnavailable:
        return False
    return True


KERNELS = ["eager", pytest.param("compiled", marks=pytest.mark.skipif(not kernel_available(), reason="no C compiler"))]
SIGMAS = torch.tensor([0.05, 0.4, 3.0])


def window(images, y, x, radius, circular):
    """The (2r + 1)^2 window of images [n, C, H, W] centred on (y, x), padded with zeros or circularly: [n, C, P, P]."""
    height, width = images.shape[-2:]
    out = torch.zeros(*images.shape[:2], 2 * radius + 1, 2 * radius + 1, dtype=torch.float64)
    for i, dy in enumerate(range(-radius, radius + 1)):
        for j, dx in enumerate(range(-radius, radius + 1)):
            row, col = y + dy, x + dx
            if circular:
                out[:, :, i, j] = images[:, :, row % height, col % width]
            elif 0 <= row < height and 0 <= col < width:
                out[:, :, i, j] = images[:, :, row, col]
    return out


def candidate_coordinates(coordinate, length, radius, padding):
    """ELS candidates along one axis: all (circular), own (edge, zeros), every interior one (interior, zeros)."""
    if padding == "circular":
        return list(range(length))
    if padding == "co-located" or coordinate < radius or coordinate > length - radius - 1:
        return [coordinate]
    return list(range(radius, length - radius))


def local_reference(train, x, sigmas, size, padding):
    """Per output pixel: the softmax over its candidate windows (every training image), mean of their centres."""
    train, x = train.double(), x.double()
    height, width = x.shape[-2:]
    radius, circular = size // 2, padding == "circular"
    train_windows = {(y, col): window(train, y, col, radius, circular) for y in range(height) for col in range(width)}
    out = torch.zeros_like(x)
    for b, sigma in enumerate(sigmas):
        for y in range(height):
            for col in range(width):
                query = window(x[b : b + 1], y, col, radius, circular)[0]
                logits, centres = [], []
                for cy in candidate_coordinates(y, height, radius, padding):
                    for cx in candidate_coordinates(col, width, radius, padding):
                        distances = (train_windows[cy, cx] - query).square().sum((1, 2, 3))  # [N]
                        logits.append(-distances / (2 * sigma**2))
                        centres.append(train[:, :, cy, cx])  # [N, C]
                weights = torch.cat(logits).softmax(0)
                out[b, :, y, col] = weights @ torch.cat(centres)
    return out


def random_set(n, shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=generator) * 2 - 1, generator


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("shape,size", [((1, 8, 8), 3), ((1, 8, 8), 5), ((3, 6, 6), 3)])
def test_els_matches_reference(padding, shape, size):
    train, generator = random_set(20, shape, 0)
    x = train[:3] + SIGMAS[:, None, None, None] * torch.randn(3, *shape, generator=generator)
    reference = local_reference(train, x, SIGMAS.tolist(), size, padding)
    eager = ELS(train, size, padding=padding, kernel="eager", chunk_size=7)(x.double(), SIGMAS)
    assert torch.allclose(eager, reference, atol=1e-10)
    if kernel_available():
        compiled = ELS(train, size, padding=padding, kernel="compiled")(x, SIGMAS)
        assert compiled.dtype == torch.float32 and torch.allclose(compiled.double(), reference, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", [1, 3, 7])
def test_ls_matches_reference(kernel, size):
    train, generator = random_set(20, (3, 6, 6), 1)
    x = train[:3] + SIGMAS[:, None, None, None] * torch.randn(3, 3, 6, 6, generator=generator)
    reference = local_reference(train, x, SIGMAS.tolist(), size, "co-located")
    dtype, tolerance = (torch.float64, 1e-10) if kernel == "eager" else (torch.float32, 1e-4)
    out = LS(train, size, kernel=kernel, chunk_size=6)(x.to(dtype), SIGMAS)
    assert out.dtype == dtype and torch.allclose(out.double(), reference, atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_small_sigma_with_near_duplicates(kernel):
    train, generator = random_set(10, (1, 8, 8), 2)
    train = torch.cat([train, train + 1e-3 * torch.randn(train.shape, generator=generator)])  # near-duplicate pairs
    x = train[[0, 13, 7]] + 0.002 * torch.randn(3, 1, 8, 8, generator=generator)
    sigmas = torch.tensor([0.002, 0.002, 0.01])
    dtype, tolerance = (torch.float64, 1e-6) if kernel == "eager" else (torch.float32, 1e-4)
    machines = [(ELS(train, 3, kernel=kernel), "zeros"), (ELS(train, 5, "circular", kernel=kernel), "circular"),
                (LS(train, 3, kernel=kernel), "co-located")]
    for den, padding in machines:
        out = den(x.to(dtype), sigmas)
        reference = local_reference(train, x, sigmas.tolist(), den.patch_size_at(1.0), padding)
        assert torch.isfinite(out).all() and torch.allclose(out.double(), reference, atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_limits_optimal_and_ls(kernel):
    train, generator = random_set(20, (1, 8, 8), 3)
    x = train[:3] + SIGMAS[:, None, None, None] * torch.randn(3, 1, 8, 8, generator=generator)
    dtype, tolerance = (torch.float64, 1e-10) if kernel == "eager" else (torch.float32, 1e-5)
    x = x.to(dtype)
    optimal = OptimalDenoiser(train)(x, SIGMAS)
    for size in (15, 21):  # P >= 2 max(H, W) - 1: every window holds the whole image
        assert torch.allclose(LS(train, size, kernel=kernel)(x, SIGMAS), optimal, atol=tolerance)
        assert torch.allclose(ELS(train, size, kernel=kernel)(x, SIGMAS), optimal, atol=tolerance)
    # P >= H + 1: every pixel lies within r of an edge, so zero-padded ELS takes co-located candidates only (LS)
    assert torch.allclose(ELS(train, 9, kernel=kernel)(x, SIGMAS), LS(train, 9, kernel=kernel)(x, SIGMAS),
                          atol=tolerance)
    # P = 1: no padding is involved; both paddings take every pixel of every image
    assert torch.allclose(ELS(train, 1, "zeros", kernel=kernel)(x, SIGMAS),
                          ELS(train, 1, "circular", kernel=kernel)(x, SIGMAS), atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_circular_els_with_the_whole_torus_is_optimal_on_all_shifts(kernel):
    # P = H = W (odd): each circular window is a whole cyclic shift of its image, so ELS is the optimal denoiser
    # of the training set augmented with all H * W cyclic shifts
    train, generator = random_set(6, (2, 5, 5), 4)
    x = train[:3] + SIGMAS[:, None, None, None] * torch.randn(3, 2, 5, 5, generator=generator)
    shifts = torch.cat([train.roll((dy, dx), (2, 3)) for dy in range(5) for dx in range(5)])
    dtype, tolerance = (torch.float64, 1e-10) if kernel == "eager" else (torch.float32, 1e-5)
    out = ELS(train, 5, "circular", kernel=kernel)(x.to(dtype), SIGMAS)
    assert torch.allclose(out, OptimalDenoiser(shifts)(x.to(dtype), SIGMAS), atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_circular_els_is_translation_equivariant(kernel):
    train, generator = random_set(12, (1, 7, 6), 5)
    x = torch.randn(2, 1, 7, 6, generator=generator)
    den = ELS(train, 3, "circular", kernel=kernel)
    tolerance = 1e-10 if kernel == "eager" else 1e-5
    x = x.double() if kernel == "eager" else x
    assert torch.allclose(den(x.roll((2, 3), (2, 3)), 0.5), den(x, 0.5).roll((2, 3), (2, 3)), atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_xflip_schedule_and_per_sample_sigma(kernel):
    train, generator = random_set(10, (1, 8, 8), 6)
    x = torch.randn(3, 1, 8, 8, generator=generator)
    schedule = PatchSchedule((7, 5, 3), sigma_min=0.05, sigma_max=3.0)
    flipped = torch.cat([train, train.flip(-1)])
    for cls, padding in [(ELS, "zeros"), (LS, "co-located")]:
        den = cls(train, schedule, xflip=True, kernel=kernel)
        out = den(x.double() if kernel == "eager" else x, SIGMAS)
        for b, sigma in enumerate(SIGMAS.tolist()):
            reference = local_reference(flipped, x[b : b + 1], [sigma], schedule(sigma), padding)
            assert torch.allclose(out[b : b + 1].double(), reference, atol=1e-10 if kernel == "eager" else 1e-4)


def test_options_are_checked():
    train = torch.zeros(4, 1, 8, 8)
    for bad in (4, 0, 2.0, True):
        with pytest.raises(DenoiserLabError, match="odd int"):
            ELS(train, bad)
        with pytest.raises(DenoiserLabError, match="odd int"):
            LS(train, bad)
    with pytest.raises(DenoiserLabError, match="padding"):
        ELS(train, 3, padding="reflect")
    with pytest.raises(DenoiserLabError, match="kernel"):
        LS(train, 3, kernel="fast")
    with pytest.raises(DenoiserLabError, match="odd int"):
        ELS(train, PatchSchedule((4,)))(torch.zeros(1, 1, 8, 8), 1.0)
    assert create("els", train, patch_size=31).patch_size_at(1.0) == 15  # clamped where windows hold everything
    assert create("els", train, patch_size=31, padding="circular").patch_size_at(1.0) == 31


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("padding,size", [("zeros", 3), ("circular", 3), ("zeros", 5), ("circular", 7)])
def test_many_training_blocks_and_a_nearer_image_late_in_the_set(kernel, padding, size):
    # 75 images: four full blocks of 16 lanes and a partial one (11 lanes, the rest padding that must weigh 0); the
    # first query lies near image 70, in the last block, so every share sees much nearer candidates late and moves
    # its references (the compiled kernel's rebase), the others are far from every image
    train, generator = random_set(75, (1, 7, 7), 7)
    x = torch.cat([train[70:71] + 0.05 * torch.randn(1, 1, 7, 7, generator=generator),
                   torch.randn(2, 1, 7, 7, generator=generator)])
    sigmas = torch.tensor([0.3, 0.05, 3.0])
    dtype, tolerance = (torch.float64, 1e-10) if kernel == "eager" else (torch.float32, 1e-4)
    out = ELS(train, size, padding, kernel=kernel)(x.to(dtype), sigmas)
    reference = local_reference(train, x, sigmas.tolist(), size, padding)
    assert out.dtype == dtype and torch.allclose(out.double(), reference, atol=tolerance)


def test_compiled_kernel_shares_and_threads_agree_with_one_share():
    train, generator = random_set(90, (2, 6, 6), 8)
    x = torch.randn(3, 2, 6, 6, generator=generator)
    if not kernel_available():
        pytest.skip("no C compiler")
    den = ELS(train, 3, "circular", kernel="compiled")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = den(x, SIGMAS)
        torch.set_num_threads(3)  # three threads: the training set in several shares, merged in float64
        several = den(x, SIGMAS)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(one, several, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_many_channels(kernel):
    train, generator = random_set(20, (70, 4, 4), 9)  # more channels than a SIMD register holds numerators for
    x = train[:2] + 0.3 * torch.randn(2, 70, 4, 4, generator=generator)
    dtype, tolerance = (torch.float64, 1e-10) if kernel == "eager" else (torch.float32, 1e-4)
    out = LS(train, 3, kernel=kernel)(x.to(dtype), 0.5)
    reference = local_reference(train, x, [0.5, 0.5], 3, "co-located")
    assert torch.allclose(out.double(), reference, atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_queries_whose_distances_overflow_are_an_error_not_nan(kernel):
    train, _ = random_set(20, (1, 6, 6), 10)
    x = torch.full((1, 1, 6, 6), 3e38)  # finite, but every squared difference overflows float32
    for den, name in [(ELS(train, 3, kernel=kernel), "ELS"), (LS(train, 3, kernel=kernel), "LS")]:
        with pytest.raises(DenoiserLabError, match=f"{name} returned NaN or inf"):
            den(x, 1.0)


def test_bad_options_are_one_clear_error_at_config_time():
    from denoiserlab.denoisers.options import check_denoiser_options

    cases = [({"xflip": "no"}, "xflip must be True or False"), ({"xflip": 1}, "xflip must be True or False"),
             ({"chunk_size": 0}, "chunk_size"), ({"chunk_size": 2.5}, "chunk_size"),
             ({"chunk_size": True}, "chunk_size"),
             ({"patch_size": 4}, "odd int"), ({"patch_size": True}, "odd int"), ({"kernel": "gpu"}, "kernel")]
    for name in ("els", "ls"):
        for options, message in cases:
            with pytest.raises(DenoiserLabError, match=message):
                check_denoiser_options(name, {"patch_size": 3, **options})
            with pytest.raises(DenoiserLabError, match=message):
                create(name, torch.zeros(4, 1, 8, 8), **{"patch_size": 3, **options})
    with pytest.raises(DenoiserLabError, match="padding"):
        check_denoiser_options("els", {"patch_size": 3, "padding": "reflect"})


# --- the compiled kernel: shipped C source, declared signature, failure remembered, PyTorch fallback ------------


def test_kernel_source_ships_as_a_c_file():
    import inspect

    from denoiserlab.denoisers import els_kernel, pspc_kernel

    assert (pspc_kernel.KERNEL_FOLDER / "els.c").is_file()
    assert "malloc(" not in inspect.getsource(els_kernel) and "els_part" in els_kernel.ELS_SIGNATURES
    assert not hasattr(pspc_kernel, "C_COMMON") and not hasattr(pspc_kernel, "__getattr__")
    assert '#include "common.h"' not in pspc_kernel.kernel_source("els.c")  # the shared header is read in


@pytest.mark.skipif(not kernel_available(), reason="no C compiler")
def test_kernel_function_has_its_declared_ctypes_signature():
    from denoiserlab.denoisers import els_kernel

    restype, argtypes = els_kernel.ELS_SIGNATURES["els_part"]
    function = load_library().els_part
    assert function.restype is restype and function.argtypes == argtypes and len(argtypes) == 23


def test_failed_build_falls_back_to_pytorch_once(monkeypatch, tmp_path):
    import warnings

    from denoiserlab.denoisers import pspc_kernel

    monkeypatch.setattr(pspc_kernel, "_libraries", {})
    monkeypatch.setattr(pspc_kernel, "_failures", {})
    monkeypatch.setattr(pspc_kernel, "_warned", set())
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lookups = []
    monkeypatch.setattr(pspc_kernel.shutil, "which", lambda name: lookups.append(name))  # no compiler anywhere
    train, generator = random_set(20, (1, 6, 6), 11)
    x = torch.randn(2, 1, 6, 6, generator=generator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [cls(train, 3)(x, 0.5) for cls in (ELS, LS, ELS)]
    assert len([w for w in caught if "falls back" in str(w.message)]) == 1 and lookups == ["gcc", "cc"]
    assert torch.allclose(outputs[0], ELS(train, 3, kernel="eager")(x, 0.5))
    with pytest.raises(DenoiserLabError, match="no C compiler"):  # kernel="compiled" asked for it: one clear error
        ELS(train, 3, kernel="compiled")(x, 0.5)


def test_on_a_gpu_the_eager_machine_takes_training_images_in_larger_chunks(monkeypatch):
    """The eager path's chunk of training images: an intermediate of LOCAL_CHUNK_BYTES on the CPU, of
    GPU_LOCAL_CHUNK_BYTES on another device (a GPU; `meta` stands in for one), where each chunk costs ~25 kernel
    launches per offset pair."""
    from denoiserlab.denoisers import local_score
    from denoiserlab.denoisers.training_set import TrainingImages

    asked = []

    def record(self, chunk_size, device="cpu"):
        asked.append(chunk_size)
        yield from ()  # no chunks: the size asked for is what is checked

    monkeypatch.setattr(TrainingImages, "chunks", record)
    images = TrainingImages(torch.rand(4, 3, 32, 32) * 2 - 1, False)
    for device in ("cpu", "meta"):
        x, sigma = torch.zeros(10, 3, 32, 32, device=device), torch.ones(10, device=device)
        rows = cols = local_score.zero_padded_axis(32, 1)
        local_score.local_partials(x, sigma, images, 3, rows, cols)
    per_image = 4 * 10 * 3 * 34 * 34  # float32 bytes of one training image's [B, C, H + 2r, W + 2r] slice
    assert asked == [local_score.LOCAL_CHUNK_BYTES // per_image, local_score.GPU_LOCAL_CHUNK_BYTES // per_image]
