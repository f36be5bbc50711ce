"""The LoRA tests' pipeline: the session's tiny release, loaded once; tests copy its DiT before changing it."""

from __future__ import annotations

import pytest
import torch

from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import tiny_transformer_kwargs


@pytest.fixture(scope="package")
def base(tiny_release) -> BindWeavePipeline:
    """A float32 pipeline of the tiny release; read only (adapters go into deep copies of its DiT)."""
    pipe = BindWeavePipeline.from_released(
        tiny_release.wan,
        tiny_release.transformer,
        tiny_release.mllm,
        torch_dtype=torch.float32,
        **tiny_transformer_kwargs(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
