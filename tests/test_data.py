"""`denoiserlab.data.load`: built-in sets, every option against a hand-written reference, errors, the cache."""

from pathlib import Path

import numpy as np
import pytest
import torch

from denoiserlab.data import ImageSet, load
from denoiserlab.data import cache as data_cache
from denoiserlab.data.builtin import DEBIAN_FASHION_MNIST, VENDORED_FASHION_MNIST
from denoiserlab.errors import DenoiserLabError

needs_debian_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)


def distinct_images(n, channels=1, height=4, width=5, seed=0):
    """uint8 [n, C, H, W], image i recognisable by its first pixel (= i)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, channels, height, width), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


@pytest.fixture
def labelled_npz(tmp_path):
    """An .npz of 40 distinct grey 4x5 images with labels i % 4; returns (path, images, labels)."""
    images, labels = distinct_images(40), np.arange(40) % 4
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    return tmp_path / "set.npz", images, labels


@pytest.fixture
def rgb_npz(tmp_path):
    """An .npz of 6 random RGB 3x6x6 images, no labels; returns (path, images)."""
    images = np.random.default_rng(1).integers(0, 256, size=(6, 3, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images)
    return tmp_path / "rgb.npz", images


# ----------------------------------------------------------------------------------------------- built-in sets


def test_vendored_fashion_mnist_train_and_test():
    train, test = load("fashion-mnist"), load("fashion-mnist", split="test")
    assert isinstance(train, ImageSet) and train.uint8.dtype == torch.uint8
    assert train.uint8.shape == (10_000, 1, 28, 28) and len(train) == 10_000 and len(test) == 1_000
    assert test.uint8.shape == (1_000, 1, 28, 28)
    assert torch.bincount(train.labels, minlength=10).tolist() == [1_000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert train.name == "fashion-mnist/train" and test.name == "fashion-mnist/test"


def test_as_float_and_chunks_match_the_formula():
    images = load("fashion-mnist", subset=50)
    reference = torch.zeros(50, 1, 28, 28, dtype=torch.float64)
    for i in range(50):
        reference[i] = images.uint8[i].double() / 255 * 2 - 1
    as_float = images.as_float()
    assert as_float.dtype == torch.float32 and as_float.min() >= -1 and as_float.max() <= 1
    torch.testing.assert_close(as_float.double(), reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(list(images.chunks(chunk_size=7))), as_float, rtol=0, atol=0)


@pytest.fixture(scope="module")
def full_fashion_mnist():
    """The full set's train and test splits (read once for the module)."""
    return load("fashion-mnist-full"), load("fashion-mnist-full", split="test")


@needs_debian_fashion_mnist
def test_full_fashion_mnist_sizes(full_fashion_mnist):
    train, test = full_fashion_mnist
    assert train.uint8.shape == (60_000, 1, 28, 28) and test.uint8.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train.labels, minlength=10).tolist() == [6_000] * 10
    assert train.name == "fashion-mnist-full/train"


@needs_debian_fashion_mnist
def test_vendored_subset_equals_full_set_at_its_source_indices(full_fashion_mnist):
    with np.load(VENDORED_FASHION_MNIST) as archive:
        source_index = {split: archive[f"{split}_source_index"] for split in ("train", "test")}
    for full, split in zip(full_fashion_mnist, ("train", "test")):
        vendored = load("fashion-mnist", split=split)
        index = torch.from_numpy(source_index[split].astype(np.int64))
        assert torch.equal(vendored.uint8, full.uint8[index])
        assert torch.equal(vendored.labels, full.labels[index])


def test_vendored_file_loads_by_path_as_an_npz_with_split_keys():
    by_path, by_name = load(VENDORED_FASHION_MNIST, split="test"), load("fashion-mnist", split="test")
    assert torch.equal(by_path.uint8, by_name.uint8) and torch.equal(by_path.labels, by_name.labels)


