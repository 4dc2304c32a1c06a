"""TOML / dict -> frozen config dataclass, checked at load time (STYLE section 8).

`from_dict(ConfigClass, table, source)` builds a (possibly nested) frozen dataclass from a plain table. Missing
keys take the dataclass defaults (defaults live only there); unknown keys and values of the wrong type fail with
one DenoiserLabError naming the source (file), the dotted key and the allowed keys or values. Supported field types:
bool, int, float (an int is accepted), str, None, `X | None`, `Literal[...]`, `tuple[T, ...]`, `tuple[A, B]`,
`list[T]`, `dict[str, T]`, `dict` (any TOML table) and nested dataclasses. TOML arrays become tuples for tuple
fields. Range checks stay in each dataclass's `__post_init__`; a DenoiserLabError it raises is re-raised with the
source and key prepended.

`load_toml(ConfigClass, path)` reads a TOML file; `to_dict(config)` gives back a plain table (tuples as lists,
None values dropped, as TOML has no null) that `from_dict` accepts again.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from denoiserlab.errors import DenoiserLabError

ConfigT = TypeVar("ConfigT")


def load_toml(config_class: type[ConfigT], path: str | Path) -> ConfigT:
    """Read the TOML file at `path` into `config_class` (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise DenoiserLabError(f"config file {str(path)!r} does not exist")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DenoiserLabError(f"cannot parse config file {str(path)!r}: {error}") from None
    return from_dict(config_class, table, source=str(path))


def from_dict(config_class: type[ConfigT], table: dict, source: str = "<dict>", prefix: str = "") -> ConfigT:
    """Build the dataclass `config_class` from `table`; `source` and `prefix` only label error messages."""
    if not isinstance(table, dict):
        raise DenoiserLabError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a table, got {table!r}")
    fields = {field.name: field for field in dataclasses.fields(config_class) if field.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise DenoiserLabError(f"{source}: unknown key '{prefix}{unknown[0]}'; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(config_class)
    missing = [name for name, field in fields.items() if name not in table and not has_default(field)]
    if missing:
        raise DenoiserLabError(f"{source}: missing required key '{prefix}{missing[0]}'")
    values = {name: convert(value, hints[name], source, f"{prefix}{name}") for name, value in table.items()}
    try:
        return config_class(**values)
    except DenoiserLabError as error:
        where = prefix.rstrip(".")
        raise DenoiserLabError(f"{source}: {where + ': ' if where else ''}{error}") from None


def has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def convert(value: Any, annotation: Any, source: str, key: str) -> Any:
    """Check `value` against the type `annotation` and convert it (lists to tuples, tables to dataclasses)."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, source, f"{key}.")
    if origin in (Union, types.UnionType):
        return convert_union(value, arguments, source, key)
    if origin is Literal:
        if value not in arguments or isinstance(value, bool) != any(isinstance(a, bool) for a in arguments):
            raise wrong(source, key, value, f"one of {list(arguments)}")
        return value
    if origin in (tuple, list) or annotation in (tuple, list):
        return convert_sequence(value, origin or annotation, arguments, source, key)
    if origin is dict or annotation is dict:
        return convert_table(value, arguments, source, key)
    return convert_scalar(value, annotation, source, key)


def convert_union(value: Any, options: tuple, source: str, key: str) -> Any:
    """`A | B | None`: the first option that accepts the value."""
    if value is None and type(None) in options:
        return None
    for option in (option for option in options if option is not type(None)):
        try:
            return convert(value, option, source, key)
        except DenoiserLabError:
            continue
    raise wrong(source, key, value, " or ".join(type_name(option) for option in options))


def convert_sequence(value: Any, kind: type, arguments: tuple, source: str, key: str) -> tuple | list:
    """tuple[T, ...], tuple[A, B], list[T] (TOML arrays)."""
    if not isinstance(value, (list, tuple)):
        raise wrong(source, key, value, f"an array ({type_name(kind)})")
    if kind is tuple and arguments and arguments[-1] is not Ellipsis:
        if len(value) != len(arguments):
            raise wrong(source, key, value, f"an array of {len(arguments)} items")
        return tuple(convert(item, item_type, source, f"{key}[{i}]")
                     for i, (item, item_type) in enumerate(zip(value, arguments)))
    item_type = arguments[0] if arguments else Any
    items = [convert(item, item_type, source, f"{key}[{i}]") for i, item in enumerate(value)]
    return tuple(items) if kind is tuple else items


def convert_table(value: Any, arguments: tuple, source: str, key: str) -> dict:
    """dict[str, T] or dict (a TOML table)."""
    if not isinstance(value, dict):
        raise wrong(source, key, value, "a table")
    value_type = arguments[1] if arguments else Any
    return {name: convert(item, value_type, source, f"{key}.{name}") for name, item in value.items()}


def convert_scalar(value: Any, annotation: Any, source: str, key: str) -> Any:
    """bool, int, float (ints accepted and converted), str, None, Any."""
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is type(None) and value is None:
        return None
    if not isinstance(annotation, type) or not isinstance(value, annotation) or (
            annotation is int and isinstance(value, bool)):
        raise wrong(source, key, value, type_name(annotation))
    return value


def wrong(source: str, key: str, value: Any, allowed: str) -> DenoiserLabError:
    return DenoiserLabError(f"{source}: key {key!r} must be {allowed}, got {value!r}")


def type_name(annotation: Any) -> str:
    """Readable name of a type annotation for error messages."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "none",
             dict: "a table", list: "an array", tuple: "an array"}
    if annotation in names:
        return names[annotation]
    if dataclasses.is_dataclass(annotation):
        return f"a table ({annotation.__name__})"
    if typing.get_origin(annotation) is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    return str(annotation).replace("typing.", "")


def to_dict(config: Any) -> dict:
    """A frozen config dataclass as a plain table: nested dataclasses as tables, tuples as lists, None dropped."""
    return plain(dataclasses.asdict(config))


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
