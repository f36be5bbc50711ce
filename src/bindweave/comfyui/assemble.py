"""A :class:`BindWeavePipeline` from the single files in ComfyUI's model folders.

Which file goes where (docs/comfyui.md): the BindWeave DiT in ``models/diffusion_models`` (Kijai's
``fp8_scaled`` file included), umT5-XXL in ``models/text_encoders``, CLIP ViT-H in ``models/clip_vision``, the
Wan 2.1 VAE in ``models/vae``, and optionally Qwen2.5-VL-7B in ``models/text_encoders``. What the files lack is
asked for by name: umT5's tokenizer folder, and Qwen2.5-VL's config and processor folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import hooks
from .loading import ComfyFiles

__all__ = ["pipeline_from_files", "umt5_tokenizer"]

_REQUIRED = {
    "diffusion_model": ("diffusion_models", "the BindWeave DiT, e.g. Kijai's fp8_scaled BindWeave file"),
    "text_encoder": ("text_encoders", "umt5_xxl_fp16 or umt5_xxl_fp8_e4m3fn_scaled"),
    "clip_vision": ("clip_vision", "clip_vision_h"),
    "vae": ("vae", "wan_2.1_vae"),
}


def _check_required(files: ComfyFiles) -> None:
    lacking = [name for name in _REQUIRED if name not in files.given()]
    if lacking:
        wanted = "; ".join(f"{name} (models/{_REQUIRED[name][0]}: {_REQUIRED[name][1]})" for name in lacking)
        raise ValueError(f"source 'ComfyUI model files' needs {wanted}")


def umt5_tokenizer(folder_text: str):
    """umT5's tokenizer from a folder: the model files carry no usable tokenizer for transformers."""
    from transformers import AutoTokenizer

    if not folder_text.strip():
        raise ValueError(
            "umt5_tokenizer is empty: the umT5 file holds no transformers tokenizer. Give a folder with "
            "google/umt5-xxl's tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
            "spiece.model), e.g. the tokenizer/ folder of Wan2.1-I2V-14B-720P-Diffusers"
        )
    folder = Path(folder_text.strip()).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"umt5_tokenizer {folder}: no such folder")
    return AutoTokenizer.from_pretrained(folder)


def _clip_processor(image_size: int):
    """The pipeline reads only the mean, std and (through the encoder's config) the input size of CLIP's
    processor; these are OpenAI CLIP's, as in Wan's image_processor and ComfyUI's ``clip_preprocess``."""
    from transformers import CLIPImageProcessor

    from ..singlefile.clip_vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return CLIPImageProcessor(
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def pipeline_from_files(
    files: ComfyFiles,
    dtype: torch.dtype,
    mllm_folder: Path | None = None,
    transformer_config: dict | None = None,
    clip_attention_heads: int | None = None,
):
    """Assemble the pipeline (on the CPU; the loader's memory mode places it).

    Args:
        files: the chosen file names (paths outside ComfyUI) and the folders for what they lack.
        dtype: the DiT's, umT5's, CLIP's and the MLLM's dtype; the VAE stays float32, as in Wan.
        mllm_folder: a full Qwen2.5-VL-7B-Instruct folder, used when no ``mllm`` file is chosen.
        transformer_config: DiT config values the file's shapes do not say (a DiT whose heads are not
            ``width // 128``); the released BindWeave file needs none.
        clip_attention_heads: the heads of a CLIP vision model of a width ComfyUI does not know (ViT-H/14's
            16 are known).
    """
    from ..conditioning.mllm import load_mllm_processor
    from ..flow import sampling_scheduler
    from ..models import BindWeaveTransformer3DModel
    from ..pipeline import BindWeavePipeline
    from ..singlefile.clip_vision import load_clip_vision_file
    from ..singlefile.qwen_vl import check_processor_folder, load_qwen_vl_file
    from ..singlefile.umt5 import load_umt5_file
    from ..singlefile.wan_vae import load_wan_vae_file

    _check_required(files)
    if files.mllm != "none" and mllm_folder is not None:
        raise ValueError("give either the mllm file or mllm_folder, not both")
    path = {
        name: hooks.model_file_path(folder, getattr(files, name)) for name, (folder, _) in _REQUIRED.items()
    }
    tokenizer = umt5_tokenizer(files.umt5_tokenizer)  # before any weights: a missing folder fails fast
    mllm = mllm_processor = None
    if files.mllm != "none":
        mllm_path = hooks.model_file_path("text_encoders", files.mllm)
        processor_folder = check_processor_folder(files.mllm_processor.strip() or None, mllm_path)
        mllm = load_qwen_vl_file(mllm_path, processor_folder, dtype)
        mllm_processor = load_mllm_processor(processor_folder)
    elif mllm_folder is not None:
        from transformers import Qwen2_5_VLForConditionalGeneration

        mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(mllm_folder, dtype=dtype)
        mllm_processor = load_mllm_processor(mllm_folder)
    image_encoder = load_clip_vision_file(path["clip_vision"], dtype, clip_attention_heads)
    size, patch = image_encoder.config.image_size, image_encoder.config.patch_size
    transformer = BindWeaveTransformer3DModel.from_single_file(
        path["diffusion_model"],
        dtype=dtype,
        # What the CLIP gives per image (257 for ViT-H/14 at 224, the released value): the DiT's split point.
        image_context_tokens=(size // patch) ** 2 + 1,
        **(transformer_config or {}),
    )
    return BindWeavePipeline(
        tokenizer=tokenizer,
        text_encoder=load_umt5_file(path["text_encoder"], dtype),
        image_encoder=image_encoder,
        image_processor=_clip_processor(size),
        vae=load_wan_vae_file(path["vae"], torch.float32),
        transformer=transformer,
        scheduler=sampling_scheduler(),
        mllm=mllm,
        mllm_processor=mllm_processor,
    )
