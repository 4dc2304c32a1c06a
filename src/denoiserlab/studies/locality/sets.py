"""Evaluation sets of the locality study (step 1) and denoiser outputs on them.

Forward process: per sigma, M pairs (training image drawn uniformly with replacement, flips included when enabled;
standard normal noise), z = x0 + sigma * eps. Reverse process: a network's own Heun PF-ODE trajectory from shared
initial noise on the study grid; at grid point i the inputs are the trajectory's x at sigmas[i] (where the sampler
evaluates the network first), and every other denoiser is evaluated at those same inputs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.analysis.noisy_inputs import denoise_in_batches
from denoiserlab.diffusion import sample_heun, standard_noise

Denoiser = Callable[[Tensor, "float | Tensor"], Tensor]


def forward_set(train: Tensor, sigmas: Tensor, n_pairs: int, seed: int) -> dict[str, Tensor]:
    """{"x0", "z": float32 [L, M, C, H, W], "indices": int64 [L, M]} for sigmas [L]; reproducible from seed."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(train.shape[0], (len(sigmas), n_pairs), generator=generator)  # [L, M]
    eps = torch.randn((len(sigmas), n_pairs, *train.shape[1:]), generator=generator)  # [L, M, C, H, W]
    x0 = train[indices]
    z = x0 + sigmas.to(torch.float32).view(-1, 1, 1, 1, 1) * eps
    return {"x0": x0, "z": z, "indices": indices}


def shared_noise(n_images: int, image_shape: tuple[int, ...], seed: int) -> Tensor:
    """The shared unit-variance initial noise of the reverse process and of every sampler: [R, C, H, W]."""
    return standard_noise((n_images, *image_shape), seed)


@torch.no_grad()
def reverse_set(network: Denoiser, noise: Tensor, sigmas: Tensor, device: str = "cpu",
                progress: bool = True) -> dict[str, Tensor]:
    """The network's Heun trajectory from noise * sigmas[0] on grid sigmas [L] (then 0).

    Returns {"z": [L, R, C, H, W] inputs at sigmas[i], "network": [L, R, C, H, W] its outputs there,
    "samples": [R, C, H, W] the final images}, float32 on CPU.
    """
    result = sample_heun(network, noise.to(device), sigmas, return_trajectory=True, progress=progress)
    return {"z": result.x_t[:-1].cpu().float(), "network": result.denoised.cpu().float(),
            "samples": result.images.cpu().float()}


@torch.no_grad()
def outputs_on(den: Denoiser, z: Tensor, sigmas: Tensor, batch_size: int, device: str = "cpu",
               label: str = "", progress: bool = True) -> Tensor:
    """den evaluated at every input of a set: z [L, M, C, H, W] at sigmas [L] -> float32 [L, M, C, H, W] (CPU)."""
    outputs = torch.empty_like(z, dtype=torch.float32)
    for level in tqdm(range(len(sigmas)), desc=label or "denoising", leave=False, disable=not progress):
        outputs[level] = denoise_in_batches(den, z[level].to(device), float(sigmas[level]), batch_size).cpu()
    return outputs


@torch.no_grad()
def samples_from(den: Denoiser, noise: Tensor, sigmas: Tensor, device: str = "cpu", progress: bool = True) -> Tensor:
    """Heun PF-ODE samples of den from the shared noise on grid sigmas (then 0): float32 [R, C, H, W] (CPU)."""
    return sample_heun(den, noise.to(device), sigmas, progress=progress).images.cpu().float()
