"""The training loop of `denoiserlab train`: EDM loss, Adam with warm-up, EMA, atomic checkpoints, exact resume.

Run folder layout (`config.out`):
  training_config.json     resolved TrainConfig (a rerun must match it, except kimg/checkpoint_kimg/device/log_kimg)
  training-state.pt        latest full state (model, EMA, optimizer, step, images seen, RNG states, loss history)
  network-KKKKKK/          EMA denoiser checkpoint after KKKKKK kimg (model.safetensors + config.json)
  samples-KKKKKK.png       Heun samples of that EMA network from fixed noise
  loss.csv, loss.png       training loss per logging interval
Every file is written atomically, and the state last, so a run killed at any moment resumes where it saved.

Under torchrun (`torchrun --nproc-per-node K -m denoiserlab train ...`) the network is wrapped in
DistributedDataParallel: every rank draws the same batch, noise levels and noise from the same generator, computes the
loss of its contiguous share of the batch, and the gradients are all-reduced, so a step equals the one-process step
on the same batch of batch_size images (up to the order of float sums; except dropout masks, which each rank draws
for its own share). Rank 0 writes every file; the state is the one-process state, so a run can resume with any number
of processes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab import data, process_group
from denoiserlab.denoisers import OptimalDenoiser
from denoiserlab.diffusion import sample_heun, standard_noise
from denoiserlab.errors import DenoiserLabError
from denoiserlab.atomic import atomic_write, atomic_write_text
from denoiserlab.networks.build import build_denoiser
from denoiserlab.networks.checkpoint import save_checkpoint
from denoiserlab.networks.ema import ema_beta, update_ema
from denoiserlab.networks.loaders import load as load_network
from denoiserlab.networks.loss import edm_loss_at, training_noise
from denoiserlab.networks.precond import CPU_CALL_IMAGES, EDMPrecond
from denoiserlab.networks.training_config import TrainConfig
from denoiserlab.outputs import check_run_folder
from denoiserlab.validation import check_device
from denoiserlab.networks.training_outputs import plot_loss, save_image_grid, write_loss_csv

STATE_FILE = "training-state.pt"
CONFIG_FILE = "training_config.json"
# options a rerun may change
RESUMABLE_CHANGES = ("kimg", "checkpoint_kimg", "log_kimg", "device", "micro_batch_size", "precision")
# most images per forward/backward pass of a training step on a CPU (`micro_batches`): the cache limit of inference
CPU_MICRO_BATCH = CPU_CALL_IMAGES


@dataclass
class TrainingRun:
    """Everything that changes while training; the state file holds all of it."""

    denoiser: torch.nn.Module  # EDMPrecond being optimised
    ema: torch.nn.Module  # its exponential moving average (what checkpoints ship)
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # CPU generator of batches, sigmas and noise
    step: int = 0  # optimiser steps taken
    nimg: int = 0  # training images shown
    history: list = field(default_factory=list)  # loss CSV rows [step, kimg, loss, images/s, lr]
    # `denoiser` wrapped in DistributedDataParallel under torchrun (it all-reduces the gradients), else None
    replica: torch.nn.Module | None = None


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' must exist here (validation.check_device).
    Under torchrun, CUDA is this rank's GPU (process_group.rank_device)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(process_group.rank_device(name), "device")


def new_run(config: TrainConfig, image_shape: tuple[int, int, int], training_data: dict,
            device: torch.device) -> TrainingRun:
    """Freshly initialised network (seeded), EMA copy, Adam and batch generator."""
    torch.manual_seed(config.seed)
    denoiser = build_denoiser(config.arch, image_shape[0], image_shape[1], config.network, training_data)
    if config.init is not None:
        copy_weights(config.init, denoiser)
    denoiser = denoiser.to(device).train()
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                 eps=config.adam_eps)
    generator = torch.Generator().manual_seed(config.seed)
    return TrainingRun(denoiser, ema, optimizer, generator)


def copy_weights(source: str, denoiser: torch.nn.Module) -> None:
    """Load the weights of checkpoint `source` (folder or shipped:NAME) into `denoiser`; they must match exactly."""
    start = load_network(source)
    if not isinstance(start, EDMPrecond) or type(start.net) is not type(denoiser.net):
        raise DenoiserLabError(f"init checkpoint {source} is a {type(getattr(start, 'net', start)).__name__}, "
                               f"not this run's {type(denoiser.net).__name__}")
    if start.net.config != denoiser.net.config:
        raise DenoiserLabError(f"init checkpoint {source} has network {start.net.config}, but this run builds "
                               f"{denoiser.net.config}; set arch/network to match it")
    denoiser.load_state_dict(start.state_dict())


def crossed_interval(nimg: int, batch_size: int, interval_kimg: float) -> bool:
    """Whether the last batch took the image count past a multiple of interval_kimg."""
    interval = max(round(interval_kimg * 1000), 1)
    return nimg // interval > (nimg - batch_size) // interval


def learning_rate(config: TrainConfig, nimg: int) -> float:
    """Linear warm-up over lr_rampup_kimg, then constant or, with lr_decay_kimg, inverse square-root decay
    (Karras et al. 2024, eq. 16); nimg counts images including the current batch."""
    lr = config.lr
    if config.lr_decay_kimg > 0:
        lr /= math.sqrt(max(nimg / (config.lr_decay_kimg * 1000), 1.0))
    if config.lr_rampup_kimg > 0:
        lr *= min(nimg / (config.lr_rampup_kimg * 1000), 1.0)
    return lr


def training_step(run: TrainingRun, config: TrainConfig, train_images: Tensor,
                  posterior_mean: Callable | None = None) -> float:
    """One optimiser step on a random batch (drawn with replacement); updates the EMA; returns the mean loss.
    posterior_mean: the target denoiser when config.target is 'posterior' (see posterior_target). Under torchrun
    each rank computes the loss of its share of the batch (process_group.rank_rows) through run.replica. The share
    goes through the network in micro-batches (config.micro_batch_size; by default at most CPU_MICRO_BATCH images on
    a CPU) whose gradients add up (`micro_batches`): the same step, up to the order of float sums (and dropout's
    draws)."""
    device = train_images.device
    indices = torch.randint(len(train_images), (config.batch_size,), generator=run.generator)
    x0 = train_images[indices.to(device)]
    sigma, eps = training_noise(x0.shape, run.generator, config.sigma_distribution())  # the whole batch's, as before
    model = run.denoiser if run.replica is None else run.replica
    run.optimizer.zero_grad(set_to_none=True)
    pieces = micro_batches(process_group.rank_rows(config.batch_size), config.batch_size, device,
                           config.micro_batch_size)
    loss = torch.zeros((), device=device)
    for number, rows in enumerate(pieces):
        last = number == len(pieces) - 1
        # DistributedDataParallel all-reduces the gradients once, in the last micro-batch's backward pass
        with contextlib.nullcontext() if last or run.replica is None else run.replica.no_sync():
            with bfloat16_autocast(device) if config.uses_bfloat16(device.type) else contextlib.nullcontext():
                part = edm_loss_at(model, x0[rows], sigma[rows], eps[rows], posterior_mean=posterior_mean)
            part = part.sum() / config.batch_size  # this micro-batch's part of the batch mean
            # DistributedDataParallel averages the ranks' gradients; times the world size, that is the gradient of
            # the sum
            (part * process_group.world_size()).backward()
        loss = loss + part.detach()
    if config.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.denoiser.parameters(), config.grad_clip_norm)
    run.nimg += config.batch_size
    run.step += 1
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, run.nimg)
    run.optimizer.step()
    update_ema(run.ema, run.denoiser, ema_beta(config.batch_size, run.nimg, config.ema_halflife_kimg,
                                               config.ema_rampup_ratio))
    return float(process_group.sum_over_ranks(loss))


def micro_batches(rows: slice, batch_size: int, device: torch.device, size: int | None = None) -> list[slice]:
    """The rows of one rank's share of a batch (a slice of range(batch_size)) in consecutive pieces of at most `size`
    images; size None: CPU_MICRO_BATCH on a CPU (a pass's activations then stay nearer the caches: one thread, ms
    per image at batch 128 in one pass / in micro-batches of 32, unet-small on 3x32x32 18.3 / 14.0, on 1x28x28
    11.7 / 10.6, dit-small 16.8 / 16.9; benchmarks/bench_training_microbatch.py), the whole share elsewhere."""
    start, stop, _ = rows.indices(batch_size)
    size = size or (CPU_MICRO_BATCH if device.type == "cpu" else max(1, stop - start))
    # an empty share still takes one (empty) pass: under DistributedDataParallel every rank must reach the all-reduce
    return [slice(first, min(first + size, stop)) for first in range(start, stop, size)] or [slice(start, stop)]


def posterior_target(config: TrainConfig, train_images: Tensor) -> Callable | None:
    """The optimal denoiser of the training set (x-flips are already among train_images) when config.target is
    'posterior', else None."""
    return OptimalDenoiser(train_images) if config.target == "posterior" else None


def rng_state() -> dict:
    """Global RNG states (dropout draws from them)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_state(path: Path, run: TrainingRun) -> None:
    """Write the full training state atomically (torch.save of tensors and plain data)."""
    state = dict(model=run.denoiser.state_dict(), ema=run.ema.state_dict(), optimizer=run.optimizer.state_dict(),
                 generator=run.generator.get_state(), rng=rng_state(), step=run.step, nimg=run.nimg,
                 history=run.history)
    atomic_write(path, lambda temp: torch.save(state, temp))


