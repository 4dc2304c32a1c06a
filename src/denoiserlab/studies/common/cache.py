"""Stage cache of a study: each stage's output stored atomically under DIR/stages/, keyed by what it depends on.

A stage is a name plus a key (a JSON-able table of the resolved config parts and input fingerprints it depends on).
Its output lives in `DIR/stages/<name>-<hash of key>.safetensors`: the tensors of the value as safetensors, and
the rest of the value (nested dicts, lists, tuples, numbers, strings, None) as JSON in the file's metadata, beside
the key and the compute time. Neither format can run code, and every file read back is treated as untrusted: one
that does not parse, does not hold exactly such a value, or was stored under another key is computed again and
overwritten. Files are written with `denoiserlab.atomic.atomic_write`, so a killed run (kill -9 included) leaves
either the finished file or none; stale temporary files of killed writes (untouched for ten minutes: another
process sharing the folder may be writing the fresh ones) are removed when the cache opens. A rerun
loads finished stages instead of computing them; a changed key gives a new file name, so a stage is never read
under the wrong settings. `write_value` / `read_value` store other values (e.g. a study's arrays for figures) the
same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from denoiserlab.atomic import atomic_write
from denoiserlab.errors import DenoiserLabError
from denoiserlab.process_group import in_process_group, is_main_process
from denoiserlab.studies.common.ranks import broadcast_flag, broadcast_value

STAGE_SUFFIX = ".safetensors"
STAGE_FORMAT = "denoiserlab-stage-1"  # metadata "format" of a stage file; other values are not read
VALUE_FORMAT = "denoiserlab-value-1"  # metadata "format" of other files written by write_value (e.g. arrays)


def key_hash(key: dict) -> str:
    """A short hash of a JSON-able key (sorted keys, so dict order does not matter)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of every file in a folder (relative names included)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def checkpoint_fingerprint(path: str | Path) -> str:
    """Content hash of a network: of its weights file when `path` is a checkpoint folder (so a README or sample grid
    beside the weights does not change it), else of the file or folder (file_fingerprint)."""
    from denoiserlab.networks.checkpoint import WEIGHTS_FILE

    path = Path(path)
    weights = path / WEIGHTS_FILE
    return file_fingerprint(weights if path.is_dir() and weights.is_file() else path)


class StageFileError(ValueError):
    """A stage file that cannot be read back as a stage value (corrupt, planted, or from another format)."""


def encode_value(value: Any, tensors: dict[str, Tensor]) -> Any:
    """A stage value as a JSON tree: each node is a one-key table ("tensor", "array", "list", "tuple", "dict",
    "value"); tensors and numpy arrays go into `tensors` under the names the tree refers to."""
    if isinstance(value, Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"tensor": name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"array": name}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [encode_value(item, tensors) for item in value]}
    if isinstance(value, dict):
        if not all(isinstance(key, (str, int, float, bool)) or key is None for key in value):
            raise TypeError(f"stage values may only have str, number or None dict keys, got {list(value)[:3]}")
        return {"dict": [[key, encode_value(item, tensors)] for key, item in value.items()]}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {"value": value}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return {"value": value.item()}
    raise TypeError(f"a stage value cannot hold a {type(value).__name__} (tensors, arrays, numbers, strings, None"
                    " and dicts, lists or tuples of them only)")


