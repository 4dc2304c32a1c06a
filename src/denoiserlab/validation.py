"""Input checks shared by every public entry point (STYLE section 9): one clear error, never a silent fix."""

from __future__ import annotations

import numbers
import os
import re

import numpy as np
import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError

SEED_LIMIT = 2**63  # seeds are integers in [0, SEED_LIMIT): what both torch and numpy generators accept
DEVICE_NAMES = "'cpu', 'cuda' or 'cuda:N' (N = 0, 1, ...)"  # the torch devices a command or config may name
_DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def check_images(x: Tensor, name: str = "x") -> Tensor:
    """Check that x is a finite floating tensor [B, C, H, W] with B >= 1; returns x unchanged."""
    if not isinstance(x, Tensor):
        raise DenoiserLabError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise DenoiserLabError(f"{name} must have shape [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DenoiserLabError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise DenoiserLabError(f"{name} is empty (batch size 0)")
    if not torch.isfinite(x).all():
        raise DenoiserLabError(f"{name} contains NaN or inf values")
    return x


def check_same_image_shape(x: Tensor, image_shape: tuple[int, ...], what: str = "the training images") -> None:
    """Check that x [B, C, H, W] has the per-image shape (C, H, W) of `what`."""
    if tuple(x.shape[1:]) != tuple(image_shape):
        raise DenoiserLabError(
            f"query images have shape [C, H, W] = {list(x.shape[1:])} but {what} have {list(image_shape)}"
            " (channels or resolution mismatch)"
        )


def check_denoiser_call(x: Tensor, sigma: float | Tensor, image_shape: tuple[int, ...]) -> Tensor:
    """The checks every analytical denoiser makes on a call den(x, sigma): x a finite floating [B, C, H, W] of the
    training images' shape (C, H, W), sigma > 0 a float or [B]; returns sigma as float64 [B] on x's device."""
    check_images(x)
    check_same_image_shape(x, image_shape)
    return sigma_per_sample(sigma, x.shape[0], x.device)


def sigma_per_sample(sigma: float | Tensor, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """Turn sigma (a float, a 0-d tensor or a [B] tensor) into a float64 [B] tensor on `device`; checks sigma > 0."""
    if isinstance(sigma, (bool, np.bool_)) or (isinstance(sigma, Tensor) and sigma.dtype == torch.bool):
        raise DenoiserLabError(f"sigma must be a number or a [B] tensor of numbers, got the boolean {sigma!r}")
    if isinstance(sigma, Tensor):
        if sigma.ndim == 0:
            sigma = sigma.reshape(1).expand(batch)
        elif sigma.ndim != 1 or sigma.shape[0] != batch:
            raise DenoiserLabError(
                f"sigma must be a float or a [B] tensor with B = {batch}, got shape {tuple(sigma.shape)}"
            )
        sigma = sigma.to(device=device, dtype=torch.float64)
    else:
        try:
            value = float(sigma)
        except (TypeError, ValueError):
            raise DenoiserLabError(f"sigma must be a float or a [B] tensor, got {type(sigma).__name__}") from None
        sigma = torch.full((batch,), value, dtype=torch.float64, device=device)
    if not torch.isfinite(sigma).all():
        raise DenoiserLabError("sigma contains NaN or inf")
    if (sigma <= 0).any():
        raise DenoiserLabError(f"sigma must be > 0, got min sigma {sigma.min().item():g}")
    return sigma


def check_flag(value: object, name: str) -> bool:
    """A yes/no option must be True or False: a string such as "no", or a number, is refused, not taken as truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise DenoiserLabError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_seed(seed: object, name: str = "seed") -> int:
    """A seed must be an integer in [0, 2**63 - 1] (not a bool); returns it as an int."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise DenoiserLabError(f"{name} must be an integer in [0, 2**63 - 1], got {seed!r}")
    return int(seed)


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """A count (images, steps, chunk rows, ...) must be an integer >= minimum, not a bool; returns it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DenoiserLabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_count(value: object, name: str, minimum: int = 1) -> int | None:
    """None, or a count as in check_count."""
    return None if value is None else check_count(value, name, minimum)


def is_device_name(value: object) -> bool:
    """Whether value names a device this tool runs on: 'cpu', 'cuda' or 'cuda:N' (nothing is probed)."""
    return isinstance(value, str) and _DEVICE_PATTERN.fullmatch(value) is not None


def check_device(value: object, name: str = "--device") -> torch.device:
    """The torch device `value` names, checked before any work: the name must be one of DEVICE_NAMES, and a CUDA
    device must exist on this machine (CUDA available, index below the GPU count); else one error naming `name`."""
    if not is_device_name(value):
        raise DenoiserLabError(f"{name} must be {DEVICE_NAMES}, got {value!r}")
    device = torch.device(value)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DenoiserLabError(f"{name} {value!r}: CUDA is not available on this machine ({why}); use 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DenoiserLabError(f"{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                               f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n_bytes: int, what: str) -> None:
    """Refuse, before allocating, work whose estimated memory (n_bytes) exceeds this machine's physical memory."""
    total = physical_memory_bytes()
    if total is not None and n_bytes > total:
        raise DenoiserLabError(f"{what} needs about {n_bytes / 2**30:,.3g} GiB of memory, more than this machine has"
                               f" ({total / 2**30:,.3g} GiB); use fewer or smaller images")


def check_finite_output(out: Tensor, component: str, sigma: float | Tensor | None = None) -> Tensor:
    """Check what a network, denoiser or sampler returned: NaN or inf is an error naming `component`; returns out."""
    if not torch.isfinite(out).all():
        where = "" if sigma is None else f" at sigma = {_describe_sigma(sigma)}"
        raise DenoiserLabError(f"{component} returned NaN or inf{where} "
                               f"({int((~torch.isfinite(out)).sum())} of {out.numel()} values)")
    return out


def _describe_sigma(sigma: float | Tensor) -> str:
    """A short text for a float or [B] sigma in error messages."""
    if isinstance(sigma, Tensor) and sigma.numel() > 1:
        return f"{sigma.min().item():.4g} .. {sigma.max().item():.4g}"
    return f"{float(sigma):.4g}"
