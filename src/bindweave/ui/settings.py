"""A page run's settings: checked into a :class:`JobRequest`, turned into the ``bindweave generate`` config
that is its single source, and shown as a command line and as JSON so the run can be repeated outside
the app.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import to_json
from ..generate_config import GenerateConfig, ModelConfig, SamplingConfig
from ..samplers import SAMPLERS
from .inputs import (
    Size,
    UIError,
    check_prompt,
    check_reference_paths,
    check_size,
    load_reference_images,
    whole_number,
)
from .loader import memory_modes, model_config_of, with_memory

MAX_SEED = 2**63 - 1


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@dataclass(frozen=True)
class JobRequest:
    """Everything the page collects for one run, already checked by :func:`parse_request`."""

    refs: tuple[Path, ...]
    prompt: str
    negative_prompt: str
    size: Size
    steps: int
    guidance: float
    seed: int | None  # None draws a random seed, reported with the result
    memory: str
    sampler: str = "unipc"


def parse_request(
    refs: Sequence[str | Path] | None,
    prompt: str | None,
    negative_prompt: str | None,
    height: float | None,
    width: float | None,
    num_frames: float | None,
    steps: float | None,
    guidance: float | None,
    random_seed: bool,
    seed: float | None,
    memory: str | None,
    sampler: str | None = None,
) -> JobRequest:
    """Check every input of the page before any model work, so a mistake costs nothing."""
    load_reference_images(refs)
    prompt = check_prompt(prompt)
    size = check_size(height, width, num_frames)
    steps_ = whole_number(steps, "Steps")
    if steps_ < 1:
        raise UIError(f"Steps must be at least 1 (got {steps_}).")
    if guidance is None or not np.isfinite(guidance) or guidance < 1:
        raise UIError(f"Guidance must be at least 1 (1 turns the negative prompt off); got {guidance}.")
    fixed_seed = None
    if not random_seed:
        fixed_seed = whole_number(seed, "Seed")
        if not 0 <= fixed_seed <= MAX_SEED:
            raise UIError(f"Seed must be between 0 and {MAX_SEED} (got {fixed_seed}).")
    mode = memory or ModelConfig().memory
    if mode not in memory_modes():
        raise UIError(f"Unknown memory mode {mode!r}; choose one of {', '.join(memory_modes())}.")
    sampler = sampler or SamplingConfig().sampler
    if sampler not in SAMPLERS:
        raise UIError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    request = JobRequest(
        refs=tuple(check_reference_paths(refs)),
        prompt=prompt,
        negative_prompt=negative_prompt or "",
        size=size,
        steps=steps_,
        guidance=float(guidance),
        seed=fixed_seed,
        memory=mode,
        sampler=sampler,
    )
    # The CLI's own rules as the last word, so the page never accepts what `bindweave generate` refuses.
    _sampling_config(request, seed=0).validate()
    return request


def _sampling_config(request: JobRequest, seed: int) -> SamplingConfig:
    return SamplingConfig(
        height=request.size.height,
        width=request.size.width,
        num_frames=request.size.num_frames,
        steps=request.steps,
        guidance=request.guidance,
        seed=seed,
        negative_prompt=request.negative_prompt,
        sampler=request.sampler,
    )


def job_config(
    request: JobRequest, model: ModelConfig, refs: Sequence[Path], out: Path, seed: int
) -> GenerateConfig:
    """The ``bindweave generate`` config of a page run: the single source of its command line and JSON."""
    model = with_memory(model_config_of(model), request.memory)
    sampling = _sampling_config(request, seed)
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
        elif isinstance(value, (list, tuple)) and f.metadata.get("repeat"):  # --lora a --lora b
            for item in value:
                argv += [_flag(f), str(item)]
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
