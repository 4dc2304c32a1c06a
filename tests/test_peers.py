"""CFDM, kNN, data-statistics locality and Gaussian mixtures against float64 loop references written here."""

import inspect
import math

import pytest
import torch

from denoiserlab.data import ImageSet, float_to_uint8
from denoiserlab.denoisers import (
    CFDM,
    REGISTRY,
    DataLocality,
    GaussianDenoiser,
    GaussianMixture,
    KNNDenoiser,
    OptimalDenoiser,
    SmoothingSchedule,
    ThresholdSchedule,
    tunable,
)
from denoiserlab.diffusion import standard_noise
from denoiserlab.errors import DenoiserLabError

SIGMAS = torch.tensor([0.05, 0.6, 3.0])
SHAPES = [(1, 8, 8), (3, 6, 6)]


def random_problem(shape, seed, n=20):
    """n training images in [-1, 1] and 3 noisy queries near the first three, at SIGMAS."""
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(n, *shape, generator=generator) * 2 - 1
    x = train[:3] + SIGMAS[:, None, None, None] * torch.randn(3, *shape, generator=generator)
    return train, x


def near_duplicates(shape, seed):
    """10 images and a copy of each 1e-3 away; queries 0.002 from three of them, sigmas 0.002 (twice) and 0.01."""
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(10, *shape, generator=generator) * 2 - 1
    train = torch.cat([train, train + 1e-3 * torch.randn(train.shape, generator=generator)])
    x = train[[0, 13, 7]] + 0.002 * torch.randn(3, *shape, generator=generator)
    return train, x, torch.tensor([0.002, 0.002, 0.01])


def softmax_mean(logits, rows):
    """sum_i softmax(logits)_i rows_i: [M], [M, ...] -> [...], float64."""
    weights = torch.exp(logits - logits.max())
    return sum(w * row for w, row in zip(weights, rows)) / weights.sum()


def optimal_reference(train, x, sigmas):
    train = train.double()
    return torch.stack([softmax_mean(torch.stack([-(q - t).square().sum() / (2 * s**2) for t in train]), train)
                        for q, s in zip(x.double(), sigmas)])


# ---------------------------------------------------------------- CFDM