def test_full_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    from denoiserlab.data import builtin

    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DenoiserLabError, match="apt-get install dataset-fashion-mnist"):
        load("fashion-mnist-full")


def test_load_options_rebuild_the_set():
    images = load("fashion-mnist", subset=30, xflip=True, resolution=32, seed=3)
    again = load(**images.load_options)
    assert torch.equal(images.uint8, again.uint8) and torch.equal(images.labels, again.labels)


# ------------------------------------------------------------------------------------------------------ options


def test_subset_is_seeded_reproducible_and_in_file_order(labelled_npz):
    path, images, labels = labelled_npz
    first, again, other = load(path, subset=10, seed=5), load(path, subset=10, seed=5), load(path, subset=10, seed=6)
    assert torch.equal(first.uint8, again.uint8) and len(first) == 10
    assert not torch.equal(first.uint8, other.uint8)
    positions = first.uint8[:, 0, 0, 0].tolist()  # each image's index in the file
    assert positions == sorted(set(positions))
    for row, position in enumerate(positions):
        np.testing.assert_array_equal(first.uint8[row].numpy(), images[position])
        assert first.labels[row] == labels[position]
    assert len(load(path, subset=40)) == 40


def test_classes_keep_matching_labels_in_order(labelled_npz):
    path, images, labels = labelled_npz
    kept = load(path, classes=[3, 1])
    expected = [i for i in range(40) if labels[i] in (3, 1)]
    assert kept.uint8[:, 0, 0, 0].tolist() == expected
    assert kept.labels.tolist() == [labels[i] for i in expected]
    both = load(path, classes=[2], subset=4, seed=0)  # classes first, then subset among them
    assert len(both) == 4 and set(both.labels.tolist()) == {2}


def test_xflip_appends_flips_after_the_originals(labelled_npz):
    path, images, labels = labelled_npz
    flipped = load(path, xflip=True)
    assert len(flipped) == 80 and flipped.labels.tolist() == labels.tolist() * 2
    width = images.shape[-1]
    for i in range(40):
        for col in range(width):
            assert torch.equal(flipped.uint8[40 + i, :, :, col], flipped.uint8[i, :, :, width - 1 - col])
    np.testing.assert_array_equal(flipped.uint8[:40].numpy(), images)


def test_channels_three_to_one_is_bt601_luminance(rgb_npz):
    path, images = rgb_npz
    grey = load(path, channels=1).uint8.numpy()
    assert grey.shape == (6, 1, 6, 6)
    for n in range(6):
        for y in range(6):
            for x in range(6):
                red, green, blue = (float(v) for v in images[n, :, y, x])
                assert grey[n, 0, y, x] == round(0.299 * red + 0.587 * green + 0.114 * blue)
    np.testing.assert_array_equal(load(path, channels=3).uint8.numpy(), images)


def test_channels_one_to_three_repeats_grey():
    grey = load("fashion-mnist", subset=5)
    colour = load("fashion-mnist", subset=5, channels=3)
    assert colour.uint8.shape == (5, 3, 28, 28)
    for c in range(3):
        assert torch.equal(colour.uint8[:, c], grey.uint8[:, 0])


def test_resolution_pad_crop_resize():
    plain = load("fashion-mnist", subset=4).uint8
    padded = load("fashion-mnist", subset=4, resolution=32).uint8  # 'pad' is the default policy
    assert padded.shape == (4, 1, 32, 32)
    for row in range(32):
        for col in range(32):
            if 2 <= row < 30 and 2 <= col < 30:
                assert torch.equal(padded[:, :, row, col], plain[:, :, row - 2, col - 2])
            else:
                assert (padded[:, :, row, col] == 0).all()
    cropped = load("fashion-mnist", subset=4, resolution=20, resolution_policy="crop").uint8
    assert torch.equal(cropped, plain[:, :, 4:24, 4:24])
    resized = load("fashion-mnist", subset=4, resolution=14, resolution_policy="resize").uint8
    assert resized.shape == (4, 1, 14, 14) and resized.dtype == torch.uint8


