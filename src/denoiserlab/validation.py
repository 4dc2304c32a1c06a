"""Input checks shared by every public entry point (STYLE section 9): one clear error, never a silent fix."""

from __future__ import annotations

import torch
from torch import Tensor

from denoiserlab.errors import DenoiserLabError


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


def sigma_per_sample(sigma: float | Tensor, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """Turn sigma (a float, a 0-d tensor or a [B] tensor) into a float64 [B] tensor on `device`; checks sigma > 0."""
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
