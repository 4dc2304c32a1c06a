"""OptimalDenoiser and GaussianDenoiser against slow float64 references written here."""

import pytest
import torch

from denoiserlab.data import load
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser, create
from denoiserlab.errors import DenoiserLabError


def optimal_reference(train, x, sigmas):
    """Softmax over all N images, one query at a time, float64 loops."""
    train = train.double().reshape(train.shape[0], -1)
    out = []
    for query, sigma in zip(x.double().reshape(x.shape[0], -1), sigmas):
        logits = torch.stack([-((query - image) ** 2).sum() / (2 * sigma**2) for image in train])
        weights = torch.softmax(logits, 0)
        out.append(sum(w * image for w, image in zip(weights, train)))
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("sigma", [0.002, 0.05, 0.3, 1.0, 5.0, 80.0])
def test_optimal_matches_softmax_reference(tiny_rgb_train, sigma):
    generator = torch.Generator().manual_seed(3)
    x = tiny_rgb_train[:4] + sigma * torch.randn(4, 3, 5, 5, generator=generator)
    ours = OptimalDenoiser(tiny_rgb_train, chunk_size=4)(x, sigma)  # several chunks exercise the running LSE
    reference = optimal_reference(tiny_rgb_train, x, [sigma] * 4)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours.double(), reference, atol=1e-5)


def test_optimal_per_sample_sigma_and_xflip(tiny_train):
    sigmas = torch.tensor([0.01, 0.4, 2.0])
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    ours = OptimalDenoiser(tiny_train, xflip=True, chunk_size=7)(x, sigmas)
    flipped_set = torch.cat([tiny_train, tiny_train.flip(-1)])
    assert torch.allclose(ours.double(), optimal_reference(flipped_set, x, sigmas.tolist()), atol=1e-5)


def test_optimal_limits(tiny_train):
    den = OptimalDenoiser(tiny_train)
    # sigma -> 0: the nearest training image
    x = tiny_train[[5, 9]] + 1e-3 * torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(den(x, 0.002), tiny_train[[5, 9]], atol=1e-6)
    # sigma -> infinity: the data mean
    assert torch.allclose(den(torch.zeros(1, 1, 6, 6), 1e4)[0], tiny_train.mean(0), atol=1e-5)


def test_optimal_small_sigma_is_exact_on_real_data():
    train = load("fashion-mnist", subset=300).as_float()
    x = train[:8] + 0.002 * torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    out = OptimalDenoiser(train)(x, 0.002)
    reference = optimal_reference(train, x, [0.002] * 8)
    assert torch.allclose(out.double(), reference, atol=1e-6)


def test_optimal_keeps_dtype(tiny_train):
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    assert OptimalDenoiser(tiny_train)(x, 0.5).dtype == torch.float64


def gaussian_reference(train, x, sigmas, rank=None):
    """Explicit [d, d] Wiener matrix mu + Sigma_r (Sigma_r + sigma^2 I)^+ ... built from an eigendecomposition in float64."""
    flat = train.double().reshape(train.shape[0], -1)
    mean = flat.mean(0)
    covariance = sum(torch.outer(row - mean, row - mean) for row in flat) / flat.shape[0]
    eigvals, eigvecs = torch.linalg.eigh(covariance)
    order = eigvals.argsort(descending=True)[: rank or len(eigvals)]
    out = []
    for query, sigma in zip(x.double().reshape(x.shape[0], -1), sigmas):
        matrix = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
        for k in order:
            lam = eigvals[k].clamp(min=0)
            matrix += lam / (lam + sigma**2) * torch.outer(eigvecs[:, k], eigvecs[:, k])
        out.append(mean + matrix @ (query - mean))
    return torch.stack(out).reshape(x.shape)


