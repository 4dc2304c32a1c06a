"""Turn the `train` argument every analytical denoiser takes into a checked float32 tensor [N, C, H, W]."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.data.imageset import ImageSet
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_flag, check_images

# Training images are in [-1, 1]; values beyond +-VALUE_LIMIT cannot be that scale (pixels 0..255 are the usual
# cause) and are refused. The margin lets synthetic sets (e.g. Gaussian samples in exactness tests) through.
VALUE_LIMIT = 8.0


def training_images(train: Tensor | ImageSet, xflip: bool = False) -> Tensor:
    """train (float [N, C, H, W] in [-1, 1], or an ImageSet) -> contiguous float32 [N or 2N, C, H, W] on CPU.

    With xflip, horizontally flipped copies are appended (image N + i is the flip of image i). A tensor with values
    beyond +-VALUE_LIMIT is refused: it is not in the [-1, 1] scale every denoiser assumes.
    """
    check_flag(xflip, "xflip")
    if isinstance(train, ImageSet):
        if len(train) == 0:
            raise DenoiserLabError(f"training set {train.name} is empty")
        images = train.as_float()
    elif isinstance(train, Tensor):
        if train.ndim == 4 and train.shape[0] == 0:
            raise DenoiserLabError("the training set is empty (0 images)")
        images = check_images(train, "train").detach().to("cpu", torch.float32)
        check_value_range(images)
    else:
        raise DenoiserLabError(f"train must be a float tensor [N, C, H, W] or an ImageSet, got {type(train).__name__}")
    if xflip:
        images = torch.cat([images, images.flip(-1)])
    return images.contiguous()


def check_value_range(images: Tensor) -> None:
    """Refuse training images far outside [-1, 1] (see VALUE_LIMIT), naming the range seen."""
    low, high = images.min().item(), images.max().item()
    if max(-low, high) > VALUE_LIMIT:
        raise DenoiserLabError(
            f"training images must be in [-1, 1], got values in [{low:g}, {high:g}]; for 8-bit pixels 0..255 use "
            "x / 127.5 - 1 (or pass the ImageSet that denoiserlab.data.load returns)")


def dataset_fingerprint(images: Tensor) -> str:
    """A short content hash of a training tensor, to key on-disk caches by the exact data."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
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
