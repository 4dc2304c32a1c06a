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
