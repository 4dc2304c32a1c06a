"""Every path format of `denoiserlab.data.load`: tiny datasets written here, loaded, compared with what was written."""

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from denoiserlab.data import load
from denoiserlab.errors import DenoiserLabError


def random_images(n, channels, height, width, seed=0):
    """uint8 [n, C, H, W] with random values."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, height, width), dtype=np.uint8)


def save_png(path, image):
    """Write uint8 [C, H, W] (C = 1 or 3) as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    Image.fromarray(pixels).save(path)


def png_bytes(image):
    """PNG file content of uint8 [C, H, W]."""
    buffer = io.BytesIO()
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- image folders


def test_folder_of_grey_pngs_is_read_recursively_in_path_order(tmp_path):
    images = random_images(5, 1, 6, 7)
    names = ["b/2.png", "a/x/9.png", "a/1.PNG", "c.png", "b/10.png"]
    for name, image in zip(names, images):
        save_png(tmp_path / name, image)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"skipped, as its name starts with a dot")
    loaded = load(tmp_path)
    order = sorted(range(5), key=lambda i: names[i])
    assert loaded.uint8.dtype.is_floating_point is False and loaded.uint8.shape == (5, 1, 6, 7)
    np.testing.assert_array_equal(loaded.uint8.numpy(), images[order])
    assert loaded.labels is None and loaded.name == f"{tmp_path.name}/train"


def test_folder_with_train_and_test_subfolders_and_labels(tmp_path):
    train, test = random_images(4, 3, 5, 5, seed=1), random_images(2, 3, 5, 5, seed=2)
    for split, images, labels in (("train", train, [3, 1, 4, 1]), ("test", test, [5, 9])):
        names = [f"img{i}.png" for i in range(len(images))]
        for name, image in zip(names, images):
            save_png(tmp_path / split / name, image)
        (tmp_path / split / "dataset.json").write_text(json.dumps({"labels": [list(p) for p in zip(names, labels)]}))
    np.testing.assert_array_equal(load(tmp_path).uint8.numpy(), train)
    np.testing.assert_array_equal(load(tmp_path, split="test").uint8.numpy(), test)
    assert load(tmp_path).labels.tolist() == [3, 1, 4, 1]
    assert load(tmp_path, split="test").labels.tolist() == [5, 9]


def test_folder_without_splits_has_no_test_split(tmp_path):
    save_png(tmp_path / "a.png", random_images(1, 1, 4, 4)[0])
    with pytest.raises(DenoiserLabError, match="no 'test' split"):
        load(tmp_path, split="test")


def test_rgba_loses_alpha_and_palette_is_expanded(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "0.png")
    indices = np.random.default_rng(4).integers(0, 256, size=(4, 5), dtype=np.uint8)
    palette = np.random.default_rng(5).integers(0, 256, size=(256, 3), dtype=np.uint8)
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette(palette.reshape(-1).tolist())
    paletted.save(tmp_path / "1.png")
    loaded = load(tmp_path).uint8.numpy()
    np.testing.assert_array_equal(loaded[0], rgba[..., :3].transpose(2, 0, 1))
    expected = np.zeros((3, 4, 5), dtype=np.uint8)
    for y in range(4):
        for x in range(5):
            expected[:, y, x] = palette[indices[y, x]]
    np.testing.assert_array_equal(loaded[1], expected)


def test_palette_with_transparency_loads_without_warnings(tmp_path):
    indices = np.arange(16, dtype=np.uint8).reshape(4, 4)
    palette = np.random.default_rng(13).integers(0, 256, size=(256, 3), dtype=np.uint8)
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette(palette.reshape(-1).tolist())
    paletted.save(tmp_path / "t.png", transparency=bytes(range(256)))  # per-entry alpha, dropped on load
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(tmp_path).uint8.numpy()
    np.testing.assert_array_equal(loaded[0], palette[indices].transpose(2, 0, 1))