def cfdm_reference(train, x, sigmas, smoothing, n_noise, seed):
    eps = standard_noise((n_noise, *x.shape[1:]), seed).double()
    out = []
    for q, s in zip(x.double(), sigmas):
        perturbed = [optimal_reference(train, (q + smoothing * e)[None], [s])[0] for e in eps]
        out.append(sum(perturbed) / n_noise)
    return torch.stack(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_cfdm_matches_reference(shape):
    train, x = random_problem(shape, 0)
    reference = cfdm_reference(train, x, SIGMAS.tolist(), 0.3, 4, 7)
    den = CFDM(train, smoothing=0.3, n_noise=4, seed=7, chunk_size=6)
    assert torch.allclose(den(x.double(), SIGMAS), reference, atol=1e-10)
    assert torch.allclose(den(x, SIGMAS).double(), reference, atol=1e-5)
    assert torch.equal(den(x, SIGMAS), den(x, SIGMAS))  # the perturbations are fixed


def test_cfdm_limits_small_sigma_xflip_and_schedule():
    train, x = random_problem((1, 8, 8), 1)
    assert torch.allclose(CFDM(train, smoothing=0)(x.double(), SIGMAS), OptimalDenoiser(train)(x.double(), SIGMAS),
                          atol=1e-12)
    dup, xd, small = near_duplicates((3, 6, 6), 2)
    out = CFDM(dup, smoothing=0.001, n_noise=3)(xd.double(), small)
    assert torch.allclose(out, cfdm_reference(dup, xd, small.tolist(), 0.001, 3, 0), atol=1e-6)
    schedule = SmoothingSchedule((0.5, 0.0, 0.1), sigma_min=0.05, sigma_max=3.0)
    out = CFDM(train, smoothing=schedule, n_noise=2, xflip=True)(x.double(), SIGMAS)
    flipped = torch.cat([train, train.flip(-1)])
    for b, sigma in enumerate(SIGMAS.tolist()):
        reference = cfdm_reference(flipped, x[b : b + 1], [sigma], schedule(sigma), 2, 0)
        assert torch.allclose(out[b : b + 1], reference, atol=1e-10)


# ---------------------------------------------------------------- kNN


def knn_reference(train, x, sigmas, k, n_random, order):
    """Exact neighbours by sorting all distances; random others = first n_random of `order` outside them."""
    flat, out = train.double().flatten(1), []
    n_images = flat.shape[0]
    for q, s in zip(x.double().flatten(1), sigmas):
        distances = torch.stack([(q - row).square().sum() for row in flat])
        neighbours = distances.argsort()[:k].tolist()
        others = [i for i in order.tolist() if i not in neighbours][:n_random]
        logits = [-distances[i] / (2 * s**2) for i in neighbours]
        logits += [-distances[i] / (2 * s**2) + math.log((n_images - k) / n_random) for i in others]
        out.append(softmax_mean(torch.stack(logits), flat[neighbours + others]))
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_knn_matches_reference(shape):
    train, x = random_problem(shape, 3)
    den = KNNDenoiser(train, k=5, n_random=6, seed=3, chunk_size=7)
    reference = knn_reference(train, x, SIGMAS.tolist(), 5, 6, den.order_)
    assert torch.allclose(den(x.double(), SIGMAS), reference, atol=1e-10)
    assert torch.allclose(den(x, SIGMAS).double(), reference, atol=1e-5)
    chosen, _ = den.chosen_images(x.double().flatten(1))
    assert all(len(set(row)) == 11 for row in chosen.tolist())  # neighbours and others are distinct


def test_knn_limits_small_sigma_and_xflip():
    train, x = random_problem((3, 6, 6), 4)
    optimal = OptimalDenoiser(train)(x.double(), SIGMAS)
    for k, n_random in [(20, 256), (50, 0), (12, 8), (0, 20)]:  # every image enters with weight 1
        assert torch.allclose(KNNDenoiser(train, k=k, n_random=n_random)(x.double(), SIGMAS), optimal, atol=1e-12)
    dup, xd, small = near_duplicates((1, 8, 8), 5)
    den = KNNDenoiser(dup, k=3, n_random=4, xflip=True)
    flipped = torch.cat([dup, dup.flip(-1)])
    assert torch.allclose(den(xd.double(), small), knn_reference(flipped, xd, small.tolist(), 3, 4, den.order_),
                          atol=1e-6)


def test_knn_random_others_are_uniform_over_the_rest():
    train, x = random_problem((1, 4, 4), 6, n=12)
    counts = torch.zeros(12)
    for seed in range(600):
        chosen, _ = KNNDenoiser(train, k=2, n_random=3, seed=seed).chosen_images(x[:1].double().flatten(1))
        counts[chosen[0, 2:]] += 1
    neighbours = chosen[0, :2]
    assert counts[neighbours].sum() == 0
    rest = counts[[i for i in range(12) if i not in neighbours.tolist()]]
    assert (rest - 180).abs().max() < 60  # expected 600 * 3 / 10 = 180 each, binomial sd ~ 11


def test_knn_faiss_index():
    train, x = random_problem((1, 8, 8), 7)
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(DenoiserLabError, match="faiss-cpu"):
            KNNDenoiser(train, index="faiss")
        return
    exact = KNNDenoiser(train, k=5, n_random=6)(x, SIGMAS)
    assert torch.allclose(KNNDenoiser(train, k=5, n_random=6, index="faiss")(x, SIGMAS), exact, atol=1e-6)


# ---------------------------------------------------------------- data-statistics locality


def wiener_matrix(train, sigma):
    """Explicit U diag(lambda / (lambda + sigma^2)) U^T of the biased covariance, float64 [D, D]."""
    flat = train.double().flatten(1)
    mean = flat.mean(0)
    covariance = sum(torch.outer(row - mean, row - mean) for row in flat) / flat.shape[0]
    eigvals, eigvecs = torch.linalg.eigh(covariance)
    matrix = torch.zeros_like(covariance)
    for lam, vector in zip(eigvals.clamp(min=0), eigvecs.T):
        matrix += lam / (lam + sigma**2) * torch.outer(vector, vector)
    return matrix


def data_locality_reference(train, x, sigmas, threshold):
    flat, out = train.double().flatten(1), []
    for q, s in zip(x.double().flatten(1), sigmas):
        matrix = wiener_matrix(train, s).abs()
        row = torch.zeros_like(q)
        for m in range(len(q)):
            mask = [n for n in range(len(q)) if n == m or matrix[m, n] >= threshold * matrix[m].max()]
            logits = -(q[mask] - flat[:, mask]).square().sum(1) / (2 * s**2)  # [N]
            row[m] = softmax_mean(logits, flat[:, m])
        out.append(row)
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_data_locality_matches_reference(shape):
    train, x = random_problem(shape, 8)
    reference = data_locality_reference(train, x, SIGMAS.tolist(), 0.2)
    den = DataLocality(train, threshold=0.2, chunk_size=7)
    assert torch.allclose(den(x.double(), SIGMAS), reference, atol=1e-10)
    assert torch.allclose(den(x, SIGMAS).double(), reference, atol=1e-4)


def test_data_locality_limits_small_sigma_xflip_and_schedule():
    train, x = random_problem((3, 6, 6), 9)
    optimal = OptimalDenoiser(train)(x.double(), SIGMAS)
    assert torch.allclose(DataLocality(train, threshold=0)(x.double(), SIGMAS), optimal, atol=1e-12)
    dup, xd, small = near_duplicates((1, 8, 8), 10)
    assert torch.allclose(DataLocality(dup, threshold=0.1)(xd.double(), small),
                          data_locality_reference(dup, xd, small.tolist(), 0.1), atol=1e-6)
    assert torch.allclose(DataLocality(dup, threshold=0.1)(xd, small).double(),
                          data_locality_reference(dup, xd, small.tolist(), 0.1), atol=1e-4)
    schedule = ThresholdSchedule((0.5, 0.05, 1.0), sigma_min=0.05, sigma_max=3.0)
    out = DataLocality(train, threshold=schedule, xflip=True)(x.double(), SIGMAS)
    flipped = torch.cat([train, train.flip(-1)])
    for b, sigma in enumerate(SIGMAS.tolist()):
        reference = data_locality_reference(flipped, x[b : b + 1], [sigma], schedule(sigma))
        assert torch.allclose(out[b : b + 1], reference, atol=1e-10)


# ---------------------------------------------------------------- Gaussian mixture


def mixture_reference(train, labels, x, sigmas, rank=None):
    """Explicit per-class mean, covariance (top-rank), weight; log N via slogdet and solve; float64."""
    flat, out = train.double().flatten(1), []
    dim = flat.shape[1]
    for q, s in zip(x.double().flatten(1), sigmas):
        log_weights, means = [], []
        for k in labels.unique():
            members = flat[labels == k]
            mean = members.mean(0)
            covariance = sum(torch.outer(row - mean, row - mean) for row in members) / len(members)
            if rank is not None:
                eigvals, eigvecs = torch.linalg.eigh(covariance)
                top = eigvals.argsort(descending=True)[:rank]
                covariance = eigvecs[:, top] @ torch.diag(eigvals[top].clamp(min=0)) @ eigvecs[:, top].T
            spread = covariance + s**2 * torch.eye(dim, dtype=torch.float64)
            offset = q - mean
            log_density = -0.5 * (offset @ torch.linalg.solve(spread, offset) + torch.linalg.slogdet(spread)[1])
            log_weights.append(math.log(len(members) / len(flat)) + log_density)
            means.append(mean + covariance @ torch.linalg.solve(spread, offset))
        out.append(softmax_mean(torch.stack(log_weights), means))
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [None, 5])
def test_gaussian_mixture_matches_reference(shape, rank):
    train, x = random_problem(shape, 11, n=24)
    labels = torch.arange(24) % 3
    reference = mixture_reference(train, labels, x, SIGMAS.tolist(), rank)
    den = GaussianMixture(train, labels=labels, rank=rank)
    assert torch.allclose(den(x.double(), SIGMAS), reference, atol=1e-10)
    assert torch.allclose(den(x, SIGMAS).double(), reference, atol=1e-5)


