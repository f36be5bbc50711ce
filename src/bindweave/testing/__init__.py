"""Offline test fixtures: tiny, randomly initialised components saved in the real on-disk layouts, and the
float32-rounding tolerance that tests compare outputs with (:mod:`bindweave.testing.tolerance`).

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
    from bindweave.testing.tolerance import (
        FLOAT32_EPS,
        ROUNDING_ULPS,
        assert_close_to_float32_rounding,
        assert_differs_beyond_float32_rounding,
        rounding_ulps,
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
    "FLOAT32_EPS": "tolerance",
    "ROUNDING_ULPS": "tolerance",
    "assert_close_to_float32_rounding": "tolerance",
    "assert_differs_beyond_float32_rounding": "tolerance",
    "rounding_ulps": "tolerance",
}

__all__ = [
    "FLOAT32_EPS",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "ROUNDING_ULPS",
    "TINY_SIZE",
    "ReleaseFolders",
    "assert_close_to_float32_rounding",
    "assert_differs_beyond_float32_rounding",
    "build_tiny_random_pipeline",
    "build_qwen2_tokenizer",
    "build_tiny_release",
    "build_umt5_tokenizer",
    "rounding_ulps",
    "tiny_transformer_kwargs",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
