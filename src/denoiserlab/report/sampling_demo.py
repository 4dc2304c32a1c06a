"""Figures of the sampling demo: sample rows per method with nearest training neighbours, and distances."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from torch import Tensor

from denoiserlab.report.images import save_figure, save_labelled_rows


def write_sampling_demo_figures(results: dict, samples: dict[str, Tensor], nearest: dict[str, Tensor],
                                out: Path) -> list[Path]:
    """samples.png (each method's samples above their nearest training images) and nearest_neighbour.png."""
    rows = {}
    for name, images in samples.items():
        rows[name] = images
        rows[f"{name}: nearest train"] = nearest[name]
    paths = [save_labelled_rows(rows, out / "samples.png", title="Samples from shared initial noise")]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    per_sample = results["nearest_neighbour_per_sample"]
    axis.boxplot(list(per_sample.values()), tick_labels=list(per_sample.keys()))
    axis.set_ylabel("L2 distance to nearest training image")
    axis.set_title("Memorization check (0 = a copy of a training image)")
    paths.append(save_figure(figure, out / "nearest_neighbour.png"))
    return paths
