"""Stage cache of a study: each stage's output stored atomically under DIR/stages/, keyed by what it depends on.

A stage is a name plus a key (a JSON-able table of the resolved config parts and input fingerprints it depends on).
Its output lives in `DIR/stages/<name>-<hash of key>.pt` (torch.save of {"key", "value", "seconds"}), written
with `denoiserlab.atomic.atomic_write`, so a killed run (kill -9 included) leaves either the finished file or none;
stale temporary files of killed writes are removed when the cache opens. A rerun loads finished stages instead of
computing them; a changed key gives a new file name, so a stage is never read under the wrong settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from denoiserlab.atomic import atomic_write
from denoiserlab.errors import DenoiserLabError


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


class StageCache:
    """Runs stages once per key; `computed` lists the stages computed (not loaded) by this object, in order."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "stages"
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.tmp"):  # left by a write that was killed
            stale.unlink()
        self.computed: list[str] = []
        self.timings: dict[str, dict] = {}  # stage -> {"seconds": compute time, "cached": loaded from disk}

    def path(self, name: str, key: dict) -> Path:
        return self.root / f"{name}-{key_hash(key)}.pt"

    def run(self, name: str, key: dict, compute: Callable[[], Any]) -> Any:
        """The output of stage `name` under `key`: loaded when finished before, else compute() and stored."""
        if "/" in name or name.startswith("."):
            raise DenoiserLabError(f"stage names must not contain '/' or start with '.', got {name!r}")
        path = self.path(name, key)
        if path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=False)
            self.timings[name] = {"seconds": stored["seconds"], "cached": True}
            return stored["value"]
        started = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - started
        record = {"key": key, "value": value, "seconds": seconds}
        atomic_write(path, lambda temp: torch.save(record, temp))
        self.computed.append(name)
        self.timings[name] = {"seconds": seconds, "cached": False}
        return value
