"""Figures and reports: turn results (images, results.json) into PNG and HTML; computes nothing new."""

from denoiserlab.report.images import grid_array, save_figure, save_image_grid, save_labelled_rows

__all__ = ["grid_array", "save_image_grid", "save_labelled_rows", "save_figure"]
