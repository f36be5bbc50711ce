"""Typed job configs and the command-line parsers derived from them.

Every job (generation, manifest runs, training, evaluation) is one dataclass. Its fields, their types,
defaults and ``help`` metadata are the single source of truth: :func:`add_arguments` turns them into
``argparse`` options and :func:`from_namespace` turns parsed options back into the dataclass, so the CLI
can never drift from the Python API.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    positional: bool = False,
    repeat: bool = False,
    metavar: str | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field carrying its CLI help text; optionally an explicit flag name, or positional.

    A ``list`` field with ``repeat`` takes one value per occurrence of its flag (``--lora a --lora b``)
    instead of several values after one flag.
    """
    metadata: dict[str, Any] = {"help": help, "positional": positional, "repeat": repeat}
    if metavar is not None:
        metadata["metavar"] = metavar
    if flag is not None:
        metadata["flag"] = flag
    if "default_factory" in kwargs:
        return dataclasses.field(metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Add one option per field of ``config_cls`` to ``parser``.

    Supported field types: ``str``, ``int``, ``float``, ``bool`` (``--x/--no-x``), ``Path``,
    ``Literal[...]`` (choices), ``list[X]`` (``nargs='+'``) and ``X | None`` of those.
    A field without a default becomes a required option.
    """
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, optional = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if has_default:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs["default"] = default
            if default not in (None, []) and tp is not bool:
                kwargs["help"] += f" (default: {default})"
        else:
            kwargs["required"] = True

        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            choices = typing.get_args(tp)
            kwargs["choices"] = choices
            kwargs["type"] = type(choices[0])
        elif origin is list:
            (item,) = typing.get_args(tp)
            kwargs["type"] = item
            if f.metadata.get("repeat"):
                # argparse appends to the default list itself: start from None, see from_namespace.
                kwargs["action"], kwargs["default"] = "append", None
            else:
                kwargs["nargs"] = "+"
        elif tp in (str, int, float, Path):
            kwargs["type"] = tp
        else:  # pragma: no cover - a programming error in a config class
            raise TypeError(f"{config_cls.__name__}.{f.name}: unsupported CLI type {tp!r}")
        if optional and tp is not bool:
            kwargs.setdefault("default", None)
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        if f.metadata.get("positional"):
            kwargs.pop("required", None)
            parser.add_argument(kwargs.pop("dest"), **kwargs)
        else:
            parser.add_argument(_flag_name(f), **kwargs)


def from_namespace(config_cls: type[T], namespace: argparse.Namespace) -> T:
    """Build ``config_cls`` from the options that :func:`add_arguments` added."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(config_cls)}
    for f in dataclasses.fields(config_cls):  # a repeatable option given no time: its default
        if f.metadata.get("repeat") and values[f.name] is None:
            values[f.name] = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
    return config_cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths as strings), for run records."""

    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return {f.name: convert(getattr(config, f.name)) for f in dataclasses.fields(config)}


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)
