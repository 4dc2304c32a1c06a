"""Validation helpers shared by the network config dataclasses (STYLE section 8: fail naming the field and value)."""

from __future__ import annotations

from denoiserlab.errors import DenoiserLabError


def require(condition: bool, config_name: str, field_name: str, value, allowed: str) -> None:
    """Raise a DenoiserLabError naming config, field, value seen and what is allowed, unless condition holds."""
    if not condition:
        raise DenoiserLabError(f"{config_name}.{field_name} = {value!r} is invalid; expected {allowed}")


def as_int_tuple(config, field_name: str) -> None:
    """Turn a list field (from JSON or TOML) into a tuple of ints in place on a frozen dataclass."""
    value = getattr(config, field_name)
    require(isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
            type(config).__name__, field_name, value, "a list of integers")
    object.__setattr__(config, field_name, tuple(value))


def check_positive_int(config, field_name: str) -> None:
    """Check that an int field is >= 1."""
    value = getattr(config, field_name)
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, type(config).__name__,
            field_name, value, "an integer >= 1")


def check_dropout(config, field_name: str = "dropout") -> None:
    """Check that a dropout probability lies in [0, 1)."""
    value = getattr(config, field_name)
    require(isinstance(value, (int, float)) and 0 <= value < 1, type(config).__name__, field_name, value,
            "a probability in [0, 1)")


def check_image_geometry(config_name: str, img_channels: int, img_resolution: int) -> None:
    """Check the image channels (>= 1) and square resolution (>= 2) a network is built for."""
    require(isinstance(img_channels, int) and img_channels >= 1, config_name, "img_channels", img_channels,
            "an integer >= 1")
    require(isinstance(img_resolution, int) and img_resolution >= 2, config_name, "img_resolution",
            img_resolution, "an integer >= 2")