def test_gaussian_full_rank_equals_wiener_filter(tiny_train):
    # With sigma^2 > 0 and full rank, D = mu + Sigma (Sigma + sigma^2 I)^{-1} (x - mu).
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sigmas = torch.tensor([0.1, 1.0, 3.0])
    ours = GaussianDenoiser(tiny_train, cache=False)(x, sigmas)
    flat = tiny_train.double().reshape(20, -1)
    mean = flat.mean(0)
    covariance = (flat - mean).T @ (flat - mean) / 20
    for i, sigma in enumerate(sigmas.tolist()):
        wiener = covariance @ torch.linalg.inv(covariance + sigma**2 * torch.eye(36, dtype=torch.float64))
        expected = mean + wiener @ (x[i].reshape(-1) - mean)
        assert torch.allclose(ours[i].reshape(-1), expected, atol=1e-8)


def test_gaussian_rank_matches_reference(tiny_train):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(8))
    ours = GaussianDenoiser(tiny_train, rank=5, cache=False)(x, 0.7)
    assert torch.allclose(ours.double(), gaussian_reference(tiny_train, x, [0.7, 0.7], rank=5), atol=1e-5)


def test_gaussian_is_exact_posterior_mean_for_gaussian_data():
    # For x0 ~ N(mu, C) the posterior mean is mu + C (C + sigma^2 I)^{-1} (x - mu); with many samples the
    # empirical estimate converges to it.
    generator = torch.Generator().manual_seed(9)
    factor = torch.randn(4, 4, generator=generator, dtype=torch.float64) * 0.3
    covariance = factor @ factor.T + 0.05 * torch.eye(4, dtype=torch.float64)
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    samples = mean + torch.randn(200_000, 4, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(covariance).T
    den = GaussianDenoiser(samples.float().reshape(-1, 1, 2, 2), cache=False)
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    exact = mean + (covariance @ torch.linalg.inv(covariance + 0.25 * torch.eye(4, dtype=torch.float64)) @ (x - mean).T).T
    assert torch.allclose(den(x.reshape(3, 1, 2, 2), 0.5).reshape(3, 4), exact, atol=1e-2)


def test_gaussian_cache_is_off_by_default_and_round_trips(tiny_train, tmp_path, monkeypatch):
    from denoiserlab.denoisers import gaussian

    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path))
    reference = GaussianDenoiser(tiny_train)
    assert not (tmp_path / "gaussian").exists()  # nothing written unless asked
    first = GaussianDenoiser(tiny_train, cache=True)
    files = list((tmp_path / "gaussian").glob("*.safetensors"))
    assert len(files) == 1 and torch.equal(first.eigvecs_, reference.eigvecs_)
    recomputed = []
    monkeypatch.setattr(gaussian, "centred_scatters", lambda images, means, wanted, *args: recomputed.extend(wanted))
    second = GaussianDenoiser(tiny_train, cache=True)  # read back: no covariance wanted
    assert recomputed == [] and torch.equal(first.eigvecs_, second.eigvecs_)
    monkeypatch.undo()
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path))
    files[0].write_bytes(b"corrupt")  # a corrupt cache entry is recomputed, not trusted
    third = GaussianDenoiser(tiny_train, cache=True)
    assert torch.allclose(third.eigvals_, first.eigvals_)


def test_gaussian_cache_tells_apart_sets_with_the_same_pixel_sums(tmp_path, monkeypatch):
    # values k / 8 sum exactly in float64 whatever the order, so both sets have bit-identical per-pixel sums; the
    # second swaps the left halves of two images (a patch-shuffling control): same sums, another covariance
    from denoiserlab.denoisers.gaussian import moment_sums
    from denoiserlab.denoisers.training_set import training_source

    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path))
    train = torch.randint(-8, 9, (12, 1, 4, 4), generator=torch.Generator().manual_seed(2)).float() / 8
    swapped = train.clone()
    swapped[0, ..., :2], swapped[1, ..., :2] = train[1, ..., :2], train[0, ..., :2]
    assert torch.equal(moment_sums(training_source(train))[1], moment_sums(training_source(swapped))[1])
    first, second = GaussianDenoiser(train, cache=True), GaussianDenoiser(swapped, cache=True)
    assert len(list((tmp_path / "gaussian").glob("*.safetensors"))) == 2  # two keys: the sketch sees the swap
    assert not torch.allclose(first.eigvals_, second.eigvals_)
    assert torch.equal(second.eigvals_, GaussianDenoiser(swapped).eigvals_)


