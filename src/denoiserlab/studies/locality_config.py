"""Moved to `denoiserlab.studies.locality.config`; this module keeps the old import path working."""

from denoiserlab.studies.locality.config import *  # noqa: F401,F403
