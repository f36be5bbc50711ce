"""Offline test fixtures: tiny, randomly initialised components saved in the real on-disk layouts."""

from bindweave.testing.release import ReleaseFolders, build_tiny_release, tiny_transformer_kwargs
from bindweave.testing.tokenizers import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_tokenizer, build_umt5_tokenizer

__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "ReleaseFolders",
    "build_qwen2_tokenizer",
    "build_tiny_release",
    "build_umt5_tokenizer",
    "tiny_transformer_kwargs",
]
