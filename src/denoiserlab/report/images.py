"""Image grids as PNG: images in, pictures out (no computation beyond layout)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; set once here, where figures are made
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from denoiserlab.atomic import atomic_write  # noqa: E402
from denoiserlab.data.imageset import float_to_uint8  # noqa: E402


def grid_array(images: Tensor, columns: int = 8, padding: int = 1) -> np.ndarray:
    """float [B, C, H, W] in [-1, 1] -> uint8 [rows*(H+p)+p, columns*(W+p)+p, C] tiled (white padding)."""
    pixels = float_to_uint8(images).permute(0, 2, 3, 1).numpy()  # [B, H, W, C]
    count, height, width, channels = pixels.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 255,
                     dtype=np.uint8)
    for index, image in enumerate(pixels):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = image
    return canvas


def save_image_grid(images: Tensor, path: str | Path, columns: int = 8, scale: int = 2) -> Path:
    """Save float [B, C, H, W] images in [-1, 1] as one PNG grid, each pixel scaled up `scale` times."""
    canvas = grid_array(images, columns)
    picture = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return atomic_write(path, lambda temp: picture.save(temp, format="PNG"))


def save_labelled_rows(rows: dict[str, Tensor], path: str | Path, title: str | None = None) -> Path:
    """One row of images per named method, the name at the left: {name: float [B, C, H, W]} -> PNG."""
    figure, axes = plt.subplots(len(rows), 1, figsize=(12, 1.4 * len(rows) + 0.4), squeeze=False)
    for axis, (name, images) in zip(axes[:, 0], rows.items()):
        canvas = grid_array(images, columns=len(images))
        axis.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


def save_figure(figure, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    written = atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)
    return written
