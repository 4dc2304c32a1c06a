"""benchmarks/bench_gpu.py runs end to end at tiny sizes on the CPU (as CI has no GPU), and every row it prints agrees
with its float64 reference. Timings are printed, never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
TINY = ["--device", "cpu", "--n", "200", "--shape", "3x16x16", "--repeats", "0", "--z", "1",
        "--network", "shipped:mixer-small-fashion-mnist", "--train-batch", "4"]


def test_bench_gpu_runs_on_the_cpu_and_matches_its_references(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "DENOISERLAB_CACHE": str(tmp_path / "user-cache")}
    done = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--out", str(tmp_path / "bench.json")], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| measurement | N | cpu | max abs diff cpu |" in done.stdout and "load average" in done.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [row["name"].split(" ")[0] for row in report["rows"]]
    assert names == ["optimal", "PSPC-Square", "PSPC-Flex", "Gaussian", "ELS", "heatmaps", "training"]
    for row in report["rows"]:
        assert row["device_value"] > 0 and row["cpu_value"] is None
        assert row["max_abs_diff"] < 1e-4, row
    assert report["finished"] and report["failures"] == {}
    assert report["environment"]["device"] == "cpu" and report["settings"]["n"] == 200
