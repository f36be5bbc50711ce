"""GmeScore: text-frame relevance with the GME-Qwen2-VL-7B universal embedder.

Per video (released ``eval/get_gmescore.py``): 32 uniformly sampled frames are embedded as corpus images,
the case prompt as a query with the instruction "Find an image that matches the given text."; the score
is the mean over frames of the dot product of the (L2-normalised) embeddings. The same embedder serves
NexusScore (:mod:`bindweave.eval.scorers.nexus`).

The embedder is the :class:`GmeEmbedder` interface; :class:`GmeQwen2VLEmbedder` adapts the real model
through the ``gme_inference.py`` that ships inside the ``Alibaba-NLP/gme-Qwen2-VL-7B-Instruct`` folder
(NOT VERIFIED here: the 7B weights are not available in this repository).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from bindweave.eval.scorers.base import DEFAULT_NUM_FRAMES, VideoSample, require_files, require_weights

__all__ = ["GME_SOURCE", "GME_TEXT_INSTRUCTION", "GmeEmbedder", "GmeQwen2VLEmbedder", "GmeScorer"]

GME_SOURCE = "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct"
GME_TEXT_INSTRUCTION = "Find an image that matches the given text."


class GmeEmbedder(Protocol):
    """L2-normalised embeddings ``(N, D)`` of texts (queries, with an instruction) and of images (corpus)."""

    def embed_texts(self, texts: Sequence[str], instruction: str) -> torch.Tensor: ...

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


def text_image_similarity(gme: GmeEmbedder, text: str, images: Sequence[Image.Image]) -> torch.Tensor:
    """Dot product of the text query with each image, ``(N,)``."""
    query = gme.embed_texts([text], GME_TEXT_INSTRUCTION).float()
    corpus = gme.embed_images(images).float()
    return (corpus * query).sum(-1)


class GmeScorer:
    """Per-video GmeScore (raw mean cosine; aggregation applies ``min(x, 1)``)."""

    name = "gme"

    def __init__(self, gme: GmeEmbedder, num_frames: int = DEFAULT_NUM_FRAMES) -> None:
        self.gme = gme
        self.num_frames = num_frames

    def __call__(self, sample: VideoSample) -> float:
        if not sample.prompt.strip():
            raise ValueError(f"{sample.id}: GmeScore needs the case prompt, it is empty")
        return float(
            text_image_similarity(self.gme, sample.prompt, sample.sampled_images(self.num_frames)).mean()
        )


class GmeQwen2VLEmbedder:
    """Adapter to GME-Qwen2-VL via its own ``gme_inference.GmeQwen2VL``. NOT VERIFIED HERE."""

    def __init__(self, model_path: str | Path, device: str = "cuda") -> None:
        model_path = Path(model_path)
        require_files("gme", [(model_path, GME_SOURCE), (model_path / "gme_inference.py", GME_SOURCE)])
        require_weights("gme", model_path, GME_SOURCE)
        spec = importlib.util.spec_from_file_location("gme_inference", model_path / "gme_inference.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"gme: cannot import {model_path / 'gme_inference.py'}")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault("gme_inference", module)
        spec.loader.exec_module(module)
        self.model = module.GmeQwen2VL(model_name=str(model_path), model_path=str(model_path), device=device)

    def embed_texts(self, texts: Sequence[str], instruction: str) -> torch.Tensor:
        return self.model.get_text_embeddings(
            texts=list(texts), instruction=instruction, show_progress_bar=False
        )

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.model.get_image_embeddings(images=list(images), is_query=False, show_progress_bar=False)
