"""The released model's components, read from the three folders it ships in (spec 1)."""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionModel,
    Qwen2_5_VLForConditionalGeneration,
    UMT5EncoderModel,
)

from .conditioning.mllm import load_mllm_processor
from .flow import sampling_scheduler
from .models import BindWeaveTransformer3DModel


def released_components(
    wan_path: str | os.PathLike,
    transformer_path: str | os.PathLike,
    mllm_path: str | os.PathLike | None = None,
    torch_dtype: torch.dtype = torch.bfloat16,
    **transformer_kwargs: Any,
) -> dict[str, Any]:
    """The keyword arguments of :class:`bindweave.BindWeavePipeline` (see its ``from_released``)."""
    mllm = mllm_processor = None
    if mllm_path is not None:
        mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(mllm_path, dtype=torch_dtype)
        mllm_processor = load_mllm_processor(mllm_path)
    if os.path.isfile(transformer_path):  # a single file in the original Wan / ComfyUI layout
        transformer = BindWeaveTransformer3DModel.from_single_file(
            transformer_path, dtype=torch_dtype, **transformer_kwargs
        )
    else:
        transformer = BindWeaveTransformer3DModel.from_pretrained(
            transformer_path, dtype=torch_dtype, **transformer_kwargs
        )
    return {
        "tokenizer": AutoTokenizer.from_pretrained(wan_path, subfolder="tokenizer"),
        "text_encoder": UMT5EncoderModel.from_pretrained(
            wan_path, subfolder="text_encoder", dtype=torch_dtype
        ),
        "image_encoder": CLIPVisionModel.from_pretrained(
            wan_path, subfolder="image_encoder", dtype=torch_dtype
        ),
        "image_processor": CLIPImageProcessor.from_pretrained(wan_path, subfolder="image_processor"),
        # Wan keeps its VAE in float32.
        "vae": AutoencoderKLWan.from_pretrained(wan_path, subfolder="vae", dtype=torch.float32),
        "transformer": transformer,
        # The released sampler settings (flow_shift 3), not the Wan folder's scheduler config.
        "scheduler": sampling_scheduler(),
        "mllm": mllm,
        "mllm_processor": mllm_processor,
    }
