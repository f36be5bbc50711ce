"""A whole tiny randomly initialised ``BindWeavePipeline`` folder, for tests that load a pipeline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["TINY_SIZE", "build_tiny_random_pipeline"]

# Native size of the tiny pipeline: small enough for CPU tests, still 4k + 1 frames.
TINY_SIZE = {"height": 64, "width": 96, "num_frames": 17}


def build_tiny_random_pipeline(folder: Path, seed: int = 0) -> Path:
    """Save a tiny randomly initialised ``BindWeavePipeline`` (every real component, shrunk) to ``folder``."""
    import torch

    from bindweave.pipeline import BindWeavePipeline

    from .release import build_tiny_release, tiny_transformer_kwargs

    with tempfile.TemporaryDirectory() as tmp:
        release = build_tiny_release(Path(tmp), seed=seed)
        pipe = BindWeavePipeline.from_released(
            release.wan,
            release.transformer,
            release.mllm,
            torch_dtype=torch.float32,
            **tiny_transformer_kwargs(),
        )
        pipe.register_to_config(**{f"default_{k}": v for k, v in TINY_SIZE.items()})
        pipe.save_pretrained(folder)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    return folder
