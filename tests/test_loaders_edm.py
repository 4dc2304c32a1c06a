"""EDM snapshot pickles: refused without trust (before any code runs), loaded with trust without EDM's repository.

The test writes its own emulation of the pickling side of EDM's `torch_utils.persistence` (each persistent object
reduces to `_reconstruct_persistent_obj(meta)` with meta = {type, version, module_src, class_name, state}) and of
`dnnlib.util.EasyDict`, pickles a snapshot dict {'ema': net, 'loss_fn': ..., ...} with them, removes them from
`sys.modules`, and loads the file through `denoiserlab.networks.loaders.load`.
"""

from __future__ import annotations

import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.loaders import detect_format, load

PERSISTENCE_SOURCE = '''
import copy
import inspect
import sys


def _reconstruct_persistent_obj(meta):
    raise RuntimeError("only the loader under test unpickles")


def persistent_class(orig_class):
    module_src = inspect.getsource(sys.modules[orig_class.__module__])

    class Persistent(orig_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            state = super().__reduce__()[2]
            meta = dict(type="class", version=VERSION, module_src=module_src, class_name=orig_class.__name__,
                        state=state)
            return _reconstruct_persistent_obj, (meta,), None

    Persistent.__name__ = Persistent.__qualname__ = orig_class.__name__
    Persistent.__module__ = orig_class.__module__
    return Persistent
'''

EASYDICT_SOURCE = '''
class EasyDict(dict):
    def __getattr__(self, name):
        return self[name]
'''

# An EDM-like network module. Executing it writes MARKER, so the test can tell whether the embedded source ran.
NETWORK_SOURCE = '''
import pathlib

import numpy as np
import torch
from torch.nn.functional import silu
from torch_utils import persistence

pathlib.Path(MARKER).write_text("the embedded source ran")


@persistence.persistent_class
class TinyUNet(torch.nn.Module):
    def __init__(self, channels, hidden, label_dim):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.noise_map = torch.nn.Linear(1, hidden)
        self.label_map = torch.nn.Linear(label_dim, hidden, bias=False) if label_dim else None
        self.conv_out = torch.nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels):
        emb = self.noise_map(noise_labels[:, None])
        if self.label_map is not None:
            emb = emb + self.label_map(class_labels)
        return self.conv_out(silu(self.conv_in(x) + emb[:, :, None, None]))


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_data=0.5, hidden=8):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.model = TinyUNet(img_channels, hidden, label_dim)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim and class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        F_x = self.model(c_in * x, (sigma.log() / 4).flatten(), class_labels)
        return c_skip * x + c_out * F_x


@persistence.persistent_class
class EDMLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
'''

EDM_MODULE_NAMES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "edm_like_networks")


def write_edm_emulation(root: Path, marker: Path, version: int) -> None:
    """The emulated EDM packages and the EDM-like network module, as files under `root`."""
    for folder in ("torch_utils", "dnnlib"):
        (root / folder).mkdir()
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "persistence.py").write_text(f"VERSION = {version}\n" + PERSISTENCE_SOURCE)
    (root / "dnnlib" / "__init__.py").write_text("from .util import EasyDict\n")
    (root / "dnnlib" / "util.py").write_text(EASYDICT_SOURCE)
    (root / "edm_like_networks.py").write_text(f"MARKER = {str(marker)!r}\n" + textwrap.dedent(NETWORK_SOURCE))


def write_snapshot(tmp_path: Path, label_dim: int = 0, version: int = 6) -> tuple[Path, Path, torch.nn.Module]:
    """Pickle an EDM-like snapshot as EDM's training loop does; returns (pkl path, marker path, original net)."""
    marker = tmp_path / "marker.txt"
    root = tmp_path / "edm_code"
    root.mkdir()
    write_edm_emulation(root, marker, version)
    sys.path.insert(0, str(root))
    saved = {name: sys.modules.pop(name) for name in EDM_MODULE_NAMES if name in sys.modules}
    try:
        import dnnlib
        import edm_like_networks

        torch.manual_seed(0)
        net = edm_like_networks.EDMPrecond(img_resolution=8, img_channels=2, label_dim=label_dim)
        net = net.eval().requires_grad_(False)
        snapshot = dict(ema=net, loss_fn=edm_like_networks.EDMLoss(), augment_pipe=None,
                        dataset_kwargs=dnnlib.EasyDict(path="datasets/tiny.zip", xflip=False))
        path = tmp_path / "network-snapshot-000100.pkl"
        path.write_bytes(pickle.dumps(snapshot))
    finally:
        sys.path.remove(str(root))
        for name in EDM_MODULE_NAMES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    marker.unlink()
    return path, marker, net