def test_grey_with_alpha_and_mixed_grey_colour(tmp_path):
    grey_alpha = np.random.default_rng(6).integers(0, 256, size=(3, 3, 2), dtype=np.uint8)
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load(tmp_path).uint8.numpy()[0, 0], grey_alpha[..., 0])
    colour = random_images(1, 3, 3, 3, seed=7)[0]
    save_png(tmp_path / "rgb.png", colour)
    loaded = load(tmp_path).uint8.numpy()  # la.png sorts first, is repeated to 3 channels
    assert loaded.shape == (2, 3, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(loaded[0, c], grey_alpha[..., 0])
    np.testing.assert_array_equal(loaded[1], colour)


def test_jpeg_is_read_close_to_what_was_written(tmp_path):
    y, x = np.mgrid[0:16, 0:16]
    smooth = np.stack([8 * y, 8 * x, 4 * (x + y)]).astype(np.uint8)  # [3, 16, 16], smooth so JPEG keeps it
    Image.fromarray(smooth.transpose(1, 2, 0)).save(tmp_path / "a.jpg", quality=100)
    loaded = load(tmp_path).uint8.numpy()
    assert loaded.shape == (1, 3, 16, 16)
    assert np.abs(loaded[0].astype(int) - smooth.astype(int)).max() <= 6


def test_mismatched_sizes_name_two_files(tmp_path):
    save_png(tmp_path / "a.png", random_images(1, 1, 4, 4)[0])
    save_png(tmp_path / "b.png", random_images(1, 1, 4, 4)[0])
    save_png(tmp_path / "c.png", random_images(1, 1, 6, 5)[0])
    with pytest.raises(DenoiserLabError, match=r"a\.png is 4x4.*c\.png is 5x6"):
        load(tmp_path)


def test_mismatched_sizes_with_resolution_are_padded_one_by_one(tmp_path):
    small, tall = random_images(1, 1, 4, 4, seed=8)[0], random_images(1, 1, 6, 3, seed=9)[0]
    save_png(tmp_path / "a.png", small)
    save_png(tmp_path / "b.png", tall)
    loaded = load(tmp_path, resolution=8, resolution_policy="pad").uint8.numpy()
    assert loaded.shape == (2, 1, 8, 8)
    for image, source in zip(loaded, (small, tall)):
        height, width = source.shape[1:]
        top, left = (8 - height) // 2, (8 - width) // 2
        for row in range(8):
            for col in range(8):
                inside = top <= row < top + height and left <= col < left + width
                expected = source[0, row - top, col - left] if inside else 0
                assert image[0, row, col] == expected
    assert load(tmp_path, resolution=3, resolution_policy="crop").uint8.shape == (2, 1, 3, 3)
    assert load(tmp_path, resolution=5, resolution_policy="resize").uint8.shape == (2, 1, 5, 5)
    with pytest.raises(DenoiserLabError, match=r"b\.png.*cannot pad"):
        load(tmp_path, resolution=5, resolution_policy="pad")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n garbage", "truncated"])
def test_corrupt_png_names_the_file(tmp_path, content):
    good = png_bytes(random_images(1, 1, 16, 16)[0])
    save_png(tmp_path / "a.png", random_images(1, 1, 16, 16)[0])
    (tmp_path / "bad.png").write_bytes(good[: len(good) // 2] if content == "truncated" else content)
    with pytest.raises(DenoiserLabError, match=r"bad\.png"):
        load(tmp_path)


def test_sixteen_bit_png_is_refused(tmp_path):
    Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000).save(tmp_path / "deep.png")
    with pytest.raises(DenoiserLabError, match=r"unsupported image mode.*deep\.png"):
        load(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DenoiserLabError, match="no PNG/JPEG images"):
        load(tmp_path)


def test_folder_labels_must_cover_every_image(tmp_path):
    save_png(tmp_path / "a.png", random_images(1, 1, 4, 4)[0])
    save_png(tmp_path / "b.png", random_images(1, 1, 4, 4)[0])
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a.png", 0]]}))
    with pytest.raises(DenoiserLabError, match="no label for image 'b.png'"):
        load(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DenoiserLabError, match="dataset.json"):
        load(tmp_path)


# ----------------------------------------------------------------------------------------------------- EDM zip


def write_zip(path, members):
    """Write a zip of {member name: bytes}."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def test_edm_zip_with_labels(tmp_path):
    images = random_images(3, 3, 4, 4, seed=10)
    names = [f"00000/img0000000{i}.png" for i in range(3)]
    labels = {"labels": [[name, label] for name, label in zip(names, [7, 0, 2])]}
    members = {name: png_bytes(image) for name, image in zip(names, images)}
    write_zip(tmp_path / "set.zip", {**members, "dataset.json": json.dumps(labels)})
    loaded = load(tmp_path / "set.zip")
    np.testing.assert_array_equal(loaded.uint8.numpy(), images)
    assert loaded.labels.tolist() == [7, 0, 2] and loaded.name == "set.zip/train"
    write_zip(tmp_path / "bare.zip", members)
    assert load(tmp_path / "bare.zip").labels is None
    write_zip(tmp_path / "null.zip", {**members, "dataset.json": json.dumps({"labels": None})})
    assert load(tmp_path / "null.zip").labels is None
    with pytest.raises(DenoiserLabError, match="no 'test' split"):
        load(tmp_path / "set.zip", split="test")


def test_edm_zip_split_into_train_and_test(tmp_path):
    train, test = random_images(2, 1, 3, 3, seed=11), random_images(1, 1, 3, 3, seed=12)
    write_zip(tmp_path / "s.zip", {"train/0.png": png_bytes(train[0]), "train/1.png": png_bytes(train[1]),
                                   "test/0.png": png_bytes(test[0])})
    np.testing.assert_array_equal(load(tmp_path / "s.zip").uint8.numpy(), train)
    np.testing.assert_array_equal(load(tmp_path / "s.zip", split="test").uint8.numpy(), test)


def test_bad_zip_and_corrupt_member(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(DenoiserLabError, match=r"bad\.zip is not a readable zip"):
        load(tmp_path / "bad.zip")
    write_zip(tmp_path / "c.zip", {"ok.png": png_bytes(random_images(1, 1, 4, 4)[0]), "broken.png": b"garbage"})
    with pytest.raises(DenoiserLabError, match=r"c\.zip:broken\.png"):
        load(tmp_path / "c.zip")
    write_zip(tmp_path / "empty.zip", {"readme.txt": b"nothing"})
    with pytest.raises(DenoiserLabError, match="no PNG/JPEG images in zip"):
        load(tmp_path / "empty.zip")


# ---------------------------------------------------------------------------------------------------- CIFAR-10


def cifar_batch(n, seed):
    """A fake CIFAR-10 batch in the real layout: uint8 data [n, 3072] and n labels."""
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n).tolist(), b"filenames": [b"x.png"] * n}


def cifar_images_by_hand(data):
    """[n, 3072] rows -> [n, 3, 32, 32]: value c*1024 + y*32 + x is channel c, row y, column x."""
    images = np.zeros((len(data), 3, 32, 32), dtype=np.uint8)
    for i in range(len(data)):
        for c in range(3):
            for y in range(32):
                for x in range(32):
                    images[i, c, y, x] = data[i, c * 1024 + y * 32 + x]
    return images


def write_cifar_folder(folder, sizes=(2, 1, 1, 1, 2), test_size=2):
    """Write data_batch_1..5 and test_batch pickles; returns {batch name: batch}."""
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i + 1}": cifar_batch(n, seed=i) for i, n in enumerate(sizes)}
    batches["test_batch"] = cifar_batch(test_size, seed=99)
    for name, batch in batches.items():
        raw = pickle.dumps(batch, protocol=2)
        if name == "data_batch_2":  # as written by numpy 1.x / Python 2, the real files' origin
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (folder / name).write_bytes(raw)
    return batches


def expected_cifar(batches, names):
    """Images and labels of the named batches, joined."""
    images = np.concatenate([cifar_images_by_hand(batches[name][b"data"]) for name in names])
    return images, sum((batches[name][b"labels"] for name in names), [])


def test_cifar10_folder_and_tarball(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder)
    train_images, train_labels = expected_cifar(batches, [f"data_batch_{i}" for i in range(1, 6)])
    test_images, test_labels = expected_cifar(batches, ["test_batch"])
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    for source in (folder, tmp_path / "cifar-10-python.tar.gz", tmp_path):  # tmp_path holds cifar-10-batches-py/
        train, test = load(source), load(source, split="test")
        np.testing.assert_array_equal(train.uint8.numpy(), train_images)
        assert train.labels.tolist() == train_labels
        np.testing.assert_array_equal(test.uint8.numpy(), test_images)
        assert test.labels.tolist() == test_labels


class _MakeFolderWhenUnpickled:
    """A pickle payload that would create a folder if a plain unpickler loaded it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_cifar10_pickle_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder)
    target = tmp_path / "created-by-pickle"
    batch = cifar_batch(1, seed=0)
    batch[b"labels"] = [_MakeFolderWhenUnpickled(target)]
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DenoiserLabError, match=r"data_batch_3 is not a readable CIFAR-10 batch: refusing to load"):
        load(folder)
    assert not target.exists()


