"""A page run's settings as ``bindweave generate`` sees them: the config, its command line and JSON."""

from __future__ import annotations

import dataclasses
import json
import shlex
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import to_json
from ...generate import GenerateConfig, ModelConfig, SamplingConfig
from .inputs import JobRequest, sampling_config
from .loader import model_config_of, with_memory


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def job_config(
    request: JobRequest, model: ModelConfig, refs: Sequence[Path], out: Path, seed: int
) -> GenerateConfig:
    """The ``bindweave generate`` config of a page run: the single source of its command line and JSON."""
    model = with_memory(model_config_of(model), request.memory)
    sampling = sampling_config(request, seed)
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)}
    values |= {f.name: getattr(sampling, f.name) for f in dataclasses.fields(SamplingConfig)}
    return GenerateConfig(**values, refs=[Path(r) for r in refs], prompt=request.prompt, out=out)


# Written even when they equal the CLI default: the size defaults depend on the model, and a reader wants
# to see the seed and steps of a run without knowing the defaults.
_ALWAYS_WRITTEN = ("refs", "prompt", "out", "height", "width", "num_frames", "steps", "guidance", "seed")


def _flag(f: dataclasses.Field) -> str:
    """The option name :func:`bindweave.config.add_arguments` gives a field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


_LEADING = ("refs", "prompt", "out")  # what a reader looks for first


def config_argv(config: Any) -> list[str]:
    """Options that make the CLI parser rebuild ``config`` (fields equal to their default are left out)."""
    argv: list[str] = []
    for f in sorted(dataclasses.fields(config), key=lambda f: f.name not in _LEADING):
        value = getattr(config, f.name)
        if value is None or (f.name not in _ALWAYS_WRITTEN and value == _default(f)):
            continue
        if isinstance(value, bool):
            argv.append(_flag(f) if value else "--no-" + _flag(f)[2:])
        elif isinstance(value, (list, tuple)):
            argv += [_flag(f), *(str(v) for v in value)]
        else:
            argv += [_flag(f), str(value)]
    return argv


def command_line(config: GenerateConfig) -> str:
    """A shell-quoted ``bindweave generate`` command that repeats the run."""
    return shlex.join(["bindweave", "generate", *config_argv(config)])


def config_json(config: GenerateConfig) -> str:
    return to_json(config)


def config_from_json(text: str) -> GenerateConfig:
    """Rebuild a :class:`GenerateConfig` from :func:`config_json` (paths come back as ``Path``)."""
    data = json.loads(text)
    hints = typing.get_type_hints(GenerateConfig)
    values = {}
    for f in dataclasses.fields(GenerateConfig):
        if f.name not in data:
            continue
        value, tp = data[f.name], _unwrap_optional(hints[f.name])
        if value is not None and tp is Path:
            value = Path(value)
        elif value is not None and typing.get_origin(tp) is list and typing.get_args(tp) == (Path,):
            value = [Path(v) for v in value]
        values[f.name] = value
    return GenerateConfig(**values)
