"""The per-user cache folder: the one place that decides where denoiserlab keeps files it can always rebuild.

Gaussian eigendecompositions (`denoisers.gaussian`) and compiled PSPC kernels (`denoisers.pspc_kernel`) live in
sub-folders of it. Everything read back from it is treated as untrusted: a file that does not parse, or does not
match what was asked for, is rebuilt; nothing in it is ever executed except the kernel library we compiled there.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    """$DENOISERLAB_CACHE, else $XDG_CACHE_HOME/denoiserlab, else ~/.cache/denoiserlab; joined with `parts`.

    Only the path: nothing is created here (callers create it when they write, and cope when they cannot).
    """
    base = os.environ.get("DENOISERLAB_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "denoiserlab")
    return Path(base).joinpath(*parts)