def test_cifar10_missing_and_corrupt_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DenoiserLabError, match="lacks batch file data_batch_5"):
        load(folder)
    (folder / "test_batch").write_bytes(b"\x80\x02 not a pickle")
    with pytest.raises(DenoiserLabError, match=r"test_batch is not a readable CIFAR-10 batch"):
        load(folder, split="test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DenoiserLabError, match=r"test_batch: 'data' must be a uint8 array \[n, 3072\]"):
        load(folder, split="test")
    (tmp_path / "broken.tar.gz").write_bytes(gzip.compress(b"not a tar archive at all" * 40))
    with pytest.raises(DenoiserLabError, match=r"broken\.tar\.gz"):
        load(tmp_path / "broken.tar.gz")


# --------------------------------------------------------------------------------------------------------- IDX


def write_idx(path, array):
    """Write a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims), gzipped if path ends .gz."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_and_direct_file(tmp_path, suffix):
    train, test = random_images(5, 1, 4, 3, seed=20)[:, 0], random_images(2, 1, 4, 3, seed=21)[:, 0]
    train_labels = np.array([1, 0, 9, 9, 2], dtype=np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_labels)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test)
    loaded = load(tmp_path)
    np.testing.assert_array_equal(loaded.uint8.numpy()[:, 0], train)
    assert loaded.uint8.shape == (5, 1, 4, 3) and loaded.labels.tolist() == train_labels.tolist()
    test_set = load(tmp_path, split="test")
    np.testing.assert_array_equal(test_set.uint8.numpy()[:, 0], test)
    assert test_set.labels is None
    direct = load(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(direct.uint8.numpy()[:, 0], train)
    assert direct.labels.tolist() == train_labels.tolist()
    assert load(tmp_path / f"t10k-images-idx3-ubyte{suffix}").labels is None
    with pytest.raises(DenoiserLabError, match="no 'test' split"):
        load(tmp_path / f"t10k-images-idx3-ubyte{suffix}", split="test")


def test_truncated_and_bad_idx(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", random_images(3, 1, 4, 4)[:, 0])
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DenoiserLabError, match=r"train-images-idx3-ubyte is truncated"):
        load(tmp_path)
    (tmp_path / "x-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03")
    with pytest.raises(DenoiserLabError, match=r"x-images-idx3-ubyte is not an IDX file"):
        load(tmp_path / "x-images-idx3-ubyte")
    (tmp_path / "y-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DenoiserLabError, match=r"y-images-idx3-ubyte\.gz"):
        load(tmp_path / "y-images-idx3-ubyte.gz")
    write_idx(tmp_path / "z-images-idx3-ubyte", random_images(3, 1, 4, 4)[:, 0])
    write_idx(tmp_path / "z-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    with pytest.raises(DenoiserLabError, match=r"z-labels-idx1-ubyte holds labels of shape \(2,\) for 3 images"):
        load(tmp_path / "z-images-idx3-ubyte")


# --------------------------------------------------------------------------------------------------------- npz


def test_npz_layouts(tmp_path):
    nchw = random_images(4, 3, 5, 6, seed=30)
    nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "nhwc.npz", images=nhwc, labels=np.array([0, 1, 2, 3]))
    np.savez(tmp_path / "nchw.npz", pictures=nchw)
    np.savez(tmp_path / "grey.npz", x=nchw[:, 0])
    np.savez(tmp_path / "grey_last.npz", images=nhwc[..., :1])
    loaded = load(tmp_path / "nhwc.npz")
    for c in range(3):
        for y in range(5):
            assert (loaded.uint8.numpy()[:, c, y, :] == nhwc[:, y, :, c]).all()
    assert loaded.labels.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(load(tmp_path / "nchw.npz").uint8.numpy(), nchw)
    np.testing.assert_array_equal(load(tmp_path / "grey.npz").uint8.numpy(), nchw[:, :1])
    np.testing.assert_array_equal(load(tmp_path / "grey_last.npz").uint8.numpy(), nchw[:, :1])


def test_npz_split_keys(tmp_path):
    train, test = random_images(3, 1, 4, 4, seed=31)[:, 0], random_images(2, 1, 4, 4, seed=32)[:, 0]
    np.savez_compressed(tmp_path / "s.npz", train_images=train, train_labels=np.array([4, 5, 6]), test_images=test)
    np.testing.assert_array_equal(load(tmp_path / "s.npz").uint8.numpy()[:, 0], train)
    assert load(tmp_path / "s.npz").labels.tolist() == [4, 5, 6]
    np.testing.assert_array_equal(load(tmp_path / "s.npz", split="test").uint8.numpy()[:, 0], test)
    assert load(tmp_path / "s.npz", split="test").labels is None


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((2, 3, 4, 3), np.uint8)}, "cannot tell whether channels"),
    ({"images": np.zeros((2, 4, 5, 6), np.uint8)}, "cannot tell whether channels"),
    ({"images": np.zeros((2, 4, 4), np.float32)}, "must be a uint8 array"),
    ({"images": np.zeros((2, 4), np.uint8)}, "must have shape"),
    ({"a": np.zeros((2, 4, 4), np.uint8), "b": np.zeros((2, 4, 4), np.uint8)}, "must hold an 'images' array"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, np.int64)}, "must be 2 integer labels"),
    ({"images": np.array([None, 1], dtype=object)}, "not a readable .npz"),
    ({"test_images": np.zeros((2, 4, 4), np.uint8)}, "no train_images array"),
])
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DenoiserLabError, match=message) as error:
        load(tmp_path / "bad.npz")
    assert "bad.npz" in str(error.value)


def test_garbage_npz_and_unknown_format(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DenoiserLabError, match=r"g\.npz is not a readable \.npz"):
        load(tmp_path / "g.npz")
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(DenoiserLabError, match=r"cannot tell the dataset format of .*data\.csv"):
        load(tmp_path / "data.csv")
