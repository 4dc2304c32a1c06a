"""Atomic file writes: write to a temporary file beside the target, then os.replace (kill -9 safe)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp_path) and move the result onto `path` in one step; a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp_name))
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return path


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented JSON, atomically."""
    return write_atomic(path, lambda temp: temp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))
