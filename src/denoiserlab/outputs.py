"""Where commands write: checks made before any work starts, so that a bad output path fails at once, nothing is
written for bad input, and no file of the user's is ever replaced.

- `check_output_folder` / `check_output_file`: the path can be created and written (not a file where a folder is
  needed, not a folder where a file is, the nearest existing folder writable); nothing is created by the check.
- `check_replaceable_folder`: a folder a command writes as one unit (a temporary folder renamed into place) must be
  new, empty, or hold only that command's own outputs, since the rename replaces all of it.
- `check_run_folder`: a folder a run resumes from must be new, empty, or marked as such a run's folder.
- `write_resolved_config`: a study's resolved config.toml replaces only a file denoiserlab wrote.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import tomli_w

from denoiserlab.atomic import atomic_write_text
from denoiserlab.errors import DenoiserLabError

RESOLVED_CONFIG_HEADER = "# Resolved config written by denoiserlab; a rerun into this folder may replace it.\n"


def _nearest_existing(path: Path) -> Path:
    """path itself when it exists, else its closest existing parent."""
    for candidate in (path, *path.absolute().parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def _check_writable_folder(folder: Path, flag: str, target: Path) -> None:
    """The nearest existing folder above (or at) target must be a folder we may create entries in."""
    if not folder.is_dir():
        raise DenoiserLabError(f"{flag} {target}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DenoiserLabError(f"{flag} {target}: cannot write in {folder} (permission denied)")


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` can be used as an output folder: not a file, and it or its nearest existing parent is writable."""
    path = Path(path)
    if str(path) == "":
        raise DenoiserLabError(f"{flag} must name a folder, got an empty path")
    if os.path.lexists(path) and not path.is_dir():
        raise DenoiserLabError(f"{flag} {path} is a file, not a folder")
    _check_writable_folder(_nearest_existing(path), flag, path)
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """`path` can be written as a file: not a folder, and its folder (or nearest existing parent) is writable."""
    path = Path(path)
    if str(path) == "" or path.name == "":
        raise DenoiserLabError(f"{flag} must name a file, got {str(path)!r}")
    if path.is_dir():
        raise DenoiserLabError(f"{flag} {path} is a folder, not a file")
    if os.path.lexists(path) and not path.is_file():
        raise DenoiserLabError(f"{flag} {path} exists and is not a regular file")
    _check_writable_folder(_nearest_existing(path.parent), flag, path)
    return path


def _entries(folder: Path) -> list[str]:
    """Names in folder, without the temporary files an interrupted atomic write may have left ('.*.tmp', '.*.old')."""
    return sorted(name for name in os.listdir(folder)
                  if not (name.startswith(".") and name.endswith((".tmp", ".old"))))


def check_replaceable_folder(path: str | Path, outputs: tuple[str, ...], flag: str = "--out") -> Path:
    """A folder written as one unit replaces what is there: it must be new, empty, or hold only `outputs` (the
    names this command writes), and must not be the current folder or one above it."""
    path = check_output_folder(path, flag)
    if not path.exists():
        return path
    if path.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents) and _entries(path):
        raise DenoiserLabError(f"{flag} {path} is the current folder or holds it; give a new folder for the outputs")
    others = [name for name in _entries(path) if name not in outputs]
    if others:
        raise DenoiserLabError(f"{flag} {path} already holds files this command did not write ({', '.join(others[:3])}"
                               f"{', ...' if len(others) > 3 else ''}); give a new or empty folder, so they are kept")
    return path


def check_run_folder(path: str | Path, marker: str, flag: str = "--out") -> Path:
    """A folder a run writes into and resumes from must be new, empty, or hold `marker` (the file such a run
    writes first), so that a run never overwrites files of another kind that happen to share names."""
    path = check_output_folder(path, flag)
    if path.exists() and _entries(path) and not (path / marker).is_file():
        raise DenoiserLabError(f"{flag} {path} is not empty and holds no {marker}, so it is not a run folder of this"
                               " command; give a new or empty folder, so the files there are kept")
    return path


def _machine_written(text: str) -> bool:
    """Whether a TOML text is one denoiserlab wrote: it starts with the header, or it is exactly what tomli_w
    writes for its own content (a resolved config from before the header existed; hand-written files differ)."""
    if text.startswith(RESOLVED_CONFIG_HEADER):
        return True
    try:
        return tomli_w.dumps(tomllib.loads(text)) == text
    except (tomllib.TOMLDecodeError, TypeError, ValueError):
        return False


def check_replaceable_config(path: str | Path) -> None:
    """Raise unless `path` is absent or a config that denoiserlab wrote, which a run may replace."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    try:
        machine_written = path.is_file() and _machine_written(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        machine_written = False
    if not machine_written:
        raise DenoiserLabError(f"{path} is not a config that denoiserlab wrote (it may be your own), and the run would"
                               " replace it with its resolved config; give another --out folder")


def check_resolved_config(path: str | Path, table: dict) -> bool:
    """Whether `path` must be (re)written with the resolved config `table`; raises when it holds a file that
    denoiserlab did not write (e.g. the user's own config, given with --out its own folder)."""
    path = Path(path)
    if not os.path.lexists(path):
        return True
    try:
        if path.is_file() and tomllib.loads(path.read_text(encoding="utf-8")) == table:
            return False  # same settings: leave the file as it is
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    check_replaceable_config(path)
    return True


def write_resolved_config(path: str | Path, table: dict) -> Path:
    """Write the resolved config `table` as TOML at `path` (atomically), unless it holds the same settings already;
    refuses to replace a file denoiserlab did not write (see check_resolved_config)."""
    if check_resolved_config(path, table):
        atomic_write_text(path, RESOLVED_CONFIG_HEADER + tomli_w.dumps(table))
    return Path(path)
