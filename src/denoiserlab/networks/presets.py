"""Named network presets: plain dicts naming an architecture and overrides of its config dataclass."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # EDM's CIFAR-10 DDPM++ network (Karras et al. 2022), ~56 M parameters: for GPU users, 32x32 images.
    "unet-cifar": {"architecture": "unet", "network": dict(
        model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13)},
    # CPU-sized DDPM++ U-Net for 28x28 images (28 -> 14 -> 7); use attn_resolutions=[8] for 32x32.
    "unet-small": {"architecture": "unet", "network": dict(
        model_channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[7], dropout=0.0)},
    # NCSN++-style variant of unet-small: Fourier noise features and a residual input-skip encoder.
    "ncsnpp-small": {"architecture": "unet", "network": dict(
        model_channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[7], dropout=0.0,
        noise_embedding="fourier", encoder="residual")},
    # The CIFAR-10 DiT of Niedoba et al. 2025 (Appendix A.1, Table 2).
    "dit-paper": {"architecture": "dit", "network": dict(
        hidden_size=768, depth=12, num_heads=12, patch_size=4, dropout=0.12)},
    # CPU-sized DiT; patch 4 gives 49 tokens on 28x28 and 64 on 32x32.
    "dit-small": {"architecture": "dit", "network": dict(
        hidden_size=192, depth=8, num_heads=3, patch_size=4, dropout=0.0)},
    # CPU-sized MLP-Mixer; patch 4 gives 49 tokens on 28x28 and 64 on 32x32.
    "mixer-small": {"architecture": "mixer", "network": dict(
        hidden_size=192, depth=8, patch_size=4, token_mlp_ratio=2.0, channel_mlp_ratio=4.0, dropout=0.0)},
}