def test_gaussian_mixture_one_component_is_the_gaussian_denoiser():
    train, x = random_problem((3, 6, 6), 12)
    for rank in (None, 7):
        gaussian = GaussianDenoiser(train, rank=rank)(x.double(), SIGMAS)
        assert torch.allclose(GaussianMixture(train, components=1, rank=rank)(x.double(), SIGMAS), gaussian,
                              atol=1e-12)
        assert torch.allclose(GaussianMixture(train, labels=torch.zeros(20, dtype=torch.int64), rank=rank)(
            x.double(), SIGMAS), gaussian, atol=1e-12)


def test_gaussian_mixture_labels_from_imageset_xflip_and_small_sigma():
    train, x = random_problem((1, 8, 8), 13)
    images = float_to_uint8(train)
    labels = torch.arange(20) % 4
    imageset = ImageSet(images, labels, "tiny")
    exact_train = imageset.as_float()
    out = GaussianMixture(imageset, xflip=True)(x.double(), SIGMAS)
    reference = mixture_reference(torch.cat([exact_train, exact_train.flip(-1)]), torch.cat([labels, labels]), x,
                                  SIGMAS.tolist())
    assert torch.allclose(out, reference, atol=1e-10)
    dup, xd, small = near_duplicates((1, 8, 8), 14)
    dup_labels = torch.arange(20) % 2
    assert torch.allclose(GaussianMixture(dup, labels=dup_labels)(xd.double(), small),
                          mixture_reference(dup, dup_labels, xd, small.tolist()), atol=1e-6)


