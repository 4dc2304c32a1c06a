"""Shared small fixtures: tiny random training sets so tests run in seconds; Triton's interpreter on machines
without CUDA."""

import importlib.util
import os

import pytest
import torch

# Without CUDA the PSPC Triton kernels run on CPU tensors through Triton's interpreter (test_pspc.py). The switch
# must be on before anything imports triton: its own library functions (tl.sum, tl.min, ...) are jitted when triton
# is imported, and other packages the tests import (diffusers) import it at collection.
TRITON_INTERPRETER = importlib.util.find_spec("triton") is not None and not torch.cuda.is_available()
if TRITON_INTERPRETER:
    os.environ["TRITON_INTERPRET"] = "1"

# Tests use tiny tensors, where a second intra-op thread only adds spin-waiting (up to 10x slower on a busy
# 2-core machine). Results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture
def tiny_train() -> torch.Tensor:
    """20 training images 1x6x6 in [-1, 1] (float32)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(20, 1, 6, 6, generator=generator) * 2 - 1


@pytest.fixture
def tiny_rgb_train() -> torch.Tensor:
    """15 training images 3x5x5 in [-1, 1] (float32)."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(15, 3, 5, 5, generator=generator) * 2 - 1


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep on-disk caches (eigendecompositions, ...) out of the user's home during tests."""
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped on a machine without a CUDA GPU (scripts/gpu_check.sh runs them on one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
