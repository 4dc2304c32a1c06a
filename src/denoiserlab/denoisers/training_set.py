"""The `train` argument every analytical denoiser takes: checked, then either converted once into a float32 tensor
[N, C, H, W] (`training_images`) or kept in its storage and read as float chunks on demand (`training_source`)."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet, uint8_to_float
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_flag, check_images

# Training images are in [-1, 1]; values beyond +-VALUE_LIMIT cannot be that scale (pixels 0..255 are the usual
# cause) and are refused. The margin lets synthetic sets (e.g. Gaussian samples in exactness tests) through.
VALUE_LIMIT = 8.0


STORAGES = ("auto", "ram", "stream")  # values of the denoisers' `storage` option (see `resolve_storage`)
AUTO_RAM_BYTES = 1 << 30  # storage="auto" keeps a float copy of an ImageSet in memory up to this size, else streams


class TrainingImages:
    """The N training images of a denoiser (2N with xflip: image N + i is the flip of image i), read as float32
    chunks in [-1, 1] from their storage, so that no float copy of the whole set need exist.

    storage: uint8 [N, C, H, W] (0..255, converted x / 127.5 - 1 chunk by chunk; may be a strided view of a
    memory-mapped .npy) or float32 [N, C, H, W] already in [-1, 1], on any device.
    """

    def __init__(self, storage: Tensor, xflip: bool):
        self.storage = storage  # uint8 or float32 [N, C, H, W]
        self.xflip = xflip  # whether flipped copies follow the N stored images

    def __len__(self) -> int:
        return (2 if self.xflip else 1) * self.storage.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        return tuple(self.storage.shape[1:])

    def read(self, start: int, stop: int, device: torch.device | str = "cpu") -> Tensor:
        """Images [start:stop] as float32 [n, C, H, W] on `device`; may be a view of float storage (do not write)."""
        stored = self.read_stored(start, stop, device)
        return uint8_to_float(stored) if stored.dtype == torch.uint8 else stored

    def read_stored(self, start: int, stop: int, device: torch.device | str = "cpu") -> Tensor:
        """Images [start:stop] in the storage's dtype (uint8 0..255, or float32) [n, C, H, W] on `device`, flipped
        where the index is past N; a view of the storage when no flip is involved (do not write)."""
        n_stored = self.storage.shape[0]
        pieces = [self.storage[start:stop].to(device)] if start < n_stored else []
        if self.xflip and stop > n_stored:
            pieces.append(self.storage[max(start, n_stored) - n_stored : stop - n_stored].to(device).flip(-1))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def gather(self, indices: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """The images at `indices` (int64, any shape S, each in [0, len)) as float32 [*S, C, H, W] on `device`:
        only those images are read (from a memory-mapped file, only their pages), flipped where the index is past N."""
        flat = indices.reshape(-1).cpu()
        n_stored = self.storage.shape[0]
        flipped = flat >= n_stored  # all False without xflip
        images = self.storage[torch.where(flipped, flat - n_stored, flat).to(self.storage.device)].to(device)
        if flipped.any():
            flipped = flipped.to(device)
            images[flipped] = images[flipped].flip(-1)
        images = uint8_to_float(images) if images.dtype == torch.uint8 else images
        return images.reshape(*indices.shape, *self.image_shape)

    def chunks(self, chunk_size: int, device: torch.device | str = "cpu") -> Iterator[Tensor]:
        """Yield `read` over consecutive chunks of `chunk_size` images: float32 [<= chunk_size, C, H, W]."""
        for start in range(0, len(self), chunk_size):
            yield self.read(start, start + chunk_size, device)


def training_source(train: Tensor | ImageSet, xflip: bool = False) -> TrainingImages:
    """train (float [N, C, H, W] in [-1, 1], or an ImageSet) -> its checked TrainingImages, nothing converted.

    An ImageSet keeps its uint8 storage (memory-mapped or not); a tensor is checked and kept as float32 on CPU (a
    view of it when it is already that). A tensor with values beyond +-VALUE_LIMIT is refused: it is not in the
    [-1, 1] scale every denoiser assumes.
    """
    check_flag(xflip, "xflip")
    if isinstance(train, ImageSet):
        if len(train) == 0:
            raise DenoiserLabError(f"training set {train.name} is empty")
        return TrainingImages(train.uint8, xflip)
    if isinstance(train, Tensor):
        if train.ndim == 4 and train.shape[0] == 0:
            raise DenoiserLabError("the training set is empty (0 images)")
        images = check_images(train, "train").detach().to("cpu", torch.float32)
        check_value_range(images)
        return TrainingImages(images, xflip)
    raise DenoiserLabError(f"train must be a float tensor [N, C, H, W] or an ImageSet, got {type(train).__name__}")


def training_images(train: Tensor | ImageSet, xflip: bool = False) -> Tensor:
    """train (float [N, C, H, W] in [-1, 1], or an ImageSet) -> contiguous float32 [N or 2N, C, H, W] on CPU.

    With xflip, horizontally flipped copies are appended (image N + i is the flip of image i). Checked as in
    `training_source`.
    """
    source = training_source(train, xflip)
    return source.read(0, len(source)).contiguous()


def check_storage(storage: object) -> str:
    """The `storage` option must be one of STORAGES; returns it."""
    if not isinstance(storage, str) or storage not in STORAGES:
        raise DenoiserLabError(f"storage must be one of {STORAGES}, got {storage!r}")
    return storage


def resolve_storage(storage: str, train: Tensor | ImageSet, source: TrainingImages, bytes_per_value: int) -> str:
    """"ram" or "stream" for a denoiser whose in-memory copy holds `bytes_per_value` bytes per training value.

    "auto" is "ram" for a float tensor (already in memory) and for an ImageSet whose copy would take at most
    AUTO_RAM_BYTES, else "stream".
    """
    if storage != "auto":
        return storage
    n_values = len(source) * math.prod(source.image_shape)
    return "ram" if isinstance(train, Tensor) or bytes_per_value * n_values <= AUTO_RAM_BYTES else "stream"


def check_value_range(images: Tensor) -> None:
    """Refuse training images far outside [-1, 1] (see VALUE_LIMIT), naming the range seen."""
    low, high = images.min().item(), images.max().item()
    if max(-low, high) > VALUE_LIMIT:
        raise DenoiserLabError(
            f"training images must be in [-1, 1], got values in [{low:g}, {high:g}]; for 8-bit pixels 0..255 use "
            "x / 127.5 - 1 (or pass the ImageSet that denoiserlab.data.load returns)")


def dataset_fingerprint(images: Tensor | TrainingImages, chunk_images: int = 4096) -> str:
    """A short content hash of training images, to key on-disk caches by the exact data: of a float tensor
    [N, C, H, W] (its bytes), or of TrainingImages read chunk by chunk (the bytes of their float32 values, so an
    ImageSet hashes as its float copy would, without that copy)."""
    import hashlib

    source = images if isinstance(images, TrainingImages) else TrainingImages(images.detach().cpu(), xflip=False)
    digest = hashlib.sha256()
    digest.update(str((len(source), *source.image_shape)).encode())
    for chunk in source.chunks(chunk_images):
        digest.update(chunk.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


class DeviceCopies:
    """Tensors kept on the CPU, copied to another device once, on first use there (denoisers follow the input)."""

    def __init__(self, *tensors: Tensor):
        self._copies = {torch.device("cpu"): tensors}

    def on(self, device: torch.device) -> tuple[Tensor, ...]:
        """The tensors on `device`."""
        device = torch.device(device)
        if device not in self._copies:
            self._copies[device] = tuple(t.to(device) for t in self._copies[torch.device("cpu")])
        return self._copies[device]
