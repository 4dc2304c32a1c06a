"""Moved to `denoiserlab.studies.locality.sets`; this module keeps the old import path working."""

from denoiserlab.studies.locality.sets import *  # noqa: F401,F403
