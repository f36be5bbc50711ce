"""Offline test fixtures: tiny, randomly initialised components saved in the real on-disk layouts.

Names are imported lazily so that using only the tokenizers does not pull in diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bindweave._lazy import lazy_getattr

if TYPE_CHECKING:
    from bindweave.testing.pipeline import TINY_SIZE, build_tiny_random_pipeline
    from bindweave.testing.release import ReleaseFolders, build_tiny_release, tiny_transformer_kwargs
    from bindweave.testing.tokenizers import (
        QWEN2_5_VL_CHAT_TEMPLATE,
        build_qwen2_tokenizer,
        build_umt5_tokenizer,
    )

_EXPORTS = {
    "TINY_SIZE": "pipeline",
    "build_tiny_random_pipeline": "pipeline",
    "QWEN2_5_VL_CHAT_TEMPLATE": "tokenizers",
    "build_qwen2_tokenizer": "tokenizers",
    "build_umt5_tokenizer": "tokenizers",
    "ReleaseFolders": "release",
    "build_tiny_release": "release",
    "tiny_transformer_kwargs": "release",
}

__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "TINY_SIZE",
    "ReleaseFolders",
    "build_tiny_random_pipeline",
    "build_qwen2_tokenizer",
    "build_tiny_release",
    "build_umt5_tokenizer",
    "tiny_transformer_kwargs",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
