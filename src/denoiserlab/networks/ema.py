"""Exponential moving average of network weights with a half-life in images (Karras et al. 2022, Appendix F)."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, nimg: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """Decay per step: the EMA forgets half its weight every halflife images (capped at rampup_ratio * nimg)."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio:
        halflife_nimg = min(halflife_nimg, nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers are copied."""
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param.detach(), 1 - beta)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)