@pytest.mark.parametrize("sigma", [1e-9, 1e-170])
def test_gaussian_mixture_small_sigma_limit_is_the_own_component(sigma):
    # 5 images per class in 64 dimensions: each image lies in the affine span of its own class and outside the others,
    # so as sigma -> 0 its own class takes all the weight and projects the image onto itself
    train, _ = random_problem((1, 8, 8), 20)
    labels = torch.arange(20) % 4
    out = GaussianMixture(train, labels=labels)(train[:3].double(), sigma)
    assert torch.allclose(out, train[:3].double(), atol=1e-8)


def test_gaussian_mixture_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(15)
    centres = torch.tensor([-0.8, 0.0, 0.8])
    truth = torch.arange(30) % 3
    train = centres[truth][:, None, None, None] + 0.05 * torch.randn(30, 1, 4, 4, generator=generator)
    den = GaussianMixture(train, components=3, seed=2)
    assert len(set(zip(den.labels_.tolist(), truth.tolist()))) == 3  # the same partition, up to renaming
    x = torch.randn(3, 1, 4, 4, generator=generator)
    labelled = GaussianMixture(train, labels=truth)(x.double(), SIGMAS)
    assert torch.allclose(den(x.double(), SIGMAS), labelled, atol=1e-10)
    assert torch.equal(den.labels_, GaussianMixture(train, components=3, seed=2).labels_)


# ---------------------------------------------------------------- options and declarations


def test_bad_options_raise_one_clear_error():
    train = torch.zeros(6, 1, 4, 4)
    cases = [
        (lambda: CFDM(train, smoothing=-0.1), "smoothing"),
        (lambda: CFDM(train, n_noise=0), "n_noise"),
        (lambda: DataLocality(train, threshold=1.5), "threshold"),
        (lambda: KNNDenoiser(train, k=-1), "k must be"),
        (lambda: KNNDenoiser(train, index="annoy"), "index"),
        (lambda: GaussianMixture(train), "needs class labels"),
        (lambda: GaussianMixture(train, labels=torch.zeros(5, dtype=torch.int64)), "labels must be"),
        (lambda: GaussianMixture(train, components=2, labels=torch.zeros(6, dtype=torch.int64)), "labels="),
        (lambda: GaussianMixture(train, components=7), "at least as many"),
        (lambda: GaussianMixture(train, components=0), "components"),
        (lambda: GaussianMixture(train, components=1, rank=17), "rank"),
    ]
    for build, message in cases:
        with pytest.raises(DenoiserLabError, match=message):
            build()


