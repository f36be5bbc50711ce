"""A tiny, randomly initialised ``Qwen2.5-VL-7B-Instruct`` folder in the real layout (the MLLM stream)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from bindweave.conditioning.clip import CLIP_MEAN, CLIP_STD
from bindweave.testing.seeding import seeded
from bindweave.testing.tokenizers import CORPUS, build_qwen2_tokenizer

__all__ = ["TINY_HEADS", "TINY_MLLM_DIM", "write_qwen2_5_vl"]

TINY_MLLM_DIM = 32  # Qwen2.5-VL hidden size (real: 3584)
TINY_HEADS = 4  # attention heads of the umT5 and Qwen2.5-VL text towers


def write_qwen2_5_vl(
    folder: Path, *, mllm_dim: int = TINY_MLLM_DIM, seed: int = 0, corpus: Sequence[str] = CORPUS
) -> None:
    """Write a tiny ``Qwen2.5-VL-7B-Instruct`` folder: model, tokenizer + chat template, image processor.

    ``Qwen2_5_VLProcessor`` itself cannot be built without torchvision (its video processor needs it),
    so its parts are saved one by one, giving the same files.
    """
    tokenizer = build_qwen2_tokenizer(corpus=corpus)
    with seeded(seed, "mllm"):
        model = Qwen2_5_VLForConditionalGeneration(_tiny_qwen2_5_vl_config(tokenizer, mllm_dim)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _qwen2_vl_image_processor().save_pretrained(folder)


def _tiny_qwen2_5_vl_config(tokenizer: PreTrainedTokenizerBase, mllm_dim: int) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B's config shrunk: 2+2 layers, GQA 4/2 heads, M-RoPE split like 16:24:24."""
    head_dim = mllm_dim // TINY_HEADS
    if mllm_dim % TINY_HEADS or head_dim % 2 or head_dim // 2 < 3:
        raise ValueError(f"mllm_dim must be a multiple of {2 * TINY_HEADS} and >= 24, got {mllm_dim}")
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": mllm_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": TINY_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope_section(head_dim),
        },
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "out_hidden_size": mllm_dim,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies over (t, h, w) like the real [16, 24, 24] of 64."""
    half = head_dim // 2
    temporal = max(1, half // 4)
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def _qwen2_vl_image_processor() -> Qwen2VLImageProcessorPil:
    """Qwen2.5-VL's image preprocessor; ``size`` holds min/max pixels (3136 / 12845056) in transformers 5."""
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": 3136, "longest_edge": 12845056},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