def decode_value(node: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of encode_value; raises StageFileError on any tree that encode_value cannot have written."""
    if not isinstance(node, dict) or len(node) != 1:
        raise StageFileError(f"malformed value node {str(node)[:80]}")
    (kind, content), = node.items()
    if kind in ("tensor", "array"):
        if not isinstance(content, str) or content not in tensors:
            raise StageFileError(f"value refers to a missing tensor {content!r}")
        return tensors[content] if kind == "tensor" else tensors[content].numpy()
    if kind in ("list", "tuple") and isinstance(content, list):
        items = [decode_value(item, tensors) for item in content]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(content, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in content):
            raise StageFileError("malformed dict node")
        return {key: decode_value(item, tensors) for key, item in content}
    if kind == "value" and (isinstance(content, (bool, int, float, str)) or content is None):
        return content
    raise StageFileError(f"unknown value node kind {kind!r}")


def write_value(path: str | Path, value: Any, metadata: dict[str, str] | None = None,
                value_format: str = VALUE_FORMAT) -> Path:
    """Write a value (tensors, arrays, numbers, strings, None and dicts / lists / tuples of them) atomically as
    safetensors plus JSON metadata: no pickle, so reading it back runs no code (`read_value`)."""
    tensors: dict[str, Tensor] = {}
    tree = encode_value(value, tensors)
    metadata = {**(metadata or {}), "format": value_format, "value": json.dumps(tree)}
    return atomic_write(Path(path), lambda temp: save_file(tensors, str(temp), metadata=metadata))


def read_value(path: str | Path, value_format: str = VALUE_FORMAT) -> tuple[Any, dict[str, str]]:
    """(value, metadata) of a file `write_value` wrote; StageFileError for anything else (corrupt or foreign)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        if metadata.get("format") != value_format:
            raise StageFileError(f"not a {value_format} file (format {metadata.get('format')!r})")
        return decode_value(json.loads(metadata["value"]), tensors), metadata
    except StageFileError:
        raise
    except Exception as error:  # safetensors, JSON and OS errors alike mean "unreadable": the caller recomputes
        raise StageFileError(f"unreadable file: {type(error).__name__}: {error}") from None


def write_stage(path: Path, key: dict, value: Any, seconds: float, cpu_seconds: float | None = None) -> None:
    """Write one stage file atomically (see the module docstring for its layout)."""
    metadata = {"key": json.dumps(key, sort_keys=True, default=str), "seconds": repr(float(seconds))}
    if cpu_seconds is not None:
        metadata["cpu_seconds"] = repr(float(cpu_seconds))
    write_value(path, value, metadata, STAGE_FORMAT)


def read_stage(path: str | Path, key: dict | None = None) -> tuple[Any, float]:
    """(value, seconds) of a stage file; with `key`, the file must have been stored under that key.

    Raises StageFileError for anything that is not exactly a stage file this module wrote."""
    value, metadata = read_value(path, STAGE_FORMAT)
    if key is not None and metadata.get("key") != json.dumps(key, sort_keys=True, default=str):
        raise StageFileError("stored under another key")
    try:
        return value, float(metadata["seconds"])
    except (KeyError, ValueError) as error:
        raise StageFileError(f"unreadable stage file: {type(error).__name__}: {error}") from None


STALE_SECONDS = 600.0  # a temporary file untouched this long was left by a killed write (writes take seconds)


def remove_if_stale(temporary: Path) -> None:
    """Remove a temporary file of a write unless it changed in the last STALE_SECONDS: processes sharing a folder
    (the heatmaps command's --levels runs, started at different times) must not delete each other's writes."""
    try:
        if time.time() - temporary.stat().st_mtime > STALE_SECONDS:
            temporary.unlink()
    except FileNotFoundError:  # its write finished (renamed) or another process removed it meanwhile
        pass


class StageCache:
    """Runs stages once per key; `computed` lists the stages computed (not loaded) by this object, in order.

    log: called with one line per stage computed (name, wall and CPU seconds), e.g. print; None: silent.
    collective: in a torch.distributed process group, every rank runs every stage and rank 0 alone keeps the files
    (`run`; the studies); otherwise each process reads and writes the files of the stages it runs (e.g. the
    heatmaps command, whose ranks take different levels)."""

    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None, collective: bool = False):
        self.root = Path(root) / "stages"
        self.collective = collective and in_process_group()
        if not self.collective or is_main_process():
            self.root.mkdir(parents=True, exist_ok=True)
            for temporary in self.root.glob(".*.tmp"):  # left by a killed write, or being written by another process
                remove_if_stale(temporary)
        self.log = log
        self.computed: list[str] = []
        # stage -> {"seconds": compute time, "cpu_seconds": its process CPU time (None if not recorded),
        #           "cached": loaded from disk}
        self.timings: dict[str, dict] = {}
        self.rejected: list[str] = []  # stage files found but not trusted (corrupt or planted); recomputed

    def path(self, name: str, key: dict) -> Path:
        return self.root / f"{name}-{key_hash(key)}{STAGE_SUFFIX}"

    def stored(self, name: str, key: dict) -> tuple[bool, Any]:
        """(True, value) when stage `name` was finished under `key` (by this or another process), else
        (False, None); a damaged or foreign file counts as not finished."""
        if "/" in name or name.startswith("."):
            raise DenoiserLabError(f"stage names must not contain '/' or start with '.', got {name!r}")
        path = self.path(name, key)
        if not path.is_file():
            return False, None
        try:
            value, metadata = read_value(path, STAGE_FORMAT)
            if metadata.get("key") != json.dumps(key, sort_keys=True, default=str):
                raise StageFileError("stored under another key")
            cpu = metadata.get("cpu_seconds")
            self.timings[name] = {"seconds": float(metadata["seconds"]),
                                  "cpu_seconds": None if cpu is None else float(cpu), "cached": True}
            return True, value
        except (StageFileError, KeyError, ValueError):
            self.rejected.append(path.name)  # recomputed by run(); the rewrite replaces the bad file
            return False, None

    def run(self, name: str, key: dict, compute: Callable[[], Any]) -> Any:
        """The output of stage `name` under `key`: loaded when finished before, else compute() and stored.

        Collective (see the class): every rank calls this with the same stage and compute() runs on every rank;
        rank 0 decides whether the stage is finished, alone reads and writes the file, and every rank returns rank
        0's value (`studies.common.ranks`)."""
        keeps_files = not self.collective or is_main_process()
        finished, value = self.stored(name, key) if keeps_files else (False, None)
        if self.collective and broadcast_flag(finished):
            return broadcast_value(value)
        if finished:
            return value
        path = self.path(name, key)
        started, cpu_started = time.perf_counter(), time.process_time()
        value = compute()
        if self.collective:
            value = broadcast_value(value)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        if keeps_files:
            write_stage(path, key, value, seconds, cpu_seconds)
        self.computed.append(name)
        self.timings[name] = {"seconds": seconds, "cpu_seconds": cpu_seconds, "cached": False}
        if self.log is not None:
            self.log(f"{name}: {seconds:.1f} s ({cpu_seconds:.1f} s CPU)")
        return value
