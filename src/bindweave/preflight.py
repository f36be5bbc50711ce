"""What a generation job checks before it loads any weights: the device, and given inputs against the model.

A wrong setting must cost seconds, not a model load (minutes for the 14B model) plus a sampling run. What
the model expects of its inputs (the MLLM width, the default guidance, whether it has an MLLM) is read
from its saved config files, without loading a tensor.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .conditioning.mllm import load_mllm_states
from .conditioning.references import ReferenceError, check_reference_files
from .conditioning.text import DEFAULT_NEGATIVE_PROMPT
from .io.manifest import ManifestEntry, resolve_hidden_states

if TYPE_CHECKING:
    from .generate import GenerateConfig, RunManifestConfig

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    """``device`` as a torch device (default: cuda if available, else cpu), or one line saying why not.

    Raises:
        ValueError: for a string torch does not know, or an accelerator this machine or torch build lacks.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA" if not torch.backends.cuda.is_built() else "no GPU is visible"
            )
            raise ValueError(f"--device {device}: no CUDA device is available ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"--device {device}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: no MPS device is available; use --device cpu")
    return resolved


@dataclass(frozen=True)
class SavedModel:
    """What a model's saved config files promise, read without loading any weights."""

    mllm_dim: int  # width of the MLLM states the DiT takes
    default_guidance_scale: float  # the guidance a run uses when none is given
    has_mllm: bool  # whether MLLM states can be computed (else they must be given)


def saved_model(
    model: Path | None, wan: Path | None, transformer: Path | None, mllm: Path | None
) -> SavedModel:
    """What :func:`bindweave.generate.load_pipeline` would load for these folders (``None``: the default)."""
    from .default_model import default_model_path
    from .models import BindWeaveTransformer3DModel
    from .pipeline import BindWeavePipeline

    guidance_default = inspect.signature(BindWeavePipeline.__init__).parameters["default_guidance_scale"]
    if wan is not None and Path(transformer).is_file():  # a single-file checkpoint: sizes from its header
        from .models.single_file import infer_single_file_config, single_file_shapes

        config = infer_single_file_config(single_file_shapes(transformer))
        guidance, has_mllm = guidance_default.default, mllm is not None
    elif wan is not None:  # the released folders: the transformer's config.json is optional
        config = BindWeaveTransformer3DModel.load_config(transformer)
        guidance, has_mllm = guidance_default.default, mllm is not None
    else:
        folder = Path(model) if model is not None else default_model_path()
        label = f"--model {folder}" if model is not None else f"the default model {folder}"
        index = _read_json(
            folder / "model_index.json",
            f"{label}: no model_index.json (not a saved BindWeavePipeline folder)",
        )
        config = _read_json(folder / "transformer" / "config.json", f"{label}: no transformer/config.json")
        guidance = index.get("default_guidance_scale", guidance_default.default)
        has_mllm = mllm is not None or (index.get("mllm") or [None])[0] is not None
    mllm_dim = config.get("mllm_dim", BindWeaveTransformer3DModel.released_config()["mllm_dim"])
    return SavedModel(mllm_dim=int(mllm_dim), default_guidance_scale=float(guidance), has_mllm=has_mllm)


def _read_json(path: Path, missing: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON: {err}") from err


def check_mllm_states_file(path: str | os.PathLike, mllm_dim: int, name: str) -> None:
    """A precomputed MLLM states file holds a float ``(1, L, mllm_dim)`` tensor (the released format).

    The tensor is memory-mapped where the file allows it, so checking a whole manifest's files reads only
    their headers.

    Raises:
        MLLMStateError: naming ``name`` and the file, for a missing, unreadable or wrongly shaped file.
    """
    path = Path(path)
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, corrupt or an old format: the full load below says which
        tensor = None
    if isinstance(tensor, torch.Tensor):
        load_mllm_states(tensor, mllm_dim, name=f"{name} file {path}")
    else:
        load_mllm_states(path, mllm_dim, name=name)


# ---------------------------------------------------------------------------------------------- generate


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


# ---------------------------------------------------------------------------------------------- manifests


def check_manifest_references(images: dict[str, list[Path]]) -> None:
    """Every entry's references readable and of a size the MLLM takes (headers only), naming the entry."""
    for entry_id, paths in images.items():
        try:
            check_reference_files(paths)
        except ReferenceError as err:
            raise ReferenceError(f"entry {entry_id!r}: {err}") from err


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


def check_images_dir(images_dir: Path) -> None:
    """The folder a manifest's ``img_paths`` are relative to exists."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images-dir {images_dir}: no such folder")
