"""Crash-safe file writes: write beside the target, flush to disk, then os.replace (atomic on POSIX).

The one place in the package that writes files atomically: a reader, or a run killed at any moment (Ctrl-C and
kill -9 included), sees the old file or the complete new one, never a part. Temporary names start with '.' and end
in '.tmp' (folders moved aside end in '.old'), so a later run can tell and remove what a kill left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def _default_mode(folder: bool) -> int:
    """Permissions a plain open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a new empty temporary file beside `path`; when the block ends normally it is flushed to disk and
    renamed to `path`, otherwise removed. For writers that need the file name first (memory-mapped arrays,
    compilers); others use atomic_write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        with open(temp_path, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(temp_path, _default_mode(folder=False))
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp_path) on a temporary file in path's folder, then rename it to `path`.

    A reader (or a process killed mid-write) sees either the old file or the complete new one, never a part.
    """
    with replacing(path) as temp_path:
        write(temp_path)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write raw bytes."""
    return atomic_write(path, lambda temp: temp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def atomic_folder(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call fill(temp_folder) on a new temporary folder, then rename it to `path` (replacing an older one).

    The folder appears complete or not at all; an existing folder is moved aside first and removed after.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(temp_folder)
        for item in temp_folder.rglob("*"):
            os.chmod(item, _default_mode(folder=item.is_dir()))
        os.chmod(temp_folder, _default_mode(folder=True))
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(temp_folder, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if temp_folder.exists():
            shutil.rmtree(temp_folder)
    return path


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
