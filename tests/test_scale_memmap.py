"""Issue 13 part 1, memory independent of N: uint8 .npy sets loaded memory-mapped, and denoisers that stream them."""

import os

import numpy as np
import pytest
import torch

from denoiserlab.data import load, uint8_to_float
from denoiserlab.errors import DenoiserLabError


def random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------- loading .npy


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NHWC-grey", "NHW"])
def test_npy_loads_as_the_same_images_in_float_with_labels(tmp_path, layout):
    nchw = random_uint8((7, 1 if layout in ("NHWC-grey", "NHW") else 3, 6, 5))
    stored = {"NCHW": nchw, "NHWC": nchw.transpose(0, 2, 3, 1), "NHWC-grey": nchw.transpose(0, 2, 3, 1),
              "NHW": nchw[:, 0]}[layout]
    np.save(tmp_path / "images.npy", stored)
    np.save(tmp_path / "labels.npy", np.arange(7, dtype=np.int32) % 3)
    np.savez(tmp_path / "same.npz", images=nchw)  # the same images through an existing loader
    loaded = load(tmp_path / "images.npy")
    assert loaded.uint8.shape == nchw.shape and loaded.uint8.dtype == torch.uint8
    torch.testing.assert_close(loaded.as_float(), uint8_to_float(torch.from_numpy(nchw)), rtol=0, atol=0)
    torch.testing.assert_close(loaded.as_float(), load(tmp_path / "same.npz").as_float(), rtol=0, atol=0)
    torch.testing.assert_close(loaded.as_float(2, 5), loaded.as_float()[2:5], rtol=0, atol=0)
    assert loaded.labels.dtype == torch.int64 and loaded.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_npy_images_stay_a_view_of_the_file(tmp_path):
    np.save(tmp_path / "images.npy", random_uint8((4, 6, 5, 3)))
    loaded = load(tmp_path / "images.npy")
    assert not loaded.uint8.is_contiguous()  # NHWC seen through a transposed view, not copied to NCHW
    on_disk = np.load(tmp_path / "images.npy", mmap_mode="r+")
    on_disk[2, 1, 1, 0] = 255 - on_disk[2, 1, 1, 0]  # written through a second map of the file
    on_disk.flush()
    assert int(loaded.uint8[2, 0, 1, 1]) == int(on_disk[2, 1, 1, 0])  # seen by the loaded set: it reads the file


def test_npy_without_labels_and_with_load_options(tmp_path):
    images = random_uint8((6, 1, 4, 4))
    np.save(tmp_path / "images.npy", images)
    assert load(tmp_path / "images.npy").labels is None
    flipped = load(tmp_path / "images.npy", subset=3, xflip=True, seed=1)
    assert flipped.uint8.shape == (6, 1, 4, 4)
    torch.testing.assert_close(flipped.uint8[3:], flipped.uint8[:3].flip(-1))
    cache = tmp_path / "cache"
    load(tmp_path / "images.npy", cache_dir=cache)  # already memory-mapped: nothing cached
    assert not cache.exists()


def write_object_npy(path):
    """A .npy whose header declares Python objects (written by hand: no pickle)."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": (2, 1, 4, 4)})
        handle.write(b"\0" * 256)


def write_npz_named_npy(path):
    """An .npz archive under a .npy name (np.savez would add .npz to a path, not to a handle)."""
    with open(path, "wb") as handle:
        np.savez(handle, images=random_uint8((3, 1, 4, 4)))


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "images.npy", random_uint8((3, 1, 4, 4)).astype(np.float32)), "uint8"),
    (lambda d: np.save(d / "images.npy", random_uint8((3, 16))), r"shape \[N, H, W\]"),
    (lambda d: np.save(d / "images.npy", random_uint8((3, 3, 4, 3))), "cannot tell whether channels"),
    (lambda d: np.save(d / "images.npy", np.asfortranarray(random_uint8((3, 1, 4, 4)))), "Fortran order"),
    (lambda d: (d / "images.npy").write_bytes(b""), "not a readable uint8 .npy"),
    (lambda d: (d / "images.npy").write_bytes(np.lib.format.magic(1, 0) + b"\x10\x00{'descr': '|u1'"),
     "not a readable uint8 .npy"),
    (lambda d: write_object_npy(d / "images.npy"), "not a readable uint8 .npy"),
    (lambda d: write_npz_named_npy(d / "images.npy"), "an archive"),
    (lambda d: os.mkfifo(d / "images.npy"), "not a regular file"),
    (lambda d: (np.save(d / "images.npy", random_uint8((3, 1, 4, 4))), np.save(d / "labels.npy", np.arange(4))),
     "must be 3 integer labels"),
    (lambda d: (np.save(d / "images.npy", random_uint8((3, 1, 4, 4))), np.save(d / "labels.npy", np.ones(3))),
     "must be 3 integer labels"),
    (lambda d: (np.save(d / "images.npy", random_uint8((3, 1, 4, 4))), (d / "labels.npy").write_bytes(b"junk")),
     "not a readable .npy file of labels"),
    (lambda d: (np.save(d / "images.npy", random_uint8((3, 1, 4, 4))), os.mkfifo(d / "labels.npy")),
     "labels.npy is not a regular file"),
    (lambda d: (np.save(d / "images.npy", random_uint8((3, 1, 4, 4))), (d / "labels.npy").mkdir()),
     "labels.npy is not a regular file"),
    (lambda d: np.save(d / "images.npy", random_uint8((0, 1, 4, 4))), "empty"),
])
def test_bad_npy_files_are_refused_naming_the_problem(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DenoiserLabError, match=message):
        load(tmp_path / "images.npy")


def test_npy_has_only_a_train_split(tmp_path):
    np.save(tmp_path / "images.npy", random_uint8((3, 1, 4, 4)))
    with pytest.raises(DenoiserLabError, match="no 'test' split"):
        load(tmp_path / "images.npy", split="test")


# ------------------------------------------------------------------------------ denoisers streaming the uint8 set


def memmapped_set(tmp_path, n_images, shape, seed=0, channels_last=False):
    """An ImageSet memory-mapped from a uint8 .npy of n_images random images of shape (C, H, W)."""
    images = random_uint8((n_images, *shape), seed)
    np.save(tmp_path / "images.npy", images.transpose(0, 2, 3, 1) if channels_last else images)
    return load(tmp_path / "images.npy")


@pytest.fixture
def reads(monkeypatch):
    """Record the number of images of every read the denoisers make of their training sets' storage."""
    from denoiserlab.denoisers.training_set import TrainingImages

    sizes = []
    read_stored = TrainingImages.read_stored

    def recording(self, start, stop, device="cpu"):
        images = read_stored(self, start, stop, device)
        sizes.append(images.shape[0])
        return images

    monkeypatch.setattr(TrainingImages, "read_stored", recording)
    return sizes


