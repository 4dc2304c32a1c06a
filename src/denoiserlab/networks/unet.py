"""DDPM++-style U-Net (Song et al. 2021; sizes as in Karras et al. 2022, EDM) and its NCSN++-style variant.

The raw network F(x_in, c_noise) of EDM preconditioning: x_in [B, C, H, W], c_noise [B] -> [B, C, H, W].
Each resolution level after the first halves the image side (28 -> 14 -> 7, 32 -> 16 -> 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from denoiserlab.networks.config_checks import (
    as_int_tuple,
    check_dropout,
    check_image_geometry,
    check_positive_int,
    require,
)
from denoiserlab.networks.layers import NOISE_EMBEDDINGS, NoiseEmbedding, group_norm, zero_init

SKIP_SCALE = math.sqrt(0.5)  # keeps the variance of residual sums at 1


@dataclass(frozen=True)
class UNetConfig:
    """U-Net sizes; defaults are EDM's CIFAR-10 DDPM++ network."""

    model_channels: int = 128  # base width; level i has model_channels * channel_mult[i] channels
    channel_mult: tuple[int, ...] = (2, 2, 2)  # one multiplier per resolution level
    num_blocks: int = 4  # residual blocks per encoder level (the decoder has one more per level)
    attn_resolutions: tuple[int, ...] = (16,)  # image sides (pixels) whose blocks get self-attention
    channels_per_head: int = 64  # attention head width
    emb_mult: int = 4  # noise-conditioning vector width = model_channels * emb_mult
    noise_embedding: str = "positional"  # 'positional' (DDPM++) or 'fourier' (NCSN++)
    encoder: str = "standard"  # 'standard' or 'residual' (NCSN++: downsampled input added at every level)
    dropout: float = 0.10  # dropout probability inside residual blocks

    def __post_init__(self):
        for name in ("model_channels", "num_blocks", "channels_per_head", "emb_mult"):
            check_positive_int(self, name)
        as_int_tuple(self, "channel_mult")
        as_int_tuple(self, "attn_resolutions")
        require(len(self.channel_mult) >= 1 and min(self.channel_mult) >= 1, "UNetConfig", "channel_mult",
                self.channel_mult, "a non-empty list of integers >= 1")
        require(self.noise_embedding in NOISE_EMBEDDINGS, "UNetConfig", "noise_embedding", self.noise_embedding,
                f"one of {list(NOISE_EMBEDDINGS)}")
        require(self.encoder in ("standard", "residual"), "UNetConfig", "encoder", self.encoder,
                "one of ['standard', 'residual']")
        check_dropout(self)


def check_unet_geometry(config: UNetConfig, img_channels: int, img_resolution: int) -> None:
    """The image side must halve exactly at every level, and attention sides must be sides that occur."""
    check_image_geometry("UNetConfig", img_channels, img_resolution)
    levels = len(config.channel_mult)
    require(img_resolution % 2 ** (levels - 1) == 0, "UNetConfig", "channel_mult", list(config.channel_mult),
            f"at most as many levels as {img_resolution} can be halved exactly, plus one")
    sides = [img_resolution // 2**level for level in range(levels)]
    require(all(r in sides for r in config.attn_resolutions), "UNetConfig", "attn_resolutions",
            list(config.attn_resolutions), f"image sides among {sides}")


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map [B, C, H, W], residual added by the caller."""

    def __init__(self, channels: int, channels_per_head: int):
        super().__init__()
        self.heads = max(channels // channels_per_head, 1)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # [B, 3, heads, hd, HW]
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, HW, hd]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, hd]
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ResBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, noise scale/shift, dropout, 3x3 conv; optional attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, attention: bool,
                 channels_per_head: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_dim, out_channels * 2)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attention = SelfAttention(out_channels, channels_per_head) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)  # each [B, C_out, 1, 1]
        h = self.conv2(self.dropout(F.silu(self.norm2(h) * (1 + scale) + shift)))
        x = (self.skip(x) + h) * SKIP_SCALE
        if self.attention is not None:
            x = (x + self.attention(x)) * SKIP_SCALE
        return x


class Downsample(nn.Module):
    """Halve the side: 2x2 average pooling then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.avg_pool2d(x, 2))


