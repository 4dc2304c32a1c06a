"""Copy a training run's EMA checkpoint into the package assets (shipped:NAME), optionally with float16 weights.

    .venv/bin/python scripts/ship_checkpoint.py runs/sweep/n16/network-000050 sweep-fashion-mnist/n16 [--float16]

Writes src/denoiserlab/assets/checkpoints/NAME/ with config.json, model.safetensors, and the run's loss.csv and the
sample grid of that checkpoint (samples.png) when present. Float16 halves the size; the weights load back into the
float32 network (a shift of about 1e-3 in outputs, checked below on random inputs). The training machine's absolute
folders in the recorded options (`out`, `init`) are written relative to the folder that held the run, so the shipped
config names no one's home directory.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from denoiserlab.networks import load_checkpoint
from denoiserlab.networks.checkpoint import (CHECKPOINT_FORMAT, CONFIG_FILE, WEIGHTS_FILE, is_checkpoint_folder,
                                             read_checkpoint_config)

ASSETS = Path(__file__).resolve().parents[1] / "src" / "denoiserlab" / "assets" / "checkpoints"


def largest_output_change(source: Path, shipped: Path) -> float:
    """Max |D_shipped - D_source| over random inputs at a few sigmas, [-1, 1] scale."""
    original, copy = load_checkpoint(source).eval(), load_checkpoint(shipped).eval()
    x = torch.randn(8, original.img_channels, original.img_resolution, original.img_resolution,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return max((original(x * s, s) - copy(x * s, s)).abs().max().item() for s in (80.0, 3.0, 0.5, 0.02))


def portable_path(value: str | None, runs_folder: Path) -> str | None:
    """`value` relative to `runs_folder` when it is an absolute path under it, its last part when elsewhere."""
    if value is None or not Path(value).is_absolute():
        return value
    path = Path(value)
    return str(path.relative_to(runs_folder)) if path.is_relative_to(runs_folder) else path.name


def shipped_config(checkpoint: Path) -> dict:
    """The checkpoint's config.json with its training `out` and `init` made machine-independent."""
    config = read_checkpoint_config(checkpoint)
    training = config.get("training") or {}
    runs_folder = checkpoint.resolve().parent.parent
    for key in ("out", "init"):
        if key in training:
            training[key] = portable_path(training[key], runs_folder)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a run's network-KKKKKK folder")
    parser.add_argument("name", help="name under assets/checkpoints (subfolders allowed)")
    parser.add_argument("--float16", action="store_true", help="store the weights as float16")
    args = parser.parse_args()
    if not is_checkpoint_folder(args.checkpoint):
        parser.error(f"{args.checkpoint} is not a checkpoint folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    target = ASSETS / args.name
    target.mkdir(parents=True, exist_ok=True)
    config = shipped_config(args.checkpoint)
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = load_file(str(args.checkpoint / WEIGHTS_FILE))
    if args.float16:
        tensors = {key: value.half() if value.is_floating_point() else value for key, value in tensors.items()}
    save_file(tensors, str(target / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
    run = args.checkpoint.parent
    kimg = args.checkpoint.name.split("-")[-1]
    for source, name in ((run / "loss.csv", "loss.csv"), (run / f"samples-{kimg}.png", "samples.png")):
        if source.is_file():
            shutil.copyfile(source, target / name)
    size = (target / WEIGHTS_FILE).stat().st_size / 2**20
    print(f"{target}: {size:.2f} MB weights; largest output change {largest_output_change(args.checkpoint, target):.2e}")


if __name__ == "__main__":
    main()
