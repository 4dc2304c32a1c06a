"""Image encoders for feature metrics: load a TorchScript (or torch.export .pt2) feature model, shipped or from a
path, and run it over an image set in batches."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from denoiserlab import assets
from denoiserlab.errors import DenoiserLabError


def load_feature_model(spec: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An image encoder [B, C, H, W] in [-1, 1] -> [B, ...] in eval mode on `device`.

    spec: `shipped:NAME` (src/denoiserlab/assets/feature_models/NAME) or the path of a TorchScript file or of a
    torch.export program (.pt2).
    """
    path = assets.resolve(spec, "feature_models")
    if not path.is_file():
        raise DenoiserLabError(f"feature model {str(spec)!r} does not exist (looked for {path})")
    try:
        if path.suffix == ".pt2":
            return torch.export.load(path).module().to(device)
        return torch.jit.load(path, map_location=device).eval()
    except Exception as error:  # torch raises RuntimeError, ValueError, zipfile/pickle errors for bad files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DenoiserLabError(f"feature model {str(spec)!r} ({path}) is not a readable TorchScript or .pt2 "
                               f"file: {reason}") from error


def model_device(model: Callable) -> torch.device:
    """Device of a module's first parameter or buffer; CPU for callables without any."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def image_features(model: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256) -> Tensor:
    """Features of images [N, C, H, W] in [-1, 1], computed in batches without gradients on the model's device:
    float32 [N, F] on the CPU (each sample's features flattened)."""
    if images.dim() != 4 or len(images) == 0:
        raise DenoiserLabError(f"image_features needs images [N, C, H, W] with N >= 1, got {tuple(images.shape)}")
    if batch_size < 1:
        raise DenoiserLabError(f"image_features needs batch_size >= 1, got {batch_size}")
    device = model_device(model)
    with torch.no_grad():
        batches = [model(images[start:start + batch_size].to(device)).float().cpu()
                   for start in range(0, len(images), batch_size)]
    return torch.cat([batch.reshape(len(batch), -1) for batch in batches])  # [N, F]


def feature_encoder(spec: str | Path | None, device: str | torch.device = "cpu") -> Callable[[Tensor], Tensor] | None:
    """images [N, C, H, W] in [-1, 1] -> features float32 [N, F] (batched, see image_features) with the feature
    model `spec` (load_feature_model), or None when no model is given."""
    if spec is None:
        return None
    return partial(image_features, load_feature_model(spec, device))
