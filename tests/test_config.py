"""The generic TOML/dict -> frozen dataclass loader: conversions, defaults, and errors naming file, key and values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from denoiserlab.config import from_dict, load_toml, to_dict
from denoiserlab.errors import DenoiserLabError


@dataclass(frozen=True)
class Inner:
    size: int = 3
    scale: float = 1.0
    mode: Literal["fast", "exact"] = "exact"

    def __post_init__(self):
        if self.size < 1:
            raise DenoiserLabError(f"size must be >= 1, got {self.size}")


@dataclass(frozen=True)
class Item:
    name: str
    weight: float = 0.5


@dataclass(frozen=True)
class Outer:
    label: str
    inner: Inner = field(default_factory=Inner)
    items: tuple[Item, ...] = ()
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, int] = (0, 0)
    limit: int | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    enabled: bool = False


def test_defaults_nesting_and_conversions():
    config = from_dict(Outer, {"label": "a", "inner": {"scale": 2, "mode": "fast"}, "items": [{"name": "x"}],
                               "sizes": [4, 5, 6], "pair": [1, 2], "flags": {"b": True}, "options": {"k": [1, "s"]}})
    assert config.inner == Inner(size=3, scale=2.0, mode="fast")
    assert isinstance(config.inner.scale, float)
    assert config.items == (Item("x", 0.5),)
    assert config.sizes == (4, 5, 6) and config.pair == (1, 2)
    assert config.limit is None and config.enabled is False
    assert config.flags == {"b": True} and config.options == {"k": [1, "s"]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.label = "b"


def test_to_dict_round_trip():
    config = from_dict(Outer, {"label": "a", "items": [{"name": "x", "weight": 2.0}], "limit": 3})
    table = to_dict(config)
    assert table["sizes"] == [1, 2] and "limit" in table
    assert "limit" not in to_dict(from_dict(Outer, {"label": "a"}))  # None dropped (TOML has no null)
    assert from_dict(Outer, table) == config


@pytest.mark.parametrize("table, key, allowed", [
    ({"label": "a", "colour": 1}, "colour", "allowed keys"),
    ({"label": "a", "inner": {"sise": 1}}, "inner.sise", "allowed keys: ['mode', 'scale', 'size']"),
    ({"label": 3}, "label", "a string"),
    ({"label": "a", "enabled": 1}, "enabled", "a boolean"),
    ({"label": "a", "inner": {"size": True}}, "inner.size", "an integer"),
    ({"label": "a", "inner": {"size": 2.5}}, "inner.size", "an integer"),
    ({"label": "a", "inner": {"mode": "slow"}}, "inner.mode", "one of ['fast', 'exact']"),
    ({"label": "a", "sizes": [1, "2"]}, "sizes[1]", "an integer"),
    ({"label": "a", "sizes": 3}, "sizes", "an array"),
    ({"label": "a", "pair": [1, 2, 3]}, "pair", "an array of 2 items"),
    ({"label": "a", "items": [{"weight": 1.0}]}, "items[0].name", "missing required key"),
    ({"label": "a", "limit": "x"}, "limit", "an integer or none"),
    ({"label": "a", "flags": {"b": "yes"}}, "flags.b", "a boolean"),
    ({"label": "a", "inner": 3}, "inner", "table"),
])
def test_errors_name_source_key_and_allowed_values(table, key, allowed):
    with pytest.raises(DenoiserLabError) as error:
        from_dict(Outer, table, source="study.toml")
    message = str(error.value)
    assert message.startswith("study.toml: ") and key in message and allowed in message


def test_missing_required_key_and_post_init_errors_name_the_source():
    with pytest.raises(DenoiserLabError, match="cfg.toml: missing required key 'label'"):
        from_dict(Outer, {}, source="cfg.toml")
    with pytest.raises(DenoiserLabError, match="cfg.toml: inner: size must be >= 1, got 0"):
        from_dict(Outer, {"label": "a", "inner": {"size": 0}}, source="cfg.toml")


def test_load_toml_reads_files_and_names_them_in_errors(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('label = "run"\nsizes = [3]\n[inner]\nsize = 5\n[[items]]\nname = "a"\n')
    assert load_toml(Outer, path) == Outer(label="run", sizes=(3,), inner=Inner(size=5), items=(Item("a"),))
    path.write_text('label = "run"\nunknown = 1\n')
    with pytest.raises(DenoiserLabError, match=f"{path}: unknown key 'unknown'"):
        load_toml(Outer, path)
    path.write_text('label = \n')
    with pytest.raises(DenoiserLabError, match=f"cannot parse config file '{path}'"):
        load_toml(Outer, path)
    with pytest.raises(DenoiserLabError, match="does not exist"):
        load_toml(Outer, tmp_path / "missing.toml")
