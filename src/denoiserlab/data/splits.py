"""Dataset splits, and the rule for sources that hold one set of images only."""

from __future__ import annotations

from denoiserlab.errors import DenoiserLabError

SPLITS = ("train", "test")


def check_split(split: str) -> None:
    """Raise unless split is one of SPLITS."""
    if split not in SPLITS:
        raise DenoiserLabError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def require_train_split(split: str, where: str) -> None:
    """A source with no split structure is the train split; asking it for another split is an error."""
    if split != "train":
        raise DenoiserLabError(
            f"{where} has no {split!r} split: it holds one set of images, loaded as split 'train' "
            "(give train/ and test/ subfolders, split keys, or the other file instead)"
        )
