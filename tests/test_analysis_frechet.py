"""Fréchet distance of feature sets, the shipped Fashion-MNIST feature model, and the classifier that made it."""

import numpy as np
import pytest
import torch

from denoiserlab import data
from denoiserlab.analysis import feature_frechet_distance, frechet_distance, image_features, load_feature_model
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.classifier import ClassifierConfig, export_feature_model, train_classifier

SHIPPED = "shipped:fashion-mnist-classifier.pt"


def reference_frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Slow float64 reference: tr sqrt(C_a C_b) from the eigenvalues of the (non-symmetric) product itself."""
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)  # real and >= 0 up to rounding: similar to a PSD matrix
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.sqrt(np.clip(eigenvalues.real, 0, None)).sum())


def correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    """n samples [n, dim] of a random correlated Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    mixing, mean = torch.randn(dim + 1, dim, generator=generator, dtype=torch.float64).split([dim, 1])
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing + mean


@pytest.mark.parametrize("n_a, n_b, dim", [(50, 80, 6), (30, 30, 40), (200, 150, 3)])
def test_frechet_distance_matches_the_eigenvalue_reference(n_a, n_b, dim):
    a, b = correlated(n_a, dim, seed=1), correlated(n_b, dim, seed=2)
    assert frechet_distance(a, b) == pytest.approx(reference_frechet(a.numpy(), b.numpy()), rel=1e-8, abs=1e-8)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(frechet_distance(a, b), rel=1e-4)


def walsh_features(scales: list[float], means: list[float]) -> torch.Tensor:
    """8 samples [8, F] whose sample covariance is exactly diagonal: orthogonal +-1 Walsh columns, scaled, shifted."""
    hadamard = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(3):
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)])  # [8, 8]
    return hadamard[:, 1:len(scales) + 1] * torch.tensor(scales, dtype=torch.float64) + torch.tensor(means)


def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    """Diagonal covariances: |mu_a - mu_b|^2 + sum_i (s_a,i - s_b,i)^2 with s the standard deviations."""
    scales_a, scales_b = [1.0, 0.5, 3.0], [2.0, 0.5, 0.1]
    a, b = walsh_features(scales_a, [0.0, 1.0, -2.0]), walsh_features(scales_b, [1.0, 1.0, 0.5])
    std_a, std_b = a.std(0), b.std(0)  # scales * sqrt(8 / 7): unbiased covariance
    expected = float((a.mean(0) - b.mean(0)).pow(2).sum() + (std_a - std_b).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(a, b) == pytest.approx(1.0 + 6.25 + 8 / 7 * (1.0 + 0.0 + 2.9 ** 2), rel=1e-12)


def test_identical_sets_give_zero_and_a_shift_gives_its_squared_norm():
    a = correlated(100, 8, seed=5)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = torch.linspace(-1, 2, 8, dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-8)
    assert frechet_distance(a, a + shift) == pytest.approx(frechet_distance(a + shift, a), rel=1e-10)


def test_rank_deficient_covariances_stay_finite_and_non_negative():
    a = correlated(5, 20, seed=6)  # 5 samples in 20 dimensions: covariance of rank 4
    assert 0.0 <= frechet_distance(a, a) < 1e-9
    assert frechet_distance(a, correlated(5, 20, seed=7)) == pytest.approx(
        reference_frechet(a.numpy(), correlated(5, 20, seed=7).numpy()), rel=1e-6)


@pytest.mark.parametrize("a, b, message", [
    (torch.zeros(1, 3), torch.zeros(5, 3), "N >= 2"),
    (torch.zeros(5, 3), torch.zeros(5, 4), "same feature size"),
    (torch.zeros(5), torch.zeros(5, 1), r"\[N, F\]"),
    (torch.full((5, 3), float("nan")), torch.zeros(5, 3), "NaN"),
    (torch.zeros(5, 3), torch.full((5, 3), float("inf")), "features_b holds NaN or infinite"),
])
def test_frechet_distance_rejects_bad_feature_sets(a, b, message):
    with pytest.raises(DenoiserLabError, match=message):
        frechet_distance(a, b)


def test_feature_frechet_distance_batches_like_a_single_pass():
    generator = torch.Generator().manual_seed(8)
    projection = torch.randn(16, 4, generator=generator)
    model = lambda images: images.reshape(len(images), -1) @ projection  # noqa: E731
    images_a = torch.rand(30, 1, 4, 4, generator=generator) * 2 - 1
    images_b = torch.rand(25, 1, 4, 4, generator=generator) * 2 - 1
    expected = frechet_distance(model(images_a), model(images_b))
    assert feature_frechet_distance(model, images_a, images_b, batch_size=7) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DenoiserLabError, match="batch_size"):
        image_features(model, images_a, batch_size=0)


