"""Checking a weights folder against a model before loading it.

diffusers warns about missing keys and initialises them randomly, and stops at the first wrongly shaped
tensor. For a 14B checkpoint spread over shards, a user needs the whole list at once, by name, before
minutes of loading: this module reads only the safetensors headers to get it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


class CheckpointError(ValueError):
    """A weights folder that does not match the model; the message names the files or keys.

    ``report`` holds the complete lists when the message shows only the first keys of each kind.
    """

    def __init__(self, message: str, report: CheckpointReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class CheckpointReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs model shape"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        parts = []
        for kind in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, kind)
            if keys:
                shown = ", ".join(keys[:limit]) + (
                    f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
                )
                parts.append(f"{kind} ({len(keys)}): {shown}")
        return "; ".join(parts)


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes of a diffusers safetensors folder, read from the headers only.

    Returns ``None`` when the folder holds no safetensors weights (e.g. a ``.bin`` checkpoint), in which
    case diffusers' own loading is left to report problems.
    """
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(
                f"{index} is not a valid safetensors index (need a 'weight_map'): {err}"
            ) from err
        files = sorted(set(weight_map.values()))
        absent = [name for name in files if not (folder / name).is_file()]
        if absent:
            raise CheckpointError(
                f"{folder}: shard files listed in {INDEX_NAME} are missing: {', '.join(absent)}"
            )
    elif (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        return None

    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        try:
            with safe_open(folder / name, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{folder / name} is not a readable safetensors file: {err}") from err
    return shapes


def compare_to_model(
    found: dict[str, tuple[int, ...]], model: torch.nn.Module, ignore_unexpected: list[str] | None = None
) -> CheckpointReport:
    """Compare checkpoint shapes with a model's state dict (which may live on the meta device)."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    patterns = [re.compile(p) for p in (ignore_unexpected or [])]
    report = CheckpointReport()
    report.missing = sorted(set(expected) - set(found))
    report.unexpected = sorted(
        k for k in set(found) - set(expected) if not any(p.search(k) for p in patterns)
    )
    report.mismatched = sorted(
        f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}"
        for k in set(found) & set(expected)
        if found[k] != expected[k]
    )
    return report
