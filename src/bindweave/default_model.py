"""The embedded default model, so that ``make demo`` works on a fresh machine with no download.

Until a trained small model ships with the package, the default is a tiny randomly initialised
BindWeave: every real component (umT5, CLIP, Wan VAE, BindWeave DiT, Qwen2.5-VL, their tokenizers and
processors), shrunk, built offline and saved as a ``BindWeavePipeline`` folder. Its videos are noise:
it exercises the whole pipeline, not the weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .io.files import atomic_folder

logger = logging.getLogger(__name__)

TINY_RANDOM_NAME = "tiny-random-v1"
# Native size of the tiny default model: small enough for a CPU demo, still 4k + 1 frames.
DEFAULT_SIZE = {"height": 64, "width": 96, "num_frames": 17}
DEFAULT_PROMPT = "The first subject drifts to the left while the second one rises slowly."


def cache_dir() -> Path:
    return Path(os.environ.get("BINDWEAVE_CACHE", Path.home() / ".cache" / "bindweave"))


def default_model_path() -> Path:
    """The folder of the embedded default pipeline, built on first use (atomically) in :func:`cache_dir`."""
    target = cache_dir() / TINY_RANDOM_NAME
    if (target / "model_index.json").is_file():
        return target
    logger.warning("building the tiny randomly initialised default model in %s (weights are random)", target)
    try:
        with atomic_folder(target) as staged:
            build_tiny_random_pipeline(staged)
    except OSError:
        if not (target / "model_index.json").is_file():  # not a concurrent build that won the race
            raise
    return target


def build_tiny_random_pipeline(folder: Path, seed: int = 0) -> Path:
    """Save a tiny randomly initialised ``BindWeavePipeline`` to ``folder``."""
    import torch

    from .pipeline import BindWeavePipeline
    from .testing import build_tiny_release, tiny_transformer_kwargs

    with tempfile.TemporaryDirectory() as tmp:
        release = build_tiny_release(Path(tmp), seed=seed)
        pipe = BindWeavePipeline.from_released(
            release.wan,
            release.transformer,
            release.mllm,
            torch_dtype=torch.float32,
            **tiny_transformer_kwargs(),
        )
        pipe.register_to_config(**{f"default_{k}": v for k, v in DEFAULT_SIZE.items()})
        pipe.save_pretrained(folder)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    return folder


def demo_references() -> list[PIL.Image.Image]:
    """Two small drawn subjects (a striped disc and a dotted triangle) on plain backgrounds."""
    disc = PIL.Image.new("RGB", (48, 48), (235, 235, 235))
    draw = PIL.ImageDraw.Draw(disc)
    draw.ellipse((6, 6, 42, 42), fill=(200, 60, 40))
    for y in range(10, 40, 6):
        draw.line((8, y, 40, y), fill=(250, 200, 60), width=2)

    tri = PIL.Image.new("RGB", (40, 56), (30, 30, 60))
    draw = PIL.ImageDraw.Draw(tri)
    draw.polygon([(20, 4), (36, 50), (4, 50)], fill=(60, 170, 220))
    rng = np.random.default_rng(0)
    for x, y in rng.integers((12, 24), (28, 46), size=(8, 2)):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 255, 255))
    return [disc, tri]
