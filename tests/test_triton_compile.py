"""The Triton kernels of PSPC-Square and PSPC-Flex compile for a Hopper GPU (sm_90) on this machine, which has none:
the interpreter tests in test_pspc.py check what they compute, this checks that a GPU build accepts them."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_every_triton_kernel_compiles_for_sm90():
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["PYTHONPATH"] = os.pathsep.join(sys.path)
    worker = Path(__file__).with_name("triton_compile_worker.py")
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 6  # two Square kernels at two image shapes, two Flex kernels