def reference_denoiser(net: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
    """EDM preconditioning (Karras et al. 2022, Table 1) written out in float64 around the original inner model."""
    x, sigma = x.double(), sigma.double().view(-1, 1, 1, 1)
    c_skip = 0.25 / (sigma**2 + 0.25)
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    c_in = 1 / (sigma**2 + 0.25).sqrt()
    net.model.double()  # float32 -> float64 -> float32 round trip is exact
    try:
        with torch.no_grad():
            return c_skip * x + c_out * net.model(c_in * x, sigma.log().flatten() / 4, labels)
    finally:
        net.model.float()


def test_refused_without_trust_before_any_code_runs(tmp_path):
    path, marker, _ = write_snapshot(tmp_path)
    assert detect_format(path) == "edm-pickle"
    with pytest.raises(DenoiserLabError) as error:
        load(path)
    assert str(path) in str(error.value) and "--trust-pickle" in str(error.value)
    assert not marker.exists()


def test_trusted_load_matches_the_original_network(tmp_path):
    path, marker, net = write_snapshot(tmp_path)
    den = load(path, trust_pickle=True)
    assert marker.exists()  # the embedded source ran, with our stand-ins only
    left_behind = [name for name in sys.modules if name.split(".")[0] in ("torch_utils", "dnnlib", "edm_like_networks")]
    assert left_behind == []
    assert isinstance(den, torch.nn.Module)
    assert (den.img_channels, den.img_resolution, den.training_data) == (2, 8, None)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.01, 0.7, 30.0])
    with torch.no_grad():
        out = den(x, sigma)
        out_float = den(x, 0.7)
    torch.testing.assert_close(out.double(), reference_denoiser(net, x, sigma), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_float.double(), reference_denoiser(net, x, torch.full((3,), 0.7)), rtol=1e-5,
                               atol=1e-5)
    assert out.dtype == x.dtype and out.shape == x.shape
    with torch.no_grad():
        out64 = den(x.double(), sigma)
    assert out64.dtype == torch.float64


def test_stand_ins_do_not_replace_modules_already_loaded(tmp_path, monkeypatch):
    path, _, _ = write_snapshot(tmp_path)
    sentinel = type(sys)("dnnlib")
    monkeypatch.setitem(sys.modules, "dnnlib", sentinel)
    load(path, trust_pickle=True)
    assert sys.modules["dnnlib"] is sentinel


def test_class_conditional_network_needs_a_label(tmp_path):
    path, _, net = write_snapshot(tmp_path, label_dim=3)
    with pytest.raises(DenoiserLabError, match="class_label"):
        load(path, trust_pickle=True)
    den = load(path, trust_pickle=True, class_label=2, training_data={"source": "fashion-mnist", "subset": 500})
    assert den.training_data == {"source": "fashion-mnist", "subset": 500}
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.3, 3.0])
    with torch.no_grad():
        out = den(x, sigma)
    one_hot = torch.tensor([[0.0, 0.0, 1.0]] * 2, dtype=torch.float64)
    torch.testing.assert_close(out.double(), reference_denoiser(net, x, sigma, one_hot), rtol=1e-5, atol=1e-5)


def test_bad_input_and_options(tmp_path):
    path, _, _ = write_snapshot(tmp_path)
    den = load(path, trust_pickle=True)
    with pytest.raises(DenoiserLabError, match="shape"):
        den(torch.zeros(1, 3, 8, 8), 1.0)
    with pytest.raises(DenoiserLabError, match="sigma"):
        den(torch.zeros(1, 2, 8, 8), 0.0)
    with pytest.raises(DenoiserLabError, match="scheduler"):
        load(path, trust_pickle=True, scheduler="x")
    with pytest.raises(DenoiserLabError, match="training_data"):
        load(path, trust_pickle=True, training_data={"sauce": "fashion-mnist"})


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps([1, 2, 3]), pickle.dumps({"net": 1}),
                                     pickle.dumps({"ema": "text"})])
def test_corrupt_or_foreign_pickles_name_the_file(tmp_path, content):
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(content)
    with pytest.raises(DenoiserLabError, match=str(path)):
        load(path, trust_pickle=True)


def test_truncated_snapshot_names_the_file(tmp_path):
    path, _, _ = write_snapshot(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DenoiserLabError, match=str(path)):
        load(path, trust_pickle=True)


def test_unknown_persistence_version_is_refused(tmp_path):
    path, _, _ = write_snapshot(tmp_path, version=5)
    with pytest.raises(DenoiserLabError, match="version 5"):
        load(path, trust_pickle=True)


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_loads_onto_cuda(tmp_path):
    path, _, net = write_snapshot(tmp_path)
    den = load(path, trust_pickle=True, device="cuda")
    x, sigma = torch.randn(3, 2, 8, 8), torch.tensor([0.05, 1.0, 20.0])
    with torch.no_grad():
        out = den(x.cuda(), sigma.cuda())
    assert out.device.type == "cuda"
    # CUDA convolutions may run in TF32 (10-bit mantissa), hence the looser tolerance
    torch.testing.assert_close(out.cpu().double(), reference_denoiser(net, x, sigma), rtol=1e-2, atol=1e-2)
