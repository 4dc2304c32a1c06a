"""The hidden-Gaussian-structure study (Li et al. 2024): `run_gaussian_study`."""

from denoiserlab.studies.gaussian_structure.config import GaussianStudyConfig
from denoiserlab.studies.gaussian_structure.study import run_gaussian_study

__all__ = ["GaussianStudyConfig", "run_gaussian_study"]
