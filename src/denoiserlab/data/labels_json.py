"""EDM-style `dataset.json` labels: {"labels": [[file name, integer label], ...]} or {"labels": null}."""

from __future__ import annotations

import json

import numpy as np

from denoiserlab.errors import DenoiserLabError


def parse_labels_json(text: bytes | str, where: str) -> dict[str, int] | None:
    """File name (relative, '/'-separated) -> label, or None when the file says "labels": null."""
    try:
        labels = json.loads(text)["labels"]
    except (ValueError, KeyError, TypeError) as error:
        raise DenoiserLabError(
            f'{where} is not a dataset.json of the form {{"labels": [[name, label], ...]}}: {error!r}'
        ) from None
    if labels is None:
        return None
    try:
        return {str(name): _integer_label(label) for name, label in labels}
    except (ValueError, TypeError):
        raise DenoiserLabError(f"{where}: 'labels' must be a list of [file name, integer label] pairs, labels in"
                               " [0, 2**31 - 1]") from None


def labels_for(names: list[str], label_of: dict[str, int] | None, where: str) -> np.ndarray | None:
    """int64 labels [N] of the image names, in order; every image needs one. None when label_of is None."""
    if label_of is None:
        return None
    missing = [name for name in names if name not in label_of]
    if missing:
        raise DenoiserLabError(f"{where} has no label for image {missing[0]!r} ({len(missing)} images lack labels)")
    return np.array([label_of[name] for name in names], dtype=np.int64)


def _integer_label(label) -> int:
    """A label that is an integer in [0, 2**31) (not a bool, float, list, negative or huge number)."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 2**31:
        raise TypeError(label)
    return label
