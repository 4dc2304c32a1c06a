"""The locality study (Niedoba et al. 2025) with every registered analytical denoiser: `run_locality_study`."""

from denoiserlab.studies.locality.config import LocalityStudyConfig
from denoiserlab.studies.locality.study import run_locality_study

__all__ = ["LocalityStudyConfig", "run_locality_study"]