def load_state(path: Path, run: TrainingRun) -> None:
    """Restore a saved state into `run` (weights_only loading: no code is unpickled); a damaged or foreign state
    file is one error naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        run.denoiser.load_state_dict(state["model"])
        run.ema.load_state_dict(state["ema"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        run.step, run.nimg, run.history = state["step"], state["nimg"], state["history"]
    except Exception as error:  # torch, zip and key errors alike: the file cannot be resumed from
        raise DenoiserLabError(f"cannot resume from {path}: it is damaged or not a training state"
                               f" ({type(error).__name__}); move it away to start the run over") from None


def check_same_run(out: Path, config: TrainConfig) -> None:
    """Refuse to resume a run folder whose saved options differ (other than RESUMABLE_CHANGES)."""
    saved = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    defaults = {option.name: option.default for option in dataclasses.fields(TrainConfig)}
    for key in sorted(set(saved) | set(current)):
        # an option added after the run started counts as its default
        if key not in RESUMABLE_CHANGES and saved.get(key, defaults.get(key)) != current.get(key):
            raise DenoiserLabError(f"{out} holds a run with {key} = {saved.get(key)!r}, but now {key} = "
                                   f"{current.get(key)!r}; use another --out or the same options to resume")


def bfloat16_autocast(device: torch.device):
    """bfloat16 autocast on the device's type. Entered only when wanted: a disabled CPU autocast context in the
    step made a torchrun rank abort at exit now and then (1 in 4 runs of tests/test_distributed.py's training test)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def write_checkpoint(run: TrainingRun, config: TrainConfig, out: Path) -> Path:
    """EMA network folder, sample grid, loss CSV and plot, then the state file (last, so resume never skips); returns
    the network folder. Under torchrun every rank samples its share of the grid, and rank 0 writes."""
    kimg_done = run.nimg // 1000
    image_shape = (run.ema.img_channels, run.ema.img_resolution, run.ema.img_resolution)
    noise = standard_noise((config.sample_count, *image_shape), config.sample_seed)

    def sample(initial_noise: Tensor) -> Tensor:
        with torch.no_grad():
            return sample_heun(run.ema, initial_noise, config.sample_steps).images

    samples = process_group.parallel_over_rows(sample, noise.to(next(run.ema.parameters()).device))
    network_path = out / f"network-{kimg_done:06d}"
    if not process_group.is_main_process():
        return network_path
    training_options = dict(dataclasses.asdict(config), nimg=run.nimg, step=run.step)
    save_checkpoint(network_path, run.ema, config.arch, training_options)
    save_image_grid(out / f"samples-{kimg_done:06d}.png", samples)
    write_loss_csv(out / "loss.csv", run.history)
    plot_loss(out / "loss.png", run.history, f"{config.arch} on {config.data}")
    save_state(out / STATE_FILE, run)
    return network_path


def remove_leftovers(out: Path) -> None:
    """Delete temporary files and folders that a killed run left behind (atomic writes name them .NAME.*.tmp/.old)."""
    for path in [*out.glob(".*.tmp"), *out.glob(".*.old")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def start_or_resume(config: TrainConfig, out: Path, run: TrainingRun) -> None:
    """Load the saved state when the run folder has one (every rank); record the resolved config (rank 0)."""
    main_process = process_group.is_main_process()
    if out.is_dir() and main_process:
        remove_leftovers(out)
    if (out / STATE_FILE).exists():  # written by rank 0 only after a step, which needs every rank: no race
        check_same_run(out, config)
        load_state(out / STATE_FILE, run)
    if main_process:
        atomic_write_text(out / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def data_parallel(module: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """`module` wrapped in DistributedDataParallel in a process group (it starts from rank 0's weights), else None."""
    if not process_group.in_process_group():
        return None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def run_training(config: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) the run of `config` until config.kimg; returns the folder of the last EMA network."""
    out, device = Path(config.out), resolve_device(config.device)
    if config.batch_size < process_group.world_size():
        raise DenoiserLabError(f"batch_size {config.batch_size} is smaller than the {process_group.world_size()} "
                               "processes: every process needs a part of each batch")
    if process_group.is_main_process():  # the writer; other ranks could see its files half-written
        check_run_folder(out, CONFIG_FILE)  # new, empty or a run folder: never write over another folder's files
    images = data.load(**config.data_options())
    train_images = images.as_float().to(device)  # [N, C, H, W] in [-1, 1]
    run = new_run(config, images.image_shape, images.load_options, device)
    posterior_mean = posterior_target(config, train_images)
    start_or_resume(config, out, run)
    run.replica = data_parallel(run.denoiser, device)
    total_nimg = int(config.kimg * 1000)
    last_network = None
    bar = tqdm(total=total_nimg, initial=run.nimg, unit="img", unit_scale=True,
               disable=not progress or not process_group.is_main_process())
    losses, tick_start, tick_nimg = [], time.perf_counter(), run.nimg
    while run.nimg < total_nimg:
        losses.append(training_step(run, config, train_images, posterior_mean))
        bar.update(config.batch_size)
        if run.nimg - tick_nimg >= config.log_kimg * 1000 or run.nimg >= total_nimg:
            images_per_second = (run.nimg - tick_nimg) / max(time.perf_counter() - tick_start, 1e-9)
            run.history.append([run.step, run.nimg / 1000, sum(losses) / len(losses), images_per_second,
                                learning_rate(config, run.nimg)])
            bar.set_postfix(loss=f"{run.history[-1][2]:.4f}", img_s=f"{images_per_second:.1f}")
            losses, tick_start, tick_nimg = [], time.perf_counter(), run.nimg
        if crossed_interval(run.nimg, config.batch_size, config.checkpoint_kimg) or run.nimg >= total_nimg:
            checkpoint_start = time.perf_counter()
            last_network = write_checkpoint(run, config, out)
            tick_start += time.perf_counter() - checkpoint_start  # images/s counts training time only
            if process_group.is_main_process():
                report_checkpoint(run, last_network, bar if progress else None)
    bar.close()
    return last_network or latest_network(out)


def report_checkpoint(run: TrainingRun, network: Path, bar: tqdm | None) -> None:
    """One line per checkpoint (kimg, the last logged loss and images/s, the network's folder), above the progress
    bar or, without one, flushed at once (so a background run's log file shows it as it happens)."""
    logged = ""
    if run.history:
        _, _, loss, images_per_second, lr = run.history[-1]
        logged = f": loss {loss:.4f}, {images_per_second:.1f} images/s, lr {lr:.3g}"
    line = f"{run.nimg / 1000:.1f} kimg (step {run.step}){logged} -> {network}"
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


def latest_network(out: str | Path) -> Path:
    """The checkpoint folder of a run with the most kimg."""
    folders = sorted(Path(out).glob("network-[0-9]*[0-9]"))
    if not folders:
        raise DenoiserLabError(f"{out} holds no network checkpoint yet")
    return folders[-1]
