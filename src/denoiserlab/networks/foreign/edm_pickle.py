"""Load NVlabs/edm network pickles (`network-snapshot-*.pkl`) as denoisers den(x, sigma).

EDM's training loop pickles a dict whose `ema` entry is the network (an `EDMPrecond`, `VPPrecond`, `VEPrecond` or
`iDDPMPrecond`, each called as `net(x, sigma, class_labels)` and returning D(x) directly). Its classes are pickled by
EDM's `torch_utils.persistence`: each object becomes a call `torch_utils.persistence._reconstruct_persistent_obj(meta)`
with `meta = {type: 'class', version: 6, module_src: <source of the defining module>, class_name, state}`. Reading such
a file therefore executes the embedded source, so it is refused unless the caller trusts the file. With trust, our
unpickler answers that call itself: it executes each embedded source once into a fresh module while our stand-in
`torch_utils` / `dnnlib` modules (`edm_standins`) are installed, then rebuilds the object from `state`.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import torch
from torch import Tensor, nn

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.foreign.edm_standins import installed_modules, standin_modules
from denoiserlab.networks.foreign.options import check_class_label, check_training_data
from denoiserlab.validation import check_images, check_same_image_shape, sigma_per_sample

PERSISTENCE_VERSION = 6  # format version written by EDM's (and EDM2's) torch_utils.persistence
EDM_MODULE_ROOTS = ("torch_utils", "dnnlib")  # EDM packages whose references we answer with our stand-ins


class EDMUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds EDM persistent objects from their embedded source, using our stand-in modules.

    Only for trusted files: executing the embedded source runs arbitrary code.
    """

    def __init__(self, file, path: Path, standins: dict[str, types.ModuleType]):
        super().__init__(file)
        self.path = path
        self.standins = standins
        self.source_modules: dict[str, types.ModuleType] = {}  # embedded source -> module executed from it

    def find_class(self, module: str, name: str):
        if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
            return self.reconstruct_persistent_object
        if module.split(".")[0] in EDM_MODULE_ROOTS:
            found = getattr(self.standins.get(module), name, None)
            if found is None:
                raise DenoiserLabError(f"{self.path} refers to {module}.{name}, which denoiserlab does not provide")
            return found
        return super().find_class(module, name)

    def reconstruct_persistent_object(self, meta: dict) -> object:
        """Rebuild one persistent object: class `class_name` of the module run from `module_src`, given `state`."""
        if meta.get("type") != "class" or meta.get("version") != PERSISTENCE_VERSION:
            raise DenoiserLabError(
                f"{self.path}: persistent object of type {meta.get('type')!r}, version {meta.get('version')!r};"
                f" only type 'class', version {PERSISTENCE_VERSION} (EDM's format) is supported"
            )
        module = self.module_from_source(meta["module_src"])
        if meta["class_name"] not in module.__dict__:
            raise DenoiserLabError(f"{self.path}: embedded source does not define class {meta['class_name']!r}")
        cls = module.__dict__[meta["class_name"]]
        obj = cls.__new__(cls)
        state = meta["state"] or {}
        if callable(getattr(obj, "__setstate__", None)):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state)
        return obj

    def module_from_source(self, source: str) -> types.ModuleType:
        """The module obtained by executing `source` (once per distinct source in this file)."""
        if source not in self.source_modules:
            name = f"denoiserlab_edm_source_{len(self.source_modules)}"
            module = types.ModuleType(name, f"module source embedded in {self.path}")
            exec(compile(source, f"<{name} from {self.path.name}>", "exec"), module.__dict__)
            self.source_modules[source] = module
        return self.source_modules[source]


def read_edm_pickle(path: Path) -> object:
    """Unpickle a trusted EDM pickle with our stand-in modules; any failure becomes an error naming the file."""
    standins = standin_modules()
    try:
        with open(path, "rb") as file, installed_modules(standins):
            return EDMUnpickler(file, path, standins).load()
    except DenoiserLabError:
        raise
    except Exception as error:
        raise DenoiserLabError(f"cannot read EDM pickle {path}: {type(error).__name__}: {error}") from error


def network_from_snapshot(snapshot: object, path: Path) -> nn.Module:
    """The `ema` network of an EDM snapshot dict, checked to carry `img_channels` and `img_resolution`."""
    if not isinstance(snapshot, dict) or "ema" not in snapshot:
        found = sorted(snapshot) if isinstance(snapshot, dict) else type(snapshot).__name__
        raise DenoiserLabError(f"{path} is not an EDM network snapshot (a dict with key 'ema'); found {found}")
    net = snapshot["ema"]
    if not isinstance(net, nn.Module) or not all(hasattr(net, a) for a in ("img_channels", "img_resolution")):
        raise DenoiserLabError(
            f"{path}: 'ema' is a {type(net).__name__}, not an EDM network with img_channels and img_resolution"
        )
    return net


class EDMNetworkDenoiser(nn.Module):
    """Denoiser den(x, sigma) around an EDM network `net(x, sigma, class_labels)`, which returns D(x) itself.

    x: [B, C, H, W] in [-1, 1]; sigma: float or [B] > 0; returns [B, C, H, W] in x's dtype and device (the network
    runs in float32). A class-conditional network is evaluated at the fixed `class_label` (one-hot).
    """

    def __init__(self, net: nn.Module, training_data: dict | None = None, class_label: int | None = None):
        super().__init__()
        self.net = net.eval()
        self.img_channels = int(net.img_channels)
        self.img_resolution = int(net.img_resolution)
        self.label_dim = int(getattr(net, "label_dim", 0))  # number of classes, 0 = unconditional
        self.class_label = check_class_label(class_label, self.label_dim, "this EDM network")
        self.training_data = check_training_data(training_data)

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        check_images(x, "x")
        check_same_image_shape(x, (self.img_channels, self.img_resolution, self.img_resolution), "the network's images")
        sigma = sigma_per_sample(sigma, x.shape[0], x.device).to(torch.float32)  # [B]
        return self.net(x.to(torch.float32), sigma, self.class_labels(x.shape[0], x.device)).to(x.dtype)

    def class_labels(self, batch: int, device: torch.device) -> Tensor | None:
        """One-hot labels [B, label_dim] for `class_label`, or None for an unconditional network."""
        if self.class_label is None:
            return None
        labels = torch.zeros(batch, self.label_dim, device=device)
        labels[:, self.class_label] = 1
        return labels


def load_edm_pickle(path: str | Path, trust_pickle: bool = False, device: str | torch.device = "cpu",
                    class_label: int | None = None, training_data: dict | None = None) -> EDMNetworkDenoiser:
    """Load the `ema` network of an NVlabs/edm snapshot pickle as a denoiser on `device`.

    Pickles run code when read, so without `trust_pickle=True` the file is refused before any byte is unpickled.
    `class_label`: the class to condition on (class-conditional networks only). `training_data`: the
    `denoiserlab.data.load` arguments of the network's training set, if known (else None).
    """
    path = Path(path)
    if not path.is_file():
        raise DenoiserLabError(f"EDM pickle {path} does not exist or is not a file")
    if not trust_pickle:
        raise DenoiserLabError(
            f"{path} is a pickle, which runs code when loaded; if you trust its source, load it with"
            " trust_pickle=True (command line: --trust-pickle)"
        )
    net = network_from_snapshot(read_edm_pickle(path), path)
    return EDMNetworkDenoiser(net, training_data, class_label).to(device)
