"""Files shipped inside the package (src/denoiserlab/assets/): checkpoints and heatmaps, named `shipped:NAME`."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from denoiserlab.errors import DenoiserLabError

SHIPPED_PREFIX = "shipped:"


def assets_folder(folder: str) -> Path:
    """src/denoiserlab/assets/<folder>, where the files named `shipped:NAME` live (it may not exist)."""
    return Path(str(importlib.resources.files("denoiserlab") / "assets" / folder))


def shipped_path(name: str, folder: str = "checkpoints") -> Path:
    """A file or folder shipped with the package: src/denoiserlab/assets/<folder>/NAME."""
    path = assets_folder(folder) / name
    if not path.exists():
        available = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
        raise DenoiserLabError(f"nothing shipped as {SHIPPED_PREFIX}{name} (looked for {path}); "
                               f"shipped {folder}: {', '.join(available) or 'none'}")
    return path


def resolve(spec: str | Path, folder: str = "checkpoints") -> Path:
    """`shipped:NAME` -> the shipped file or folder; any other string -> that path."""
    text = str(spec)
    if text.startswith(SHIPPED_PREFIX):
        return shipped_path(text[len(SHIPPED_PREFIX):], folder)
    return Path(spec)
