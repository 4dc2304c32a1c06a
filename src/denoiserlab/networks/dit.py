"""Diffusion Transformer (Peebles & Xie 2023): patchify, adaLN-zero transformer blocks, unpatchify.

The raw network F(x_in, c_noise) of EDM preconditioning: x_in [B, C, H, W], c_noise [B] -> [B, C, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from denoiserlab.networks.config_checks import check_dropout, check_image_geometry, check_positive_int, require
from denoiserlab.networks.layers import NOISE_EMBEDDINGS, NoiseEmbedding, modulate, zero_init


@dataclass(frozen=True)
class DiTConfig:
    """DiT sizes; defaults are the CIFAR-10 DiT of Niedoba et al. 2025 (Appendix A.1, Table 2)."""

    hidden_size: int = 768  # token width
    depth: int = 12  # number of transformer blocks
    num_heads: int = 12  # attention heads (hidden_size must be divisible by it)
    patch_size: int = 4  # side of the square patches, in pixels (must divide the image side)
    mlp_ratio: float = 4.0  # MLP hidden width / hidden_size
    noise_embedding: str = "positional"  # 'positional' or 'fourier'
    dropout: float = 0.12  # dropout probability on attention and MLP outputs

    def __post_init__(self):
        for name in ("hidden_size", "depth", "num_heads", "patch_size"):
            check_positive_int(self, name)
        require(self.hidden_size % self.num_heads == 0, "DiTConfig", "num_heads", self.num_heads,
                f"a divisor of hidden_size = {self.hidden_size}")
        require(isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0, "DiTConfig", "mlp_ratio",
                self.mlp_ratio, "a number > 0")
        require(self.noise_embedding in NOISE_EMBEDDINGS, "DiTConfig", "noise_embedding", self.noise_embedding,
                f"one of {list(NOISE_EMBEDDINGS)}")
        check_dropout(self)


def sincos_position_embedding(grid_side: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine embedding of a grid_side x grid_side token grid: [grid_side**2, dim] (dim % 4 == 0)."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [dim / 4]
    rows, cols = torch.meshgrid(torch.arange(grid_side), torch.arange(grid_side), indexing="ij")
    parts = []
    for coordinate in (rows, cols):
        angles = coordinate.reshape(-1, 1).double() * freqs[None, :]  # [T, dim / 4]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> tokens [B, (H/p)*(W/p), C*p*p], patches in row-major order."""
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # [B, H/p, W/p, C, p, p]
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, channels: int, side: int, patch_size: int) -> Tensor:
    """Inverse of patchify: tokens [B, T, C*p*p] -> [B, C, side, side]."""
    b, p, g = tokens.shape[0], patch_size, side // patch_size
    x = tokens.reshape(b, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # [B, C, H/p, p, W/p, p]
    return x.reshape(b, channels, side, side)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-zero conditioning: the noise vector sets shift, scale and gate of both branches."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden_size, hidden_size * 3)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_width = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_width), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(mlp_width, hidden_size), nn.Dropout(dropout))
        self.modulation = zero_init(nn.Linear(hidden_size, hidden_size * 6))  # adaLN-zero: blocks start as identity

    def attention(self, x: Tensor) -> Tensor:
        """Multi-head self-attention over tokens. x: [B, T, D] -> [B, T, D]."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return F.dropout(self.proj(out.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(emb)).chunk(6, dim=1)  # each [B, D]
        x = x + gate1[:, None, :] * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised projection from tokens to pixel patches."""

    def __init__(self, hidden_size: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = zero_init(nn.Linear(hidden_size, hidden_size * 2))
        self.linear = zero_init(nn.Linear(hidden_size, patch_values))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift, scale = self.modulation(F.silu(emb)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer F(x_in, c_noise). x_in: [B, C, H, W]; c_noise: [B]; returns [B, C, H, W]."""

    def __init__(self, config: DiTConfig, img_channels: int, img_resolution: int):
        super().__init__()
        check_image_geometry("DiTConfig", img_channels, img_resolution)
        require(img_resolution % config.patch_size == 0, "DiTConfig", "patch_size", config.patch_size,
                f"a divisor of the image side {img_resolution}")
        require(config.hidden_size % 4 == 0, "DiTConfig", "hidden_size", config.hidden_size,
                "a multiple of 4 (2-D sine-cosine position embedding)")
        self.config, self.img_channels, self.img_resolution = config, img_channels, img_resolution
        d, p = config.hidden_size, config.patch_size
        self.patch_embed = nn.Linear(img_channels * p * p, d)
        self.register_buffer("pos_embed", sincos_position_embedding(img_resolution // p, d), persistent=False)
        self.noise_embedding = NoiseEmbedding(config.noise_embedding, d, d)
        self.blocks = nn.ModuleList([DiTBlock(d, config.num_heads, config.mlp_ratio, config.dropout)
                                     for _ in range(config.depth)])
        self.final = FinalLayer(d, img_channels * p * p)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.noise_embedding(c_noise)  # [B, D]
        x = self.patch_embed(patchify(x_in, self.config.patch_size)) + self.pos_embed  # [B, T, D]
        for block in self.blocks:
            x = block(x, emb)
        tokens = self.final(x, emb)  # [B, T, C*p*p]
        return unpatchify(tokens, self.img_channels, self.img_resolution, self.config.patch_size)