class Upsample(nn.Module):
    """Double the side: nearest-neighbour upsampling then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM++ / NCSN++-style U-Net F(x_in, c_noise). x_in: [B, C, H, W]; c_noise: [B]; returns [B, C, H, W]."""

    def __init__(self, config: UNetConfig, img_channels: int, img_resolution: int):
        super().__init__()
        check_unet_geometry(config, img_channels, img_resolution)
        self.config = config
        emb_dim = config.model_channels * config.emb_mult
        self.noise_embedding = NoiseEmbedding(config.noise_embedding, config.model_channels, emb_dim)
        widths = [config.model_channels * mult for mult in config.channel_mult]
        self.conv_in = nn.Conv2d(img_channels, widths[0], 3, padding=1)
        self.encoder, skip_widths = self._build_encoder(config, widths, img_channels, img_resolution, emb_dim)
        block = dict(emb_dim=emb_dim, dropout=config.dropout, channels_per_head=config.channels_per_head)
        self.middle = nn.ModuleList([ResBlock(widths[-1], widths[-1], attention=True, **block),
                                     ResBlock(widths[-1], widths[-1], attention=False, **block)])
        self.decoder = self._build_decoder(config, widths, skip_widths, img_resolution, emb_dim)
        self.norm_out = group_norm(widths[0])
        self.conv_out = zero_init(nn.Conv2d(widths[0], img_channels, 3, padding=1))

    @staticmethod
    def _build_encoder(config, widths, img_channels, img_resolution, emb_dim):
        """Encoder modules in call order, and the width of every skip connection it leaves (conv_in's first)."""
        modules, skip_widths, channels = nn.ModuleList(), [widths[0]], widths[0]
        for level, width in enumerate(widths):
            side = img_resolution // 2**level
            if level > 0:
                modules.append(Downsample(channels))
                if config.encoder == "residual":
                    modules.append(nn.Conv2d(img_channels, channels, 1))  # input skip of the NCSN++ encoder
                skip_widths.append(channels)
            for _ in range(config.num_blocks):
                modules.append(ResBlock(channels, width, emb_dim, config.dropout, side in config.attn_resolutions,
                                        config.channels_per_head))
                channels = width
                skip_widths.append(channels)
        return modules, skip_widths

    @staticmethod
    def _build_decoder(config, widths, skip_widths, img_resolution, emb_dim):
        """Decoder modules in call order: per level (deepest first) num_blocks + 1 blocks, then an upsample."""
        modules, skips, channels = nn.ModuleList(), list(skip_widths), widths[-1]
        for level in reversed(range(len(widths))):
            side = img_resolution // 2**level
            for _ in range(config.num_blocks + 1):
                modules.append(ResBlock(channels + skips.pop(), widths[level], emb_dim, config.dropout,
                                        side in config.attn_resolutions, config.channels_per_head))
                channels = widths[level]
            if level > 0:
                modules.append(Upsample(channels))
        return modules

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.noise_embedding(c_noise)  # [B, emb_dim]
        h = self.conv_in(x_in)
        skips, image = [h], x_in
        for module in self.encoder:
            if isinstance(module, ResBlock):
                h = module(h, emb)
                skips.append(h)
            elif isinstance(module, Downsample):
                h = module(h)
                image = F.avg_pool2d(image, 2)
                if self.config.encoder == "standard":
                    skips.append(h)
            else:  # NCSN++ residual input skip after a downsample
                h = (h + module(image)) * SKIP_SCALE
                skips.append(h)
        for module in self.middle:
            h = module(h, emb)
        for module in self.decoder:
            h = module(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(module, ResBlock) else module(h)
        return self.conv_out(F.silu(self.norm_out(h)))
