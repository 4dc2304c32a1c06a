"""Moved to `denoiserlab.studies.locality.heatmaps`; this module keeps the old import path working."""

from denoiserlab.studies.locality.heatmaps import *  # noqa: F401,F403
