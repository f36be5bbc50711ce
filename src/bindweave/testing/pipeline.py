"""A whole tiny randomly initialised ``BindWeavePipeline`` folder, for tests that load a pipeline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .release import ReleaseFolders

__all__ = ["TINY_SIZE", "build_tiny_random_pipeline"]

# Native size of the tiny pipeline: small enough for CPU tests, still 4k + 1 frames.
TINY_SIZE = {"height": 64, "width": 96, "num_frames": 17}


def build_tiny_random_pipeline(folder: Path, seed: int = 0, release: ReleaseFolders | None = None) -> Path:
    """Save a tiny randomly initialised ``BindWeavePipeline`` (every real component, shrunk) to ``folder``.

    The components come from ``release`` where given (a :func:`build_tiny_release` of the same ``seed``,
    e.g. one a test session already built), else from a tiny release built in a temporary folder.
    """
    if release is not None:
        return _save_pipeline(release, Path(folder))
    from .release import build_tiny_release

    with tempfile.TemporaryDirectory() as tmp:
        return _save_pipeline(build_tiny_release(Path(tmp), seed=seed), Path(folder))


def _save_pipeline(release: ReleaseFolders, folder: Path) -> Path:
    import torch

    from bindweave.pipeline import BindWeavePipeline

    from .release import tiny_transformer_kwargs

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