# registry name -> [(options, what the one-line error names)], beyond test_bad_options_raise_one_clear_error
BAD_OPTIONS = {
    "cfdm": [({"smoothing": math.nan}, "smoothing"), ({"smoothing": math.inf}, "smoothing"),
             ({"smoothing": True}, "smoothing"), ({"n_noise": True}, "n_noise"), ({"n_noise": 2.5}, "n_noise"),
             ({"seed": -1}, "seed"), ({"seed": 2**70}, "seed"), ({"seed": True}, "seed"), ({"xflip": "no"}, "xflip"),
             ({"chunk_size": 0}, "chunk_size"), ({"chunk_size": 2.5}, "chunk_size")],
    "data_locality": [({"threshold": math.nan}, "threshold"), ({"threshold": -0.1}, "threshold"),
                      ({"threshold": True}, "threshold"), ({"xflip": 1}, "xflip"), ({"cache": "yes"}, "cache"),
                      ({"chunk_size": True}, "chunk_size")],
    "knn": [({"k": True}, "k must be"), ({"k": 2.5}, "k must be"), ({"n_random": -3}, "n_random"),
            ({"k": 0, "n_random": 0}, "k \\+ n_random"), ({"seed": -1}, "seed"), ({"xflip": "no"}, "xflip"),
            ({"chunk_size": -2}, "chunk_size")],
    "gaussian_mixture": [({"components": 0}, "components"), ({"components": True}, "components"),
                         ({"components": "kmeans"}, "components"), ({"rank": True}, "rank"), ({"rank": 0}, "rank"),
                         ({"rank": 2.5}, "rank"), ({"seed": 2**70}, "seed"), ({"xflip": None}, "xflip"),
                         ({"cache": 1}, "cache")],
}


@pytest.mark.parametrize("name,options,message", [(name, options, message) for name, cases in BAD_OPTIONS.items()
                                                  for options, message in cases])
def test_bad_options_are_refused_when_the_config_loads_and_at_construction(name, options, message):
    from denoiserlab.denoisers.options import check_denoiser_options

    with pytest.raises(DenoiserLabError, match=message):
        check_denoiser_options(name, options)  # before any data, as a study config is checked
    labels = {"labels": torch.arange(6) % 2} if name == "gaussian_mixture" and "components" not in options else {}
    with pytest.raises(DenoiserLabError, match=message) as raised:
        REGISTRY[name](torch.zeros(6, 1, 4, 4), **options, **labels)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name,options", [("cfdm", {"n_noise": 2}), ("data_locality", {}), ("knn", {"k": 3}),
                                          ("gaussian_mixture", {"components": 2})])
def test_outputs_are_checked(name, options, monkeypatch):
    train, x = random_problem((1, 6, 6), 18)
    den = REGISTRY[name](train, **options)
    monkeypatch.setattr(torch, "einsum", lambda *args: torch.full((3, 36), math.nan, dtype=torch.float64))
    nan_sums = lambda queries: torch.full(queries.shape, math.nan, dtype=torch.float64)  # noqa: E731
    monkeypatch.setattr("denoiserlab.denoisers.optimal.posterior_partials",
                        lambda queries, *args: (queries[:, :1] * 0, queries[:, :1] * 0 + 1, nan_sums(queries)))
    monkeypatch.setattr("denoiserlab.denoisers.data_locality.masked_posterior_partials",
                        lambda queries, *args: (queries * 0, queries * 0 + 1, nan_sums(queries), None))
    with pytest.raises(DenoiserLabError, match="returned NaN or inf"):
        den(x, 0.5)


