"""Moved to `denoiserlab.studies.common.cache`; this module keeps the old import path working."""

from denoiserlab.studies.common.cache import *  # noqa: F401,F403
