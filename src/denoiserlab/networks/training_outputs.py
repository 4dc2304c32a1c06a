"""Files a training run writes besides its state: loss CSV, loss plot, sample grid (all written atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from denoiserlab.data import float_to_uint8
from denoiserlab.atomic import atomic_write, atomic_write_text

LOSS_COLUMNS = ("step", "kimg", "loss", "images_per_second", "lr")


def write_loss_csv(path: str | Path, history: list[list[float]]) -> Path:
    """One row per logging interval: step, kimg, mean loss, images/s, learning rate."""
    lines = [",".join(LOSS_COLUMNS)] + [",".join(f"{value:.6g}" for value in row) for row in history]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def plot_loss(path: str | Path, history: list[list[float]], title: str) -> Path:
    """PNG of the mean training loss against kimg (log scale), drawn with the Agg backend."""
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([row[1] for row in history], [row[2] for row in history], lw=1)
    axes.set(xlabel="kimg", ylabel="EDM loss", yscale="log", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return atomic_write(path, lambda temp: figure.savefig(temp, format="png"))


def image_grid(images: Tensor) -> Image.Image:
    """Images [N, C, H, W] in [-1, 1] tiled row by row into a near-square PIL image (1 px gaps)."""
    n, c, h, w = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = float_to_uint8(images.cpu()).permute(0, 2, 3, 1).numpy()  # [N, H, W, C]
    mode = "L" if c == 1 else "RGB"
    grid = Image.new(mode, (columns * (w + 1) + 1, rows * (h + 1) + 1))
    for index in range(n):
        tile = Image.fromarray(pixels[index, :, :, 0] if c == 1 else pixels[index], mode)
        grid.paste(tile, (1 + (index % columns) * (w + 1), 1 + (index // columns) * (h + 1)))
    return grid


def save_image_grid(path: str | Path, images: Tensor, scale: int = 2) -> Path:
    """Save images [N, C, H, W] in [-1, 1] as one PNG grid, enlarged `scale` times (nearest neighbour)."""
    grid = image_grid(images)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return atomic_write(path, lambda temp: temp.write_bytes(buffer.getvalue()))