QUERY_SIGMAS = [0.002, torch.tensor([0.002, 0.3, 5.0])]  # one sigma for all, and one per sample


@pytest.mark.parametrize("sigma", QUERY_SIGMAS, ids=["0.002", "per-sample"])
@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_optimal_equals_ram_and_float64_reference(tmp_path, reads, sigma, xflip):
    from test_exact_denoisers import optimal_reference

    from denoiserlab.denoisers import OptimalDenoiser

    train = memmapped_set(tmp_path, 20, (3, 5, 4), channels_last=True)
    floats = train.as_float()
    flipped = torch.cat([floats, floats.flip(-1)]) if xflip else floats
    generator = torch.Generator().manual_seed(1)
    x = flipped[[3, 11, 17]] + 0.01 * torch.randn(3, 3, 5, 4, generator=generator)  # near training images
    x[2] = torch.randn(3, 5, 4, generator=generator)
    reads.clear()
    streamed = OptimalDenoiser(train, xflip=xflip, chunk_size=7, storage="stream")
    out = streamed(x, sigma)
    assert streamed.storage_ == "stream" and not hasattr(streamed, "train_flat_")
    assert max(reads) <= 7  # chunks only: never the whole set at once
    ram = OptimalDenoiser(train, xflip=xflip, chunk_size=7, storage="ram")(x, sigma)
    sigmas = sigma.tolist() if isinstance(sigma, torch.Tensor) else [sigma] * 3
    torch.testing.assert_close(out.double(), optimal_reference(flipped, x, sigmas), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, ram, rtol=0, atol=1e-6)
    weights = streamed.posterior_weights(x, sigma)
    assert weights.shape == (3, len(flipped)) and torch.allclose(weights.sum(1), torch.ones(3, dtype=torch.float64))


def test_storage_auto_and_bad_values(tmp_path, tiny_train, monkeypatch):
    from denoiserlab.denoisers import OptimalDenoiser, training_set
    from denoiserlab.denoisers.options import check_denoiser_options

    train = memmapped_set(tmp_path, 10, (1, 4, 4))
    assert OptimalDenoiser(train).storage_ == "ram"  # small: kept in memory as float64
    monkeypatch.setattr(training_set, "AUTO_RAM_BYTES", 8 * 10 * 16 - 1)
    assert OptimalDenoiser(train).storage_ == "stream"  # its float64 copy would exceed AUTO_RAM_BYTES
    assert OptimalDenoiser(tiny_train).storage_ == "ram"  # a float tensor is already in memory
    assert OptimalDenoiser(tiny_train, storage="stream").storage_ == "stream"
    for bad in ("disk", "", None, True):
        with pytest.raises(DenoiserLabError, match="storage must be one of"):
            OptimalDenoiser(train, storage=bad)
        with pytest.raises(DenoiserLabError, match="storage must be one of"):
            check_denoiser_options("optimal", {"storage": bad})


