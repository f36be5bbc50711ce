"""Reading typed configs from YAML / JSON: every key and type checked, every mistake named.

:func:`from_mapping` builds a dataclass tree from parsed YAML/JSON and names the offending key, with its
full path, for any unknown key, missing value or wrong type. A dataclass may list keys it no longer has in
a ``REMOVED_KEYS`` class variable (key -> why, and what to do instead): an old config that still gives one
fails with that reason rather than a bare "unknown key".
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

__all__ = ["ConfigError", "config_to_dict", "from_mapping", "read_mapping"]


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file and the key path."""


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML (``.yaml``/``.yml``) or JSON file."""
    import yaml  # the 'train' extra: imported when a config is read, not when the CLI lists its options

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format {path.suffix!r}; use .yaml, .yml or .json")
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def from_mapping(cls: type[T], data: Any, *, where: str, base_dir: Path | None = None) -> T:
    """Build the dataclass ``cls`` from plain data (parsed YAML/JSON), checking every key and type.

    ``where`` prefixes error messages (a file name, then the key path is appended). Relative paths are
    resolved against ``base_dir`` when it is given.
    """
    return _convert(cls, data, where, "", base_dir)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _fail(where: str, path: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {path or '<top level>'}: {message}")


def _convert(tp: Any, value: Any, where: str, path: str, base_dir: Path | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise _fail(where, path, "must not be null")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, where, path, base_dir)
            except ConfigError as err:
                errors.append(str(err).rsplit(": ", 1)[-1])
        raise _fail(where, path, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, path, base_dir)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise _fail(where, path, f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _fail(where, path, f"expected a list, got {type(value).__name__} {value!r}")
        return [_convert(item_type, v, where, f"{path}[{i}]", base_dir) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads ``5e-6`` (no dot) as a string, so numeric strings are accepted for floats.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _fail(where, path, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _fail(where, path, f"expected a path string, got {value!r}")
        result = Path(value).expanduser()
        return base_dir / result if base_dir is not None and not result.is_absolute() else result
    raise TypeError(f"unsupported config field type {tp!r} at {path}")  # a programming error


def _convert_dataclass(cls: type, value: Any, where: str, path: str, base_dir: Path | None) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, path, f"expected a mapping, got {type(value).__name__} {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    removed: dict[str, str] = getattr(cls, "REMOVED_KEYS", {})
    stale = sorted(set(value) & set(removed))
    if stale:
        raise _fail(where, _join(path, stale[0]), removed[stale[0]])
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _fail(where, _join(path, str(unknown[0])), f"unknown key (known keys: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], where, _join(path, name), base_dir)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(where, _join(path, name), "required key is missing")
    return cls(**kwargs)


def config_to_dict(config: Any) -> Any:
    """A JSON-ready view of a (nested) config: paths as strings; the inverse of :func:`from_mapping`."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config