@pytest.fixture(scope="module")
def shipped_model():
    return load_feature_model(SHIPPED)


def test_shipped_feature_model_maps_images_to_deterministic_features(shipped_model):
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        features = shipped_model(images)
        assert features.shape == (4, 128) and features.dtype == torch.float32
        assert torch.equal(features, shipped_model(images))
        assert torch.allclose(shipped_model(images.expand(4, 3, 28, 28)), features, atol=1e-5)  # grey RGB
    with pytest.raises(Exception, match=r"\[B, 1 or 3, H, W\]"):
        shipped_model(torch.zeros(4, 2, 28, 28))


def test_shipped_feature_model_classifies_the_vendored_test_split(shipped_model):
    test = data.load("fashion-mnist", split="test")
    with torch.no_grad():
        predicted = shipped_model.logits(test.as_float(0, 200)).argmax(1)
    assert (predicted == test.labels[:200]).float().mean() >= 0.85


def test_load_feature_model_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DenoiserLabError, match="does not exist"):
        load_feature_model(tmp_path / "missing.pt")
    with pytest.raises(DenoiserLabError, match="nothing shipped as shipped:nope.pt.*fashion-mnist-classifier.pt"):
        load_feature_model("shipped:nope.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a zip archive")
    with pytest.raises(DenoiserLabError, match="corrupt.pt.*not a readable TorchScript"):
        load_feature_model(tmp_path / "corrupt.pt")


def test_training_a_tiny_classifier_returns_a_model_and_an_accuracy(tmp_path):
    train = data.load("fashion-mnist", subset=256)
    test = data.load("fashion-mnist", split="test", subset=64)
    logged = []
    model, accuracy = train_classifier(train.as_float(), train.labels, test.as_float(), test.labels,
                                       ClassifierConfig(epochs=1, width=8, feature_dim=16),
                                       log=lambda *row: logged.append(row))
    assert 0.0 <= accuracy <= 1.0 and len(logged) == 1 and not model.training
    images = test.as_float(0, 5)
    assert model(images).shape == (5, 10) and model.features(images).shape == (5, 16)
    path = tmp_path / "encoder.pt"
    export_feature_model(model).save(str(path))
    assert load_feature_model(path)(images).shape == (5, 16)
    with pytest.raises(DenoiserLabError, match="labels"):
        train_classifier(train.as_float(), train.labels[:10], test.as_float(), test.labels)


def test_a_colour_classifier_trains_on_emoji_and_reads_grey_images(tmp_path):
    from denoiserlab.networks.classifier import augment, background_value

    train = data.load("emoji", subset=128)
    test = data.load("emoji", split="test", subset=32)
    model, accuracy = train_classifier(train.as_float(), train.labels, test.as_float(), test.labels,
                                       ClassifierConfig(epochs=1, width=8, feature_dim=16))
    images = test.as_float(0, 4)
    assert model.in_channels == 3 and model(images).shape == (4, int(train.labels.max()) + 1)
    path = tmp_path / "encoder.pt"
    export_feature_model(model).save(str(path))
    encoder = load_feature_model(path)
    grey = images.mean(1, keepdim=True)
    with torch.no_grad():  # a colour model reads a grey image as the same grey on three channels
        assert torch.equal(encoder(grey), encoder(grey.expand(4, 3, 32, 32)))
    with pytest.raises(DenoiserLabError, match="1 or 3"):
        train_classifier(train.as_float()[:, :2], train.labels, test.as_float()[:, :2], test.labels)
    # shifts pad with the images' own background: white (+1) for emoji, black (-1) for Fashion-MNIST
    assert background_value(train.as_float()) == 1.0
    assert background_value(data.load("fashion-mnist", subset=64).as_float()) == -1.0
    shifted = augment(images, 2, False, torch.Generator().manual_seed(0), background=1.0)
    for image, original in zip(shifted, images):  # each is the original moved by (dy, dx) in [-2, 2]
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2), value=1.0)
        assert any(torch.equal(image, padded[:, dy:dy + 32, dx:dx + 32]) for dy in range(5) for dx in range(5))


def test_shipped_emoji_feature_model_classifies_the_emoji_test_split():
    model = load_feature_model("shipped:emoji-classifier.pt")
    test = data.load("emoji", split="test")
    with torch.no_grad():
        predicted = model.logits(test.as_float()).argmax(1)
        assert model(test.as_float(0, 3)).shape == (3, 128)
    assert (predicted == test.labels).float().mean() >= 0.78  # 0.812 when trained (README there)