@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_gaussian_equals_float_tensor_and_float64_reference(tmp_path, monkeypatch, reads, xflip):
    from test_exact_denoisers import gaussian_reference

    from denoiserlab.denoisers import GaussianDenoiser, gaussian
    from denoiserlab.denoisers.training_set import training_source

    train = memmapped_set(tmp_path, 30, (1, 4, 5))
    floats = train.as_float()
    flipped = torch.cat([floats, floats.flip(-1)]) if xflip else floats
    reads.clear()
    source = training_source(train, xflip)
    counts, sums, _ = gaussian.moment_sums(source, chunk_images=7)
    mean = sums[0] / counts[0]
    (scatter,) = gaussian.centred_scatters(source, mean[None], [0], chunk_images=7)
    assert max(reads) <= 7
    flat = flipped.double().flatten(1)
    reference = sum(torch.outer(row - flat.mean(0), row - flat.mean(0)) for row in flat) / len(flat)
    torch.testing.assert_close(mean, flat.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(scatter / len(flat), reference, rtol=0, atol=1e-12)
    x = torch.randn(3, 1, 4, 5, generator=torch.Generator().manual_seed(2))
    for sigma in QUERY_SIGMAS:
        sigmas = sigma.tolist() if isinstance(sigma, torch.Tensor) else [sigma] * 3
        out = GaussianDenoiser(train, xflip=xflip)(x, sigma)
        torch.testing.assert_close(out.double(), gaussian_reference(flipped, x, sigmas), rtol=0, atol=1e-6)
        torch.testing.assert_close(out, GaussianDenoiser(flipped)(x, sigma), rtol=0, atol=1e-6)
    # the on-disk cache key of a streamed set is that of its float copy: one entry for both
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path / "cache"))
    GaussianDenoiser(train, xflip=xflip, cache=True), GaussianDenoiser(flipped, cache=True)
    assert len(list((tmp_path / "cache" / "gaussian").glob("*.safetensors"))) == 1


@pytest.mark.parametrize("method", ["pspc_square", "pspc_flex"])
@pytest.mark.parametrize("kernel", ["eager", "compiled"])
@pytest.mark.parametrize("cache_bytes", [0, 1 << 28])  # recompute crop distances in pass 2, or keep them
@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_pspc_equals_ram_and_float64_reference(tmp_path, monkeypatch, reads, method, kernel,
                                                        cache_bytes, xflip):
    from test_pspc import compiled_kernel_available, random_masks, reference_composite, square_crops

    from denoiserlab.denoisers import PSPCFlex, PSPCSquare, pspc_flex, pspc_kernel

    if kernel == "compiled" and not compiled_kernel_available():
        pytest.skip("C kernel cannot be built here")
    monkeypatch.setattr(pspc_kernel, "LOGIT_CACHE_BYTES", cache_bytes)
    monkeypatch.setattr(pspc_flex, "LOGIT_CACHE_BYTES", cache_bytes)
    train = memmapped_set(tmp_path, 37, (3, 6, 5), channels_last=True)  # 37: chunks of 16, 16 and a partial 5
    floats = train.as_float()
    flipped = torch.cat([floats, floats.flip(-1)]) if xflip else floats
    masks = random_masks(9, 6, 5, 1)
    crops = square_crops(6, 5, 3) if method == "pspc_square" else list(masks)

    def build(storage):
        options = dict(xflip=xflip, kernel=kernel, chunk_size=16, storage=storage)
        return PSPCSquare(train, 3, **options) if method == "pspc_square" else PSPCFlex(train, masks, **options)

    generator = torch.Generator().manual_seed(3)
    x = flipped[[2, 20, 36]] + 0.002 * torch.randn(3, 3, 6, 5, generator=generator)
    for sigma in QUERY_SIGMAS:
        sigmas = sigma if isinstance(sigma, torch.Tensor) else torch.full((3,), sigma)
        reads.clear()
        streamed = build("stream")
        out = streamed(x, sigma)
        assert streamed.storage_ == "stream" and not hasattr(streamed, "images_")
        assert max(reads) <= 16  # chunks only: never the whole set at once
        torch.testing.assert_close(out, build("ram")(x, sigma), rtol=0, atol=1e-6)
        reference = reference_composite(x, sigmas, flipped, crops)
        torch.testing.assert_close(out.double(), reference, rtol=0, atol=2e-5)


def test_streamed_chunks_are_whole_blocks_of_the_kernel():
    from denoiserlab.denoisers.pspc_kernel import LANES, streamed_chunk_images

    assert streamed_chunk_images((1, 28, 28), 1) == LANES
    assert streamed_chunk_images((1, 28, 28), 17) == 2 * LANES
    assert streamed_chunk_images((1, 28, 28)) % LANES == 0
    assert streamed_chunk_images((1, 28, 28)) * 4 * 784 <= (1 << 25) + 4 * 784 * LANES  # about 32 MiB of lanes


def test_lanes_from_uint8_equal_lanes_from_float_with_zero_padding():
    from denoiserlab.denoisers.pspc_kernel import training_lanes

    images = torch.from_numpy(random_uint8((37, 3, 4, 5)))
    expected = training_lanes(uint8_to_float(images))
    buffer = torch.full((4, 3, 4, 5, 16), float("nan"))  # a reused buffer: every value must be written
    for lanes in (training_lanes(images), training_lanes(images, blocks_per_copy=1),
                  training_lanes(images, out=buffer)):
        assert lanes.shape == (3, 3, 4, 5, 16) and torch.equal(lanes, expected)
    assert torch.equal(expected[2, ..., 5:], torch.zeros(3, 4, 5, 11))
