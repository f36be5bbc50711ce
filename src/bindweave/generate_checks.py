"""A generation job's inputs checked against the model before it is loaded (the config-level checks).

The checks that need no job config (the device, a model's saved config files, one MLLM states file) are
:mod:`bindweave.preflight`'s; this module applies them to a ``generate`` or ``run-manifest`` config, so that
``preflight`` depends on no job config and ``generate_config`` can use it without a circle.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .conditioning.text import DEFAULT_NEGATIVE_PROMPT
from .generate_config import GenerateConfig, RunManifestConfig
from .io.manifest import ManifestEntry, resolve_hidden_states
from .preflight import SavedModel, check_mllm_states_file

logger = logging.getLogger(__name__)

__all__ = ["check_generate_inputs", "manifest_states", "why_no_negative_branch"]


def check_generate_inputs(config: GenerateConfig, model: SavedModel) -> Path | None:
    """Check the given inputs against the model before loading it; warn about those that have no effect.

    Every given MLLM states file is checked, used or not. Returns the negative states to pass on: none
    when there is no negative branch (guidance 1).
    """
    given = {"--mllm-states": config.mllm_states, "--negative-mllm-states": config.negative_mllm_states}
    for flag, path in given.items():
        if path is not None:
            check_mllm_states_file(path, model.mllm_dim, flag)
    no_negative = why_no_negative_branch(config.requested_guidance(), model)
    if no_negative:
        if config.negative_mllm_states is not None:
            logger.warning("--negative-mllm-states has no effect %s", no_negative)
        if config.negative_prompt != DEFAULT_NEGATIVE_PROMPT:
            logger.warning("--negative-prompt has no effect %s", no_negative)
    computes_states = config.mllm_states is None or (not no_negative and config.negative_mllm_states is None)
    if computes_states and not model.has_mllm:
        raise ValueError(
            "this model has no MLLM (Qwen2.5-VL) to compute the MLLM states: give --mllm, or --mllm-states "
            "(and --negative-mllm-states when guidance is above 1)"
        )
    if config.refine == "local" and not model.has_mllm:
        raise ValueError("--refine local needs the pipeline's Qwen2.5-VL (give --mllm)")
    if config.mllm is not None and not computes_states and config.refine != "local":
        logger.warning("--mllm has no effect: every MLLM state this run needs is given")
    return None if no_negative else config.negative_mllm_states


def why_no_negative_branch(guidance: float | None, model: SavedModel) -> str | None:
    """Words saying that the run has no negative branch (guidance 1), or None when it has one."""
    if guidance is None:
        if model.default_guidance_scale != 1.0:
            return None
        return "at guidance 1.0, the model's default (no negative branch)"
    return None if guidance != 1.0 else "at guidance 1.0 (no negative branch)"


def manifest_states(
    entries: list[ManifestEntry], config: RunManifestConfig, model: SavedModel
) -> dict[str, tuple[Path | None, Path | None]]:
    """The cached MLLM states each entry names, checked against the model before it is loaded.

    A named but absent file is computed instead, with a warning. Without a negative branch (guidance 1)
    no negative states are passed on, but the named files are checked all the same.
    """
    no_negative = why_no_negative_branch(config.requested_guidance(), model)
    states, unused = {}, 0
    for entry in entries:
        positive, negative = resolve_hidden_states(entry, config.manifest.parent)
        positive = _entry_states(entry, positive, "hidden_states_path", model, needed=True)
        negative = _entry_states(
            entry, negative, "hidden_states_path_negative", model, needed=not no_negative
        )
        if no_negative and negative is not None:
            unused, negative = unused + 1, None
        states[entry.id] = (positive, negative)
    if unused:
        logger.warning(
            "the manifest's %d hidden_states_path_negative files have no effect %s",
            unused,
            no_negative,
        )
    return states


def _entry_states(entry: ManifestEntry, path: Path | None, key: str, model: SavedModel, needed: bool):
    """The entry's states file, checked; None (computed instead) when it names none or an absent one."""
    name = f"entry {entry.id!r}: {key}"
    if path is not None and not path.is_file():
        if needed:
            logger.warning("%s %s not found; computing the MLLM states instead", name, path)
        path = None
    if path is not None:
        check_mllm_states_file(path, model.mllm_dim, name)
    elif needed and not model.has_mllm:
        raise ValueError(
            f"{name}: no states file, and the model has no MLLM (Qwen2.5-VL) to compute them: give --mllm, "
            "or run extract-mllm first"
        )
    return path
