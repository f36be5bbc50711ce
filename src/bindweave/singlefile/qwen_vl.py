"""A Qwen2.5-VL-7B single file of the kind ComfyUI uses for its Qwen-VL text encoder
(``models/text_encoders/qwen_2.5_vl_7b.safetensors``, ``qwen_2.5_vl_7b_fp8_scaled.safetensors``) as
transformers' ``Qwen2_5_VLForConditionalGeneration``, BindWeave's MLLM.

ComfyUI's module names (``comfy/text_encoders/llama.py``, ``qwen_vl.py``) are transformers' names from before
its 4.52 restructuring: the language model at ``model.layers.N...`` / ``model.embed_tokens`` / ``model.norm``,
the vision tower at ``visual.blocks.N...`` / ``visual.patch_embed`` / ``visual.merger``. Today's transformers
puts them under ``model.language_model.`` and ``model.visual.``. ComfyUI's model has no LM head (it reads
hidden states only, as BindWeave does); a file without ``lm_head.weight`` gets a zero head, so the model
cannot write text (BindWeave's optional prompt refinement needs the full ``Qwen2.5-VL-7B-Instruct`` folder).

The file has no config and no processor: both come from a folder holding Qwen2.5-VL-7B-Instruct's
``config.json`` and processor files (:data:`PROCESSOR_FILES`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .assign import assign_state_dict
from .reader import ComponentFile

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_PROCESSOR_FILES",
    "PROCESSOR_FILES",
    "check_processor_folder",
    "QWEN_VL_COMPONENT",
    "comfy_to_transformers_name",
    "load_qwen_vl_file",
]

QWEN_VL_COMPONENT = "Qwen2.5-VL MLLM (ComfyUI qwen_2.5_vl_7b*.safetensors)"
#: What the folder beside a Qwen2.5-VL single file must hold (from Qwen/Qwen2.5-VL-7B-Instruct, no weights).
PROCESSOR_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
#: The image processor's settings: the released folder's name, or the one transformers 5 saves.
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_RENAMES = (("model.", "model.language_model."), ("visual.", "model.visual."), ("lm_head.", "lm_head."))


def comfy_to_transformers_name(name: str) -> str | None:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.language_model.layers.0.mlp.up_proj.weight``, etc."""
    for theirs, ours in _RENAMES:
        if name.startswith(theirs):
            return ours + name.removeprefix(theirs)
    return name  # reported as unexpected by the key check


def check_processor_folder(folder: str | os.PathLike | None, file: str | os.PathLike) -> Path:
    """The folder with the config and processor files, or an error saying exactly what to put where."""
    wanted = ", ".join((*PROCESSOR_FILES, IMAGE_PROCESSOR_FILES[0]))
    if folder is None:
        raise FileNotFoundError(
            f"{file} holds the Qwen2.5-VL weights but no config or processor: put Qwen2.5-VL-7B-Instruct's {wanted} "
            "(and chat_template.json, if it has one) in a folder and give that folder as mllm_processor"
        )
    folder = Path(folder)
    lacking = [name for name in PROCESSOR_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        lacking.append(" or ".join(IMAGE_PROCESSOR_FILES))
    if lacking:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(lacking)}: copy them from Qwen2.5-VL-7B-Instruct (only its small config "
            "and processor files are needed beside the single weights file)"
        )
    return folder


def load_qwen_vl_file(
    path: str | os.PathLike, config_folder: str | os.PathLike, dtype: torch.dtype = torch.float32
):
    """``Qwen2_5_VLForConditionalGeneration`` from a ComfyUI-layout file, configured by ``config_folder``."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    file = ComponentFile(path, QWEN_VL_COMPONENT)
    config = AutoConfig.from_pretrained(check_processor_folder(config_folder, path))
    state = file.state_dict(comfy_to_transformers_name, dtype)
    if "lm_head.weight" not in state:
        logger.info("%s has no LM head (ComfyUI's text-encoder layout): hidden states only", path)
    return assign_state_dict(
        lambda: Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype),
        state,
        file.path,
        QWEN_VL_COMPONENT,
        zero_if_missing=("lm_head.weight",),
    )
