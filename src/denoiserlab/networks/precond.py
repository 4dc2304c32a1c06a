"""EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7): turns a raw network F into a denoiser D(x, sigma)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from denoiserlab.validation import check_finite_output, check_images, check_same_image_shape, sigma_per_sample

SIGMA_DATA = 0.5  # standard deviation of the data distribution assumed by EDM preconditioning
# Images per raw-network call on a CPU outside autograd: larger calls outgrow the caches (the emoji U-Net costs 12.1 ms
# per image in 256-image calls, 5.2 in 32-image ones; benchmarks/bench_network_chunking.py)
CPU_CALL_IMAGES = 32


def edm_coefficients(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """c_skip, c_out, c_in, c_noise of EDM (Karras et al. 2022, Table 1) for sigma [B]; each [B], sigma's dtype."""
    variance = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / variance
    c_out = sigma * sigma_data / variance.sqrt()
    c_in = 1 / variance.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Denoiser D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, eq. 7).

    x: [B, C, H, W] (any float dtype); sigma: float or [B] > 0; returns E[x0 | x] with x's shape, dtype, device.
    `training_data` holds the `denoiserlab.data.load` keyword arguments that give back the training set (or None).
    """

    def __init__(self, net: nn.Module, img_channels: int, img_resolution: int, training_data: dict | None = None,
                 sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net = net
        self.img_channels = img_channels
        self.img_resolution = img_resolution
        self.training_data = None if training_data is None else dict(training_data)
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        check_images(x, "x")
        check_same_image_shape(x, (self.img_channels, self.img_resolution, self.img_resolution),
                               "this network's images")
        sigma = sigma_per_sample(sigma, x.shape[0], x.device)  # float64 [B]
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        net_dtype = next(self.net.parameters()).dtype
        x_in = (c_in.to(x.dtype).view(-1, 1, 1, 1) * x).to(net_dtype)
        f_out = self.raw_outputs(x_in, c_noise.to(net_dtype)).to(x.dtype)
        if not self.training:  # evaluation: a NaN is named here, not blamed on the sampler's next input
            check_network_output(self.net, f_out, sigma)
        return c_skip.to(x.dtype).view(-1, 1, 1, 1) * x + c_out.to(x.dtype).view(-1, 1, 1, 1) * f_out

    def raw_outputs(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        """F(x_in, c_noise) [B, C, H, W]; on a CPU without autograd in calls of at most CPU_CALL_IMAGES images (every
        network here treats the images of a batch independently, so this changes nothing but the time)."""
        if x_in.device.type != "cpu" or torch.is_grad_enabled() or x_in.shape[0] <= CPU_CALL_IMAGES:
            return self.net(x_in, c_noise)
        return torch.cat([self.net(x_in[start : start + CPU_CALL_IMAGES], c_noise[start : start + CPU_CALL_IMAGES])
                          for start in range(0, x_in.shape[0], CPU_CALL_IMAGES)])


def check_network_output(net: nn.Module, f_out: Tensor, sigma: Tensor) -> None:
    """Raise when a raw network returned NaN or inf, saying how many of its weights are not finite."""
    if torch.isfinite(f_out).all():
        return
    bad = sum(int((~torch.isfinite(p)).sum()) for p in net.parameters())
    total = sum(p.numel() for p in net.parameters())
    weights = f"{bad} of its {total} weights are NaN or inf" if bad else "its weights are finite"
    check_finite_output(f_out, f"network {type(net).__name__} ({weights})", sigma)