def test_resize_keeps_a_constant_image_constant(tmp_path):
    np.savez(tmp_path / "flat.npz", images=np.full((2, 3, 10, 10), 77, dtype=np.uint8))
    assert (load(tmp_path / "flat.npz", resolution=7, resolution_policy="resize").uint8 == 77).all()


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("options, message", [
    ({"channels": 2}, "channels must be 1, 3 or None, got 2"),
    ({"channels": True}, "channels must be 1, 3 or None"),
    ({"subset": 0}, "subset must be a positive number"),
    ({"subset": 2.5}, "subset must be a positive number"),
    ({"subset": 10_001}, "subset must be between 1 and 10000"),
    ({"split": "validation"}, "unknown split 'validation'; valid splits: train, test"),
    ({"resolution": 0}, "resolution must be a positive"),
    ({"resolution": 32, "resolution_policy": "stretch"}, "unknown resolution_policy 'stretch'"),
    ({"resolution_policy": "stretch"}, "unknown resolution_policy 'stretch'"),
    ({"resolution": 20, "resolution_policy": "pad"}, "cannot pad 28x28 images to 20x20"),
    ({"resolution": 30, "resolution_policy": "crop"}, "cannot crop 28x28 images to 30x30"),
    ({"classes": []}, "classes must be a non-empty list"),
    ({"classes": [10]}, r"no images of classes \[10\]"),
    ({"seed": "zero"}, "seed must be an integer"),
])
def test_bad_options(options, message):
    with pytest.raises(DenoiserLabError, match=message):
        load("fashion-mnist", **options)


def test_classes_without_labels(rgb_npz):
    with pytest.raises(DenoiserLabError, match=r"rgb\.npz/train has no labels"):
        load(rgb_npz[0], classes=[0])


def test_unknown_name_lists_built_in_names(tmp_path):
    with pytest.raises(DenoiserLabError, match=r"unknown dataset 'cifar-11'.*fashion-mnist, fashion-mnist-full"):
        load("cifar-11")
    with pytest.raises(DenoiserLabError, match=r"no file or folder at .*missing\.npz"):
        load(tmp_path / "missing.npz")


def test_empty_dataset(tmp_path):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 1, 4, 4), dtype=np.uint8))
    with pytest.raises(DenoiserLabError, match=r"dataset empty\.npz/train is empty"):
        load(tmp_path / "empty.npz")


# ------------------------------------------------------------------------------------------------------- cache


def test_cache_round_trip_is_memory_mapped_and_decodes_once(labelled_npz, tmp_path, monkeypatch):
    path, images, labels = labelled_npz
    cache_dir = tmp_path / "cache"
    first = load(path, cache_dir=cache_dir)
    np.testing.assert_array_equal(first.uint8.numpy(), images)
    assert first.labels.tolist() == labels.tolist() and first.uint8.dtype == torch.uint8
    (images_file,) = [file for file in cache_dir.iterdir() if file.name.endswith(".npy") and ".labels" not in file.name]
    assert not [file for file in cache_dir.iterdir() if file.name.endswith(".tmp")]
    assert isinstance(np.load(images_file, mmap_mode="r"), np.memmap)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("the source was decoded again despite the cache")

    monkeypatch.setattr(data_cache, "read_source", must_not_decode)
    second = load(path, cache_dir=cache_dir)
    assert torch.equal(second.uint8, first.uint8) and torch.equal(second.labels, first.labels)
    assert second.name == first.name == "set.npz/train"
    with_options = load(path, cache_dir=cache_dir, subset=7, xflip=True, classes=[0, 2], channels=3, seed=4)
    monkeypatch.undo()
    without_cache = load(path, subset=7, xflip=True, classes=[0, 2], channels=3, seed=4)
    assert torch.equal(with_options.uint8, without_cache.uint8)
    assert torch.equal(with_options.labels, without_cache.labels)