def test_gaussian_rank_out_of_range(tiny_train):
    with pytest.raises(DenoiserLabError, match="rank"):
        GaussianDenoiser(tiny_train, rank=0, cache=False)


def test_registry_builds_by_name(tiny_train):
    assert isinstance(create("optimal", tiny_train), OptimalDenoiser)
    assert isinstance(create("gaussian", tiny_train, rank=3), GaussianDenoiser)
    with pytest.raises(DenoiserLabError, match="valid names"):
        create("nope", tiny_train)
    with pytest.raises(DenoiserLabError, match="unknown option"):
        create("optimal", tiny_train, bogus=1)


def test_imageset_is_accepted_as_train():
    images = load("fashion-mnist", subset=50)
    den = OptimalDenoiser(images)
    assert den.train_flat_.shape == (50, 784)


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_exact_denoisers_on_cuda(tiny_rgb_train):
    x = torch.randn(3, 3, 5, 5)
    for den in (OptimalDenoiser(tiny_rgb_train), GaussianDenoiser(tiny_rgb_train, cache=False)):
        out = den(x.cuda(), torch.tensor([0.1, 1.0, 10.0]).cuda())
        assert out.device.type == "cuda"
        assert torch.allclose(out.cpu(), den(x, torch.tensor([0.1, 1.0, 10.0])), atol=1e-5)


@pytest.mark.parametrize("sigma", [1e-170, 1e200])
def test_gaussian_linear_map_at_extreme_sigma_uses_the_denoisers_gains(sigma):
    train = torch.rand(6, 1, 5, 5, generator=torch.Generator().manual_seed(7)) * 2 - 1  # rank 5 in 25 dimensions
    den = GaussianDenoiser(train, cache=False)
    span = den.eigvecs_[:, :5]
    expected = span @ span.T if sigma < 1 else torch.zeros(25, 25, dtype=torch.float64)  # projection, or nothing
    matrix = den.linear_map(sigma)
    assert torch.isfinite(matrix).all() and torch.allclose(matrix, expected, atol=1e-12)
    x = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert torch.allclose(den.mean_ + (x.flatten(1) - den.mean_) @ matrix.T, den(x, sigma).flatten(1), atol=1e-12)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), True])
def test_gaussian_linear_map_refuses_a_bad_sigma(sigma):
    den = GaussianDenoiser(torch.rand(6, 1, 5, 5) * 2 - 1, cache=False)
    with pytest.raises(DenoiserLabError, match="sigma"):
        den.linear_map(sigma)


def test_on_a_gpu_the_optimal_denoiser_walks_its_resident_copy_in_few_large_chunks():
    """On the CPU, 32 MiB views (cache-sized steps); on any other device (a GPU; `meta` stands in for one here) views
    of up to GPU_CHUNK_BYTES, so a call launches a dozen kernels rather than a dozen per 32 MiB."""
    from denoiserlab.distances import GPU_CHUNK_BYTES, chunk_bytes_on

    den = OptimalDenoiser(torch.rand(1500, 3, 32, 32) * 2 - 1)  # 36.9 MB as float64: two CPU steps
    assert [len(rows) for rows, _ in den.train_rows(torch.device("cpu"))] == [1365, 135]
    assert [len(rows) for rows, _ in den.train_rows(torch.device("meta"))] == [1500]
    assert chunk_bytes_on("cuda", 1 << 25) == GPU_CHUNK_BYTES and chunk_bytes_on("cpu", 1 << 25) == 1 << 25
    assert chunk_bytes_on("cuda:1", 1 << 21, 1 << 28) == 1 << 28
