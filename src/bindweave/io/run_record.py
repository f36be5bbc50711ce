"""The run record beside a manifest's videos, and the check that a rerun makes videos of the same kind.

``run-manifest`` (and ``eval generate``) skip every ``<id>.mp4`` that exists: that is what makes them
resumable, and it is also why a rerun with another ``--steps``, seed, size or model used to keep every old
video without a word. Each run therefore stores the settings its videos depend on in its run record
(``run_record.json``; ``run_record.rank<N>.json`` per torchrun rank), and a rerun into a folder that has
videos refuses settings that differ from a record's (:func:`check_rerun`).

Which settings count: everything that changes the video beyond floating-point noise. The weights
(``model``, ``wan``, ``transformer``, ``mllm``) and the LoRAs fused into them with their scales (``loras``,
in order), the dtype (resolved: ``auto`` means bfloat16 on CUDA, float32 on CPU), the sampling settings
(sampler, size, frames, steps, guidance, seed, negative prompt), whether a LoRA's unknown keys were
skipped (``lora_skip_unknown_keys``; the record names the keys), ``fps``
(it is written into the file and sets the playback speed that motion is judged at), ``precision``
(float32 or the release's bf16 sampling) and the lossy speed options (fp8 weights, step caches and
their parameters, VAE tiling, 8-bit ``sage`` attention). Not counted: the device itself, memory
offloading, batched CFG, the context K/V cache, ``torch.compile``, context parallelism and the exact
attention backends (they change at most the last bits), and the manifest and image paths (entries are
matched by id). Values are compared as given, not as the model resolves them: leaving ``--guidance``
unset and passing the model's default 5.0 count as different.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..lora.config import LoraSpec

logger = logging.getLogger(__name__)

__all__ = [
    "RunSettingsError",
    "check_rerun",
    "read_run_records",
    "record_path",
    "recorded_settings",
    "setting_differences",
    "video_settings",
]

_PATH_SETTINGS = ("model", "wan", "transformer", "mllm", "mag_ratios")
_VALUE_SETTINGS = (
    "sampler",
    "height",
    "width",
    "num_frames",
    "steps",
    "guidance",
    "seed",
    "negative_prompt",
    "fps",
    "fp8_weights",
    "vae_tiling",
    "cache",
    "cache_threshold",
    "cache_interval",
    "precision",
    "lora_skip_unknown_keys",
)
_LOSSY_ATTENTION = ("sage",)  # quantises Q and K to 8 bits; the other backends compute exact attention
_RECORD_NAME = re.compile(r"run_record(?:\.rank[0-9]+)?\.json")


class RunSettingsError(ValueError):
    """The output folder holds videos made with other settings than this run's."""


def record_path(folder: Path, rank: int, world_size: int) -> Path:
    """Where a process writes its run record: one file per torchrun rank, so ranks never share one."""
    return folder / ("run_record.json" if world_size == 1 else f"run_record.rank{rank}.json")


def video_settings(config: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """The settings of a run config (its :func:`bindweave.config.to_dict`) that its videos depend on.

    ``dtype`` is the resolved weights dtype (``"bfloat16"``, ``"float32"``...). Paths are made absolute, so
    the same folder named from another directory compares equal. Fields the config lacks (a record
    written before the field existed) are left out, and so not compared.
    """
    settings: dict[str, Any] = {"dtype": dtype}
    for name in _PATH_SETTINGS:
        if name in config:
            settings[name] = None if config[name] is None else os.path.abspath(config[name])
    for name in _VALUE_SETTINGS:
        if name in config:
            settings[name] = config[name]
    if "attention_backend" in config:
        backend = config["attention_backend"]
        settings["attention_backend"] = backend if backend in _LOSSY_ATTENTION else "exact"
    if "loras" in config:  # the order matters: the merges add up in the weights' dtype
        specs = [LoraSpec.parse(text) for text in config["loras"]]
        settings["loras"] = [{"path": os.path.abspath(s.path), "scale": s.scale} for s in specs]
    return settings


def recorded_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The video settings a run record was written with (derived from its config for older records)."""
    if "video_settings" in record:
        return dict(record["video_settings"])
    config = record.get("config", {})
    dtype = config.get("dtype", "auto")
    if dtype == "auto":  # generate.resolve_dtype's rule, applied to the device the record names
        dtype = "bfloat16" if str(record.get("device", "cpu")).startswith("cuda") else "float32"
    return video_settings(config, dtype)


def setting_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, old value, new value)`` for every setting both sides have and that differs."""
    return [(name, old[name], new[name]) for name in new if name in old and old[name] != new[name]]


def read_run_records(folder: Path) -> dict[Path, dict[str, Any]]:
    """Every run record in ``folder`` (the single-process one and each rank's), by path."""
    if not folder.is_dir():
        return {}
    records = {}
    for path in sorted(folder.iterdir()):
        if not _RECORD_NAME.fullmatch(path.name):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:  # removed meanwhile by another rank (a record that described no video)
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"cannot read the run record {path}: {exc}; it says which settings made the videos "
                "beside it: restore it, or delete it to treat those videos as made with this run's settings"
            ) from exc
        if not isinstance(record, dict):
            raise ValueError(f"run record {path} is not a JSON object")
        records[path] = record
    return records


def check_rerun(folder: Path, settings: Mapping[str, Any], *, overwrite: bool = False) -> list[Path]:
    """Check that this run's videos would be of the same kind as those already in ``folder``.

    Returns the run records made with other settings; they describe no video once this run proceeds
    (the folder has none, or ``overwrite`` replaces them), so the caller removes them.

    Raises:
        RunSettingsError: ``folder`` holds videos and a record made with other settings, and not
            ``overwrite``; the message names each differing setting with its old and new value.
    """
    videos = (
        sorted(p.name for p in folder.glob("*.mp4") if not p.name.startswith(".")) if folder.is_dir() else []
    )
    records = read_run_records(folder)
    stale = {}
    for path, record in records.items():
        differences = setting_differences(recorded_settings(record), settings)
        if differences:
            stale[path] = differences
    if videos and not records:
        logger.warning(
            "%s holds %d videos but no run record (written by an older version): they are kept and "
            "skipped without checking which settings made them",
            folder,
            len(videos),
        )
    if videos and stale and not overwrite:
        lines = sorted(
            {_describe(*difference) for differences in stale.values() for difference in differences}
        )
        raise RunSettingsError(
            f"{folder} holds {len(videos)} videos made with other settings than this run's "
            f"({', '.join(p.name for p in stale)}): {'; '.join(lines)}. Existing videos are skipped, so "
            "the folder would mix both: rerun with the recorded settings to resume, choose another --out, "
            "or add --overwrite to delete this manifest's videos there and generate them all again"
        )
    return list(stale)


_FLAGS = {"loras": "--lora"}  # settings whose option is not named after them


def _describe(name: str, old: Any, new: Any) -> str:
    return f"{_FLAGS.get(name, '--' + name.replace('_', '-'))} {_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    if value is None:
        return "unset (default)"
    if isinstance(value, list) and all(isinstance(v, dict) and "path" in v for v in value):  # loras
        return "[" + ", ".join(f"{v['path']}:{v['scale']:g}" for v in value) + "]" if value else "none"
    if isinstance(value, str) and len(value) > 48:
        return repr(value[:45] + "...")
    return repr(value) if isinstance(value, str) else str(value)