def test_data_locality_masks_come_from_the_gaussian_denoisers_linear_map():
    train, _ = random_problem((1, 6, 6), 19)
    den = DataLocality(train, threshold=0.2)
    for sigma in (1e-170, 0.6, 1e200):  # finite gains at any sigma: a projection, a filter, nothing (the diagonal)
        linear_map = GaussianDenoiser(train).linear_map(sigma)
        magnitude = linear_map.abs()
        expected = (magnitude >= 0.2 * magnitude.amax(1, keepdim=True)).fill_diagonal_(True)
        assert torch.equal(den.mask(sigma), expected)
    assert torch.equal(den.mask(1e200), torch.eye(36, dtype=torch.bool) | True)  # A = 0: every |A| >= 0.2 * 0


def test_locality_and_mixture_reuse_the_gaussian_eigendecomposition_cache(tmp_path, monkeypatch):
    # one safetensors file per eigendecomposition in the Gaussian denoiser's user-cache folder, read back as untrusted:
    # a damaged or planted file is recomputed, never trusted or executed
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path))
    train, x = random_problem((1, 6, 6), 21)
    labels = torch.arange(20) % 2
    locality, mixture = DataLocality(train)(x, SIGMAS), GaussianMixture(train, labels=labels)(x, SIGMAS)
    assert not (tmp_path / "gaussian").exists()  # nothing written unless asked
    assert torch.equal(DataLocality(train, cache=True)(x, SIGMAS), locality)
    assert torch.equal(GaussianMixture(train, labels=labels, cache=True)(x, SIGMAS), mixture)
    files = sorted((tmp_path / "gaussian").glob("*.safetensors"))
    assert len(files) == 3  # the whole set, and each of the two classes
    for path in files:
        path.write_bytes(b"not safetensors")
    assert torch.equal(DataLocality(train, cache=True)(x, SIGMAS), locality)
    assert torch.equal(GaussianMixture(train, labels=labels, cache=True)(x, SIGMAS), mixture)
    assert all(path.read_bytes() != b"not safetensors" for path in files)  # rewritten (atomically) once recomputed
    assert torch.equal(DataLocality(train, cache=False)(x, SIGMAS), locality)


def test_tunable_declarations():
    for name, cls in REGISTRY.items():
        declared = tunable(name)
        assert declared is cls.tunable
        if declared is not None and name != "pspc_flex":  # PSPC-Flex's threshold is turned into masks by a study
            assert declared.name in inspect.signature(cls).parameters
    assert {name for name in REGISTRY if tunable(name)} == {"pspc_square", "pspc_flex", "els", "ls", "data_locality",
                                                            "cfdm"}
    assert tunable("pspc_square").candidates == (1, 3, 5, 7, 9, 11, 15, 19, 23, 28, 32)
    assert all(size % 2 == 1 for size in tunable("els").candidates + tunable("ls").candidates)


@pytest.mark.parametrize("name,options", [("cfdm", {"n_noise": 2}), ("els", {"patch_size": 3, "padding": "circular"}),
                                          ("ls", {"patch_size": 3}), ("data_locality", {}), ("knn", {"k": 20}),
                                          ("gaussian_mixture", {"components": 2})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_sigmas_give_finite_limits(name, options, dtype):
    train, x = random_problem((1, 6, 6), 16)
    den = REGISTRY[name](train, **options)
    # sigma -> inf: every candidate weighs the same; circular ELS takes every pixel of every image
    mean = train.double().mean((0, 2, 3), keepdim=True) if name == "els" else train.double().mean(0, keepdim=True)
    assert torch.allclose(den(x.to(dtype), 1e200).double(), mean.expand(3, 1, 6, 6), atol=1e-5)
    for tiny in (1e-20, 1e-170):  # 1e-170: sigma^2 underflows in float64 too
        assert torch.isfinite(den(x.to(dtype), tiny)).all()
        if name in ("els", "ls", "knn"):  # their posteriors collapse onto the nearest candidate
            nearest = train[:3] + 1e-3 * torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(17))
            assert torch.allclose(den(nearest.to(dtype), tiny).double(), train[:3].double(), atol=1e-6)
