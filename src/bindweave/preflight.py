"""What a job checks before it loads any weights: the device, a model's saved config files, MLLM states files.

The checks of a whole ``generate`` / ``run-manifest`` config against the model are
:mod:`bindweave.generate_checks`'; this module depends on no job config.

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

import torch

from .conditioning.mllm import load_mllm_states
from .conditioning.references import ReferenceError, check_reference_files

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


# ---------------------------------------------------------------------------------------------- manifests


def check_manifest_references(images: dict[str, list[Path]]) -> None:
    """Every entry's references readable and of a size the MLLM takes (headers only), naming the entry."""
    for entry_id, paths in images.items():
        try:
            check_reference_files(paths)
        except ReferenceError as err:
            raise ReferenceError(f"entry {entry_id!r}: {err}") from err


def check_images_dir(images_dir: Path) -> None:
    """The folder a manifest's ``img_paths`` are relative to exists."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images-dir {images_dir}: no such folder")
