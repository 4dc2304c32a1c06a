"""The sampling demo: every denoiser and network samples from the same initial noise; are the samples copies?

dataset -> denoisers -> Heun PF-ODE sampler -> nearest-training-neighbour distances -> results.json -> figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from denoiserlab import __version__
from denoiserlab.atomic import atomic_write, write_json
from denoiserlab.data import load
from denoiserlab.denoisers import create, load_schedule
from denoiserlab.diffusion import sample_heun, standard_noise
from denoiserlab.distances import nearest_neighbours
from denoiserlab.networks import load as load_network
from denoiserlab.report.sampling_demo import write_sampling_demo_figures
from denoiserlab.studies.common.methods import with_disk_cache
from denoiserlab.validation import check_device


@dataclass(frozen=True)
class SamplingDemoConfig:
    data: str = "fashion-mnist"  # dataset source (built-in name or path)
    n_samples: int = 16  # samples per method, all from the same initial noise
    steps: int = 18  # EDM noise levels, sigma 80 -> 0.002, Heun sampler
    seed: int = 0  # seed of the shared initial noise
    denoisers: dict = field(default_factory=lambda: {  # registry name -> options (a schedule may be named)
        "optimal": {}, "gaussian": {}, "pspc_square": {"patch_size": "cifar10"}})
    networks: dict = field(default_factory=lambda: {  # label -> network path (or shipped:NAME) trained on `data`
        "unet-small": "shipped:unet-small-fashion-mnist"})
    device: str = "cpu"  # torch device of the sampling: 'cpu', 'cuda' or 'cuda:N' (noise is drawn on the CPU)


def run_sampling_demo(config: SamplingDemoConfig, out: Path) -> dict:
    """Sample every configured denoiser from shared noise; write results.json and figures under `out`."""
    check_device(config.device, "device")
    train = load(config.data)
    train_images = train.as_float()
    noise = standard_noise((config.n_samples, *train.image_shape), config.seed).to(config.device)
    samples, timings = {}, {}
    for name, options in config.denoisers.items():
        started = time.perf_counter()
        denoiser = create(name, train_images, **with_disk_cache(name, resolve_named_schedules(options)))
        samples[name] = sample_heun(denoiser, noise, config.steps, progress=True).images.cpu()
        timings[name] = time.perf_counter() - started
        print(f"  {name:12s} sampled {config.n_samples} images in {timings[name]:.1f} s")
    for name, path in config.networks.items():
        started = time.perf_counter()
        network = load_network(path, device=config.device).eval()
        with torch.no_grad():
            samples[name] = sample_heun(network, noise, config.steps, progress=True).images.cpu()
        timings[name] = time.perf_counter() - started
        print(f"  {name:12s} sampled {config.n_samples} images in {timings[name]:.1f} s")
    train_flat = train_images.reshape(len(train_images), -1)
    neighbours = {name: nearest_neighbours(images.reshape(len(images), -1), train_flat)
                  for name, images in samples.items()}
    results = {
        "config": asdict(config),
        "dataset": {"name": train.name, "n_images": len(train), "image_shape": list(train.image_shape)},
        "nearest_neighbour": {name: float(d.mean()) for name, (d, _) in neighbours.items()},
        "nearest_neighbour_per_sample": {name: d.tolist() for name, (d, _) in neighbours.items()},
        "timings_s": timings,
        "version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    nearest_images = {name: train_images[index] for name, (_, index) in neighbours.items()}
    tensors = {f"{kind}/{name}": images.detach().cpu().float().contiguous() for kind, table in
               (("samples", samples), ("nearest", nearest_images)) for name, images in table.items()}
    atomic_write(out / "samples.safetensors", lambda temp: save_file(tensors, str(temp)))  # data only, whole or absent
    write_sampling_demo_figures(results, samples, nearest_images, out)
    return results


def resolve_named_schedules(options: dict) -> dict:
    """Options as written in a config -> constructor arguments: a patch_size given as a name or file is a schedule."""
    resolved = dict(options)
    if isinstance(resolved.get("patch_size"), str):
        resolved["patch_size"] = load_schedule(resolved["patch_size"], kind="patch_size")
    return resolved
