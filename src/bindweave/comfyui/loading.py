"""What the loader node loads: the embedded toy model, diffusers folders, or ComfyUI's single model files.

The first two go through :func:`bindweave.generate.load_pipeline` with the :class:`ModelConfig` that
``bindweave generate`` would build from the same choices, so the node's pipeline is the command's. ComfyUI's
files are assembled by :func:`bindweave.comfyui.assemble.pipeline_from_files` and then get the same LoRA,
speed and memory treatment (:func:`bindweave.generate.configure_pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..lora.config import LoraSpec
from . import hooks

__all__ = ["NONE", "SOURCES", "ComfyFiles", "Folders", "load_bindweave", "model_config"]

SOURCES = ("embedded toy model", "diffusers folders", "ComfyUI model files")
NONE = "none"


@dataclass(frozen=True)
class Folders:
    """The diffusers-layout folders (``bindweave generate``'s ``--model`` / ``--wan`` ...); "" = not given."""

    model: str = ""
    wan: str = ""
    transformer: str = ""
    mllm: str = ""


@dataclass(frozen=True)
class ComfyFiles:
    """File names in ComfyUI's model folders ("none" = not given), and the folders for what files lack."""

    diffusion_model: str = NONE
    text_encoder: str = NONE
    clip_vision: str = NONE
    vae: str = NONE
    mllm: str = NONE
    umt5_tokenizer: str = ""
    mllm_processor: str = ""

    def given(self) -> dict[str, str]:
        """The model files chosen, by input name."""
        names = ("diffusion_model", "text_encoder", "clip_vision", "vae", "mllm")
        return {name: getattr(self, name) for name in names if getattr(self, name) != NONE}


def _path(text: str) -> Path | None:
    return Path(text.strip()).expanduser() if text.strip() else None


def model_config(
    source: str,
    folders: Folders,
    loras: Sequence[LoraSpec],
    memory: str,
    fp8_weights: bool,
    precision: str,
    dtype: str,
):
    """The :class:`ModelConfig` ``bindweave generate`` builds for these loader inputs.

    The diffusers folders must be given for that source and only for it, so a forgotten source switch is an
    error instead of silently loading another model.
    """
    from ..generate_config import ModelConfig

    given = {name: value for name, value in vars(folders).items() if value.strip()}
    if source == "diffusers folders":
        if not given:
            raise ValueError(
                "source 'diffusers folders' needs model_folder (a saved BindWeavePipeline folder), or wan_folder "
                "and transformer (the released Wan2.1-I2V-14B-720P-Diffusers and BindWeave folders)"
            )
    elif given and not (source == "ComfyUI model files" and set(given) == {"mllm"}):
        raise ValueError(
            f"source {source!r} does not use {', '.join(sorted(given))}: choose source 'diffusers folders' or "
            "clear them"
        )
    device = hooks.comfy_device()
    config = ModelConfig(
        model=_path(folders.model),
        wan=_path(folders.wan),
        transformer=_path(folders.transformer),
        mllm=_path(folders.mllm),
        dtype=dtype,
        device=None if device is None else str(device),
        # repr keeps every digit of a strength (the CLI's PATH:SCALE text round-trips it exactly).
        loras=[f"{spec.path}:{spec.scale!r}" for spec in loras],
        memory=memory,
        fp8_weights=fp8_weights,
        precision=precision,
    )
    config.validate_model()
    return config


def load_bindweave(
    source: str,
    *,
    folders: Folders = Folders(),
    files: ComfyFiles = ComfyFiles(),
    loras: Sequence[LoraSpec] = (),
    memory: str = "none",
    fp8_weights: bool = False,
    precision: str = "float32",
    dtype: str = "auto",
):
    """The loader node's pipeline, with its LoRAs fused and its memory mode applied."""
    from ..generate import configure_pipeline, load_pipeline, resolve_dtype
    from ..preflight import resolve_device

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source != "ComfyUI model files" and files.given():
        raise ValueError(
            f"source {source!r} does not use the model files {', '.join(files.given())}: choose source "
            "'ComfyUI model files' or set them to none"
        )
    config = model_config(source, folders, list(loras), memory, fp8_weights, precision, dtype)
    if source != "ComfyUI model files":
        return load_pipeline(config)
    from .assemble import pipeline_from_files

    device = resolve_device(config.device)
    pipe = pipeline_from_files(files, dtype=resolve_dtype(config.dtype, device), mllm_folder=config.mllm)
    return configure_pipeline(pipe, config, device)
