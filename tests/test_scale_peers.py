"""Issue 13 part 1 for the peers: CFDM, kNN, ELS / LS, DataLocality, the Gaussian mixture and patch_posterior read a
memory-mapped uint8 set chunk by chunk and give what they give from a float copy in memory."""

import importlib

import numpy as np
import pytest
import torch
from test_local_score import KERNELS
from test_scale_memmap import QUERY_SIGMAS, memmapped_set, reads  # noqa: F401 (reads: a fixture)

from denoiserlab.denoisers import CFDM, ELS, LS, DataLocality, GaussianMixture, KNNDenoiser, patch_posterior
from denoiserlab.denoisers.options import check_denoiser_options
from denoiserlab.errors import DenoiserLabError

SHAPE = (3, 6, 5)  # C, H, W
N_IMAGES = 37  # with chunks of 16: 16, 16 and a partial 5 (and more with flips)


def queries_near(images, seed=3):
    """3 queries: two near training images (2 and 20) at sigma = 0.002, one far from every image."""
    generator = torch.Generator().manual_seed(seed)
    x = images[[2, 20, 20]] + 0.002 * torch.randn(3, *images.shape[1:], generator=generator)
    x[2] = torch.randn(images.shape[1:], generator=generator)
    return x


def flipped_floats(train, xflip):
    floats = train.as_float()
    return torch.cat([floats, floats.flip(-1)]) if xflip else floats


def assert_streamed_equals_ram(tmp_path, reads, build, xflip, chunk):  # noqa: F811
    """build(train, storage) -> a denoiser: streamed from the memory-mapped set (its calls read no more than `chunk`
    images at a time) it gives the in-RAM answer at sigma = 0.002 and at one sigma per sample."""
    train = memmapped_set(tmp_path, N_IMAGES, SHAPE, channels_last=True)
    x = queries_near(flipped_floats(train, xflip))
    for sigma in QUERY_SIGMAS:
        streamed = build(train, "stream")
        reads.clear()
        out = streamed(x, sigma)
        assert streamed.storage_ == "stream" and max(reads) <= chunk
        ram = build(train, "ram")
        assert ram.storage_ == "ram"
        torch.testing.assert_close(out, ram(x, sigma), rtol=0, atol=1e-6)


@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_cfdm_equals_ram(tmp_path, reads, xflip):  # noqa: F811
    build = lambda train, storage: CFDM(train, smoothing=0.05, n_noise=3, xflip=xflip, chunk_size=7, storage=storage)
    assert_streamed_equals_ram(tmp_path, reads, build, xflip, 7)


@pytest.mark.parametrize("xflip", [False, True])
@pytest.mark.parametrize("k", [3, 200])  # a screen that misses images (certified), and one that keeps them all
def test_streamed_knn_equals_ram(tmp_path, reads, xflip, k):  # noqa: F811
    build = lambda train, storage: KNNDenoiser(train, k=k, n_random=5, xflip=xflip, chunk_size=7, storage=storage)
    assert_streamed_equals_ram(tmp_path, reads, build, xflip, 7)


def test_streamed_knn_float64_search_is_the_same(tmp_path, reads, monkeypatch):  # noqa: F811
    # a screen bound that never certifies sends every query to the streamed float64 search
    from denoiserlab.denoisers import knn

    monkeypatch.setattr(knn, "screen_bound", lambda queries, norms: torch.full((queries.shape[0],), torch.inf))
    build = lambda train, storage: KNNDenoiser(train, k=3, n_random=5, chunk_size=7, storage=storage)
    assert_streamed_equals_ram(tmp_path, reads, build, False, 7)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", ["els_zeros", "els_circular", "ls"])
@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_local_score_machines_equal_ram(tmp_path, reads, kernel, method, xflip):  # noqa: F811
    def build(train, storage):
        options = dict(xflip=xflip, kernel=kernel, chunk_size=16, storage=storage)
        if method == "ls":
            return LS(train, 3, **options)
        return ELS(train, 3, padding=method.removeprefix("els_"), **options)

    assert_streamed_equals_ram(tmp_path, reads, build, xflip, 16)


@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_data_locality_equals_ram(tmp_path, reads, xflip):  # noqa: F811
    build = lambda train, storage: DataLocality(train, threshold=0.1, xflip=xflip, chunk_size=7, storage=storage)
    assert_streamed_equals_ram(tmp_path, reads, build, xflip, 7)


@pytest.mark.parametrize("components", ["labels", 3])
@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_gaussian_mixture_equals_float_tensor(tmp_path, monkeypatch, reads, components, xflip):  # noqa: F811
    # the mixture keeps no images: its passes (k-means steps, per-component sums) always read chunks of the storage
    from denoiserlab.denoisers import gaussian_mixture

    np.save(tmp_path / "labels.npy", np.arange(N_IMAGES) % 3)
    train = memmapped_set(tmp_path, N_IMAGES, SHAPE, channels_last=True)
    floats = flipped_floats(train, xflip)
    x = queries_near(floats).double()
    monkeypatch.setattr(gaussian_mixture, "CHUNK_IMAGES", 7)
    reads.clear()
    streamed = GaussianMixture(train, components=components, xflip=xflip)
    assert max(reads) <= 7
    monkeypatch.setattr(gaussian_mixture, "CHUNK_IMAGES", 4096)
    labels = None if components != "labels" else train.labels.repeat(2 if xflip else 1)
    in_ram = GaussianMixture(floats, components=components, labels=labels)  # the flipped copies given as images
    assert torch.equal(streamed.labels_, in_ram.labels_)
    for sigma in QUERY_SIGMAS:
        torch.testing.assert_close(streamed(x, sigma), in_ram(x, sigma), rtol=0, atol=1e-6)


@pytest.mark.parametrize("xflip", [False, True])
def test_streamed_patch_posterior_equals_float_tensor(tmp_path, monkeypatch, reads, xflip):  # noqa: F811
    module = importlib.import_module("denoiserlab.denoisers.patch_posterior")  # the package exports the function

    train = memmapped_set(tmp_path, N_IMAGES, SHAPE, channels_last=True)
    floats = flipped_floats(train, xflip)
    x = queries_near(floats)
    crop = torch.zeros(6, 5, dtype=torch.bool)
    crop[1:4, 2:5] = True
    monkeypatch.setattr(module, "CHUNK_IMAGES", 7)
    for sigma in QUERY_SIGMAS:
        reads.clear()
        mean, weights = patch_posterior(x, sigma, train, crop, xflip=xflip, return_weights=True)
        assert max(reads) <= 7
        whole_mean, whole_weights = patch_posterior(x, sigma, floats, crop, return_weights=True)
        torch.testing.assert_close(mean, whole_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(weights, whole_weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["cfdm", "knn", "els", "ls", "data_locality"])
def test_peer_storage_option_is_checked_and_auto_streams_large_sets(tmp_path, monkeypatch, name):
    from denoiserlab.denoisers import REGISTRY, training_set

    options = {"els": {"patch_size": 3}, "ls": {"patch_size": 3}}.get(name, {})
    for bad in ("disk", "", None, True):
        with pytest.raises(DenoiserLabError, match="storage must be one of"):
            check_denoiser_options(name, {**options, "storage": bad})
    train = memmapped_set(tmp_path, 10, (1, 4, 4))
    assert REGISTRY[name](train, **options).storage_ == "ram"  # small: converted once
    monkeypatch.setattr(training_set, "AUTO_RAM_BYTES", 0)
    assert REGISTRY[name](train, **options).storage_ == "stream"
    assert REGISTRY[name](train.as_float(), **options).storage_ == "ram"  # a float tensor is in memory already
