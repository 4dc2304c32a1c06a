"""Building blocks shared by the networks: noise embeddings, zero-initialised layers, group-norm sizing."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise input (Vaswani et al. 2017; DDPM++). c_noise: [B] -> [B, dim]."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        half = dim // 2
        # Frequencies from 1 down to 1 / max_positions, last one included.
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None, :]  # [B, dim / 2]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise input (Tancik et al. 2020; NCSN++). c_noise: [B] -> [B, dim].

    The frequencies are a persistent buffer drawn from a fixed seed, so a saved network reloads identically.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=generator) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = 2 * math.pi * c_noise.float()[:, None] * self.freqs[None, :]  # [B, dim / 2]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """Noise level c_noise [B] -> conditioning vector [B, emb_dim]: sinusoid or Fourier features, then a 2-layer MLP."""

    def __init__(self, kind: str, feature_dim: int, emb_dim: int):
        super().__init__()
        self.features = PositionalEmbedding(feature_dim) if kind == "positional" else FourierEmbedding(feature_dim)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.features(c_noise).to(self.mlp[0].weight.dtype))  # float32 features, MLP's dtype


def zero_init(module: nn.Module) -> nn.Module:
    """Set a layer's weights and bias to zero (residual branches start as the identity); returns it."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def group_norm(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> nn.GroupNorm:
    """GroupNorm with up to `max_groups` groups of at least `min_channels_per_group` channels each."""
    groups = min(max_groups, max(channels // min_channels_per_group, 1))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation x * (1 + scale) + shift. x: [B, T, D]; shift, scale: [B, D]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


NOISE_EMBEDDINGS = ("positional", "fourier")