def test_cache_is_keyed_by_source_content_and_split(tmp_path):
    cache_dir = tmp_path / "cache"
    np.savez(tmp_path / "s.npz", train_images=distinct_images(3), test_images=distinct_images(2, seed=1))
    train = load(tmp_path / "s.npz", cache_dir=cache_dir)
    test = load(tmp_path / "s.npz", split="test", cache_dir=cache_dir)
    assert len(train) == 3 and len(test) == 2 and test.labels is None
    replacement = distinct_images(5, seed=2)
    np.savez(tmp_path / "s.npz", train_images=replacement, test_images=distinct_images(2, seed=1))
    np.testing.assert_array_equal(load(tmp_path / "s.npz", cache_dir=cache_dir).uint8.numpy(), replacement)


def test_image_folder_is_decoded_straight_into_the_cache_file(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, size in enumerate([(4, 4), (6, 3)]):
        Image.fromarray(np.full(size, 10 * (i + 1), dtype=np.uint8)).save(folder / f"{i}.png")
    read_source = data_cache.read_source

    def read_source_into_a_file(*args, **kwargs):
        images, labels, name = read_source(*args, **kwargs)
        assert isinstance(images, np.memmap), "decoded images should go straight to the memory-mapped .npy"
        return images, labels, name

    monkeypatch.setattr(data_cache, "read_source", read_source_into_a_file)
    cached = load(folder, resolution=8, cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert torch.equal(cached.uint8, load(folder, resolution=8).uint8)
    assert torch.equal(load(folder, resolution=8, cache_dir=tmp_path / "cache").uint8, cached.uint8)
    with pytest.raises(DenoiserLabError, match="differ in size"):
        load(folder, cache_dir=tmp_path / "cache")
    assert not [file for file in (tmp_path / "cache").iterdir() if file.name.endswith(".tmp")]


def test_cache_inside_the_image_folder_keeps_its_key(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    for _ in range(2):
        assert len(load(tmp_path, cache_dir=tmp_path / "cache")) == 1
    assert len([file for file in (tmp_path / "cache").iterdir() if file.name.endswith(".json")]) == 1


def test_corrupt_cache_entry_says_delete_it(labelled_npz, tmp_path):
    path = labelled_npz[0]
    cache_dir = tmp_path / "cache"
    load(path, cache_dir=cache_dir)
    for file in cache_dir.iterdir():
        if file.name.endswith(".npy") and ".labels" not in file.name:
            file.write_bytes(b"broken")
    with pytest.raises(DenoiserLabError, match="unreadable.*delete it"):
        load(path, cache_dir=cache_dir)


def test_subset_offset_gives_disjoint_blocks_of_one_permutation(labelled_npz):
    path, images, labels = labelled_npz
    first, second, both = load(path, subset=10), load(path, subset=10, subset_offset=10), load(path, subset=20)
    rows = lambda imageset: set(imageset.uint8[:, 0, 0, 0].tolist())  # each image's index in the file
    assert not rows(first) & rows(second) and rows(first) | rows(second) == rows(both)
    assert second.load_options["subset_offset"] == 10 and "subset_offset" not in first.load_options
    assert torch.equal(load(**second.load_options).uint8, second.uint8)
    with pytest.raises(DenoiserLabError, match="subset_offset 35 \\+ subset 10 exceeds the 40 images"):
        load(path, subset=10, subset_offset=35)
    with pytest.raises(DenoiserLabError, match="subset_offset = 5 needs a subset size"):
        load(path, subset_offset=5)
    with pytest.raises(DenoiserLabError, match="subset_offset must be a non-negative"):
        load(path, subset=5, subset_offset=-1)


def test_held_out_options_drop_the_subset_and_its_offset():
    from denoiserlab.data import held_out_options

    training = load("fashion-mnist", subset=20, subset_offset=20, resolution=32).load_options
    test = load(**held_out_options(training))
    assert test.load_options["split"] == "test" and len(test) == 1000 and test.image_shape == (1, 32, 32)
