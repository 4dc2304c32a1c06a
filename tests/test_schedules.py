"""Patch-size and threshold schedules: the paper's CIFAR-10 lists, nearest grid point, TOML/JSON files."""

import json

import pytest

from denoiserlab.denoisers import PatchSchedule, ThresholdSchedule, load_schedule
from denoiserlab.errors import DenoiserLabError

# Niedoba et al. 2025, CIFAR-10 (18-step EDM grid, high sigma -> low sigma)
PAPER_PATCH_SIZES = [32, 32, 32, 32, 32, 32, 32, 23, 15, 11, 7, 5, 3, 3, 3, 3, 3, 3]
PAPER_THRESHOLDS = [1, 1, 1, 1, 1, 1, 1, 0.7, 0.7, 0.5, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3]


def edm_grid(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """Karras et al. 2022, eq. 5, written out."""
    return [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            for i in range(n)]


def test_cifar10_lists_and_grid_points():
    patch, threshold = PatchSchedule.cifar10(), ThresholdSchedule.cifar10()
    assert list(patch.values) == PAPER_PATCH_SIZES and list(threshold.values) == PAPER_THRESHOLDS
    for sigma, size, lam in zip(edm_grid(18), PAPER_PATCH_SIZES, PAPER_THRESHOLDS):
        assert patch(sigma) == size and threshold(sigma) == lam


def test_nearest_grid_point_is_nearest_in_sigma():
    schedule = PatchSchedule(tuple(range(1, 19)))
    grid = edm_grid(18)
    midpoints = [(a + b) / 2 * 1.001 for a, b in zip(grid, grid[1:])]
    for sigma in [1000.0, 79.0, 3.3, 1.0, 0.5, 0.1, 0.01, 0.0021, 1e-5] + midpoints:
        distances = [abs(point - sigma) for point in grid]
        assert schedule(sigma) == distances.index(min(distances)) + 1
    # between grid points 9 and 10 (sigma ~ 1.30 and ~ 0.88) the log-sigma midpoint is nearer to point 10 in sigma
    log_midpoint = (grid[8] * grid[9]) ** 0.5
    assert schedule(log_midpoint) == 10


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    patch = PatchSchedule((9, 5, 3), sigma_min=0.01, sigma_max=10.0, rho=5.0)
    threshold = ThresholdSchedule((1.0, 0.5))
    assert load_schedule(patch.save(tmp_path / f"p{suffix}")) == patch
    assert load_schedule(threshold.save(tmp_path / f"t{suffix}"), kind="threshold") == threshold
    assert load_schedule("cifar10") == PatchSchedule.cifar10()
    assert load_schedule("cifar10", kind="threshold") == ThresholdSchedule.cifar10()


def test_bad_schedules_and_files(tmp_path):
    with pytest.raises(DenoiserLabError, match="patch sizes"):
        PatchSchedule((3, 0))
    with pytest.raises(DenoiserLabError, match="thresholds"):
        ThresholdSchedule((1.0, 1.5))
    with pytest.raises(DenoiserLabError, match="at least one"):
        PatchSchedule(())
    with pytest.raises(DenoiserLabError, match="sigma must be > 0"):
        PatchSchedule.cifar10()(0.0)
    (tmp_path / "extra.json").write_text(json.dumps({"kind": "patch_size", "values": [3], "steps": 18}))
    with pytest.raises(DenoiserLabError, match="unknown key"):
        load_schedule(tmp_path / "extra.json")
    ThresholdSchedule((0.5,)).save(tmp_path / "t.toml")
    with pytest.raises(DenoiserLabError, match="expected 'patch_size'"):
        load_schedule(tmp_path / "t.toml")
    with pytest.raises(DenoiserLabError, match="does not exist"):
        load_schedule(tmp_path / "missing.toml")
    with pytest.raises(DenoiserLabError, match=".toml or .json"):
        PatchSchedule((3,)).save(tmp_path / "p.yaml")
    (tmp_path / "broken.toml").write_text("values = [")
    with pytest.raises(DenoiserLabError, match="cannot parse"):
        load_schedule(tmp_path / "broken.toml")
