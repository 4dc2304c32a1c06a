"""Moved to `denoiserlab.studies.gaussian_structure.config`; this module keeps the old import path working."""

from denoiserlab.studies.gaussian_structure.config import *  # noqa: F401,F403
