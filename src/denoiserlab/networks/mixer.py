"""MLP-Mixer denoiser (Tolstikhin et al. 2021) with adaLN noise conditioning on both mixing MLPs.

The raw network F(x_in, c_noise) of EDM preconditioning: x_in [B, C, H, W], c_noise [B] -> [B, C, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from denoiserlab.networks.config_checks import check_dropout, check_image_geometry, check_positive_int, require
from denoiserlab.networks.dit import FinalLayer, patchify, unpatchify
from denoiserlab.networks.layers import NOISE_EMBEDDINGS, NoiseEmbedding, modulate, zero_init


@dataclass(frozen=True)
class MixerConfig:
    """MLP-Mixer sizes."""

    hidden_size: int = 256  # token (channel) width
    depth: int = 8  # number of mixer blocks
    patch_size: int = 2  # side of the square patches, in pixels (must divide the image side)
    token_mlp_ratio: float = 2.0  # token-mixing MLP hidden width / number of tokens
    channel_mlp_ratio: float = 4.0  # channel-mixing MLP hidden width / hidden_size
    noise_embedding: str = "positional"  # 'positional' or 'fourier'
    dropout: float = 0.0  # dropout probability inside both MLPs

    def __post_init__(self):
        for name in ("hidden_size", "depth", "patch_size"):
            check_positive_int(self, name)
        for name in ("token_mlp_ratio", "channel_mlp_ratio"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and value > 0, "MixerConfig", name, value, "a number > 0")
        require(self.noise_embedding in NOISE_EMBEDDINGS, "MixerConfig", "noise_embedding", self.noise_embedding,
                f"one of {list(NOISE_EMBEDDINGS)}")
        check_dropout(self)


def mlp(width: int, hidden: int, dropout: float) -> nn.Sequential:
    """Two-layer GELU MLP width -> hidden -> width."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width),
                         nn.Dropout(dropout))


class MixerBlock(nn.Module):
    """Token-mixing MLP (across patches) then channel-mixing MLP (within a patch), each adaLN-zero conditioned."""

    def __init__(self, num_tokens: int, config: MixerConfig):
        super().__init__()
        d = config.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.token_mlp = mlp(num_tokens, max(int(num_tokens * config.token_mlp_ratio), 1), config.dropout)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.channel_mlp = mlp(d, max(int(d * config.channel_mlp_ratio), 1), config.dropout)
        self.modulation = zero_init(nn.Linear(d, d * 6))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(emb)).chunk(6, dim=1)  # each [B, D]
        mixed = self.token_mlp(modulate(self.norm1(x), shift1, scale1).transpose(1, 2)).transpose(1, 2)  # [B, T, D]
        x = x + gate1[:, None, :] * mixed
        return x + gate2[:, None, :] * self.channel_mlp(modulate(self.norm2(x), shift2, scale2))


class Mixer(nn.Module):
    """MLP-Mixer F(x_in, c_noise). x_in: [B, C, H, W]; c_noise: [B]; returns [B, C, H, W]."""

    def __init__(self, config: MixerConfig, img_channels: int, img_resolution: int):
        super().__init__()
        check_image_geometry("MixerConfig", img_channels, img_resolution)
        require(img_resolution % config.patch_size == 0, "MixerConfig", "patch_size", config.patch_size,
                f"a divisor of the image side {img_resolution}")
        self.config, self.img_channels, self.img_resolution = config, img_channels, img_resolution
        d, p = config.hidden_size, config.patch_size
        num_tokens = (img_resolution // p) ** 2
        self.patch_embed = nn.Linear(img_channels * p * p, d)
        self.noise_embedding = NoiseEmbedding(config.noise_embedding, d, d)
        self.blocks = nn.ModuleList([MixerBlock(num_tokens, config) for _ in range(config.depth)])
        self.final = FinalLayer(d, img_channels * p * p)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.noise_embedding(c_noise)  # [B, D]
        x = self.patch_embed(patchify(x_in, self.config.patch_size))  # [B, T, D]
        for block in self.blocks:
            x = block(x, emb)
        tokens = self.final(x, emb)  # [B, T, C*p*p]
        return unpatchify(tokens, self.img_channels, self.img_resolution, self.config.patch_size)
