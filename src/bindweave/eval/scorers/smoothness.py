"""MotionSmoothness: Q-Align quality over 3-frame windows; a jump in quality marks an artifact.

As in the released ``eval/get_motion_smoothness.py`` of OpenS2V-Nexus:

* every frame ``c`` gets a window of ``window`` frames centred on it (clamped at the ends, with the
  released padding rule: the first frames repeat frame 0, the last window repeats its first frame);
* a quality model rates each window as a short video, in [0, 1] (Q-Align: softmax over the logits of
  "excellent/good/fair/poor/bad" weighted 1, 0.75, 0.5, 0.25, 0);
* wherever two consecutive window scores differ by more than 0.025, *both* frames are artifacts;
* the score is ``1 - artifacts / frames``.

The released script scores **all** frames (not 32 sampled ones); ``num_frames=None`` (the default) does
the same, an integer samples that many frames uniformly first.

The quality model is a :class:`WindowQualityModel`; :class:`QAlignQualityModel` runs the real
``q-future/one-align`` checkpoint on the native mPLUG-Owl2 port of :mod:`bindweave.eval.scorers.qalign`
(no ``q_align`` package, no transformers 4.36), checked against the benchmark's code on a tiny checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from bindweave.eval.scorers.base import VideoSample, require_files, require_weights
from bindweave.eval.scorers.qalign import expand_to_square

__all__ = [
    "QUALITY_LEVELS",
    "QUALITY_WEIGHTS",
    "MotionSmoothnessScorer",
    "QAlignQualityModel",
    "WindowQualityModel",
    "artifact_frames",
    "expand_to_square",
    "quality_from_logits",
    "sliding_windows",
    "smoothness_from_scores",
]

QALIGN_SOURCE = "q-future/one-align"
QUALITY_LEVELS = ("excellent", "good", "fair", "poor", "bad")
QUALITY_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)
ARTIFACT_THRESHOLD = 0.025
WINDOW = 3


class WindowQualityModel(Protocol):
    """Rates each window (a short list of frames) with a quality in [0, 1]."""

    def __call__(self, windows: Sequence[Sequence[Image.Image]]) -> Sequence[float]: ...


def quality_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(N, 5)`` logits of the five quality words -> ``(N,)`` expected quality in [0, 1].

    Computed in the logits' dtype, as the benchmark does (fp16 for the released model: the 0.025 artifact
    threshold then sees fp16-rounded scores).
    """
    if logits.shape[-1] != len(QUALITY_WEIGHTS):
        raise ValueError(f"expected logits for {len(QUALITY_WEIGHTS)} quality levels, got {logits.shape}")
    weights = torch.tensor(QUALITY_WEIGHTS, dtype=logits.dtype, device=logits.device)
    return torch.softmax(logits, dim=-1) @ weights


def sliding_windows(num_frames: int, window: int = WINDOW) -> list[list[int]]:
    """Frame indices of the window around each frame, with the released script's padding rule."""
    if num_frames < 1:
        raise ValueError("MotionSmoothness needs at least one frame")
    left = (window - 1) // 2
    right = window - 1 - left
    windows = []
    for current in range(num_frames):
        start = max(0, current - left)
        end = min(num_frames, current + right + 1)
        indices = list(range(start, end))
        while len(indices) < window:
            if start == 0:
                indices.append(indices[-1])
            else:
                indices.insert(0, indices[0])
        if current < left:
            indices = [indices[0]] * window
        windows.append(indices)
    return windows


def artifact_frames(scores: Sequence[float], threshold: float = ARTIFACT_THRESHOLD) -> np.ndarray:
    """Indices of frames next to a quality jump ``> threshold`` (both sides of each jump)."""
    jumps = np.where(np.abs(np.diff(np.asarray(scores, dtype=np.float64))) > threshold)[0]
    return np.unique(np.concatenate([jumps, jumps + 1]))


def smoothness_from_scores(scores: Sequence[float], threshold: float = ARTIFACT_THRESHOLD) -> float:
    """``1 - (number of artifact frames) / (number of frames)``."""
    if len(scores) == 0:
        raise ValueError("no quality scores")
    return 1.0 - len(artifact_frames(scores, threshold)) / len(scores)


class MotionSmoothnessScorer:
    """Per-video MotionSmoothness in [0, 1] from a window quality model."""

    name = "motion_smoothness"

    def __init__(
        self,
        quality_model: WindowQualityModel,
        window: int = WINDOW,
        threshold: float = ARTIFACT_THRESHOLD,
        num_frames: int | None = None,
        batch_size: int = 64,  # the benchmark's
    ) -> None:
        self.quality_model = quality_model
        self.window = window
        self.threshold = threshold
        self.num_frames = num_frames
        self.batch_size = batch_size

    def window_scores(self, frames: np.ndarray) -> list[float]:
        images = [Image.fromarray(f) for f in frames]
        windows = [[images[i] for i in idx] for idx in sliding_windows(len(images), self.window)]
        scores: list[float] = []
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            out = [float(s) for s in self.quality_model(batch)]
            if len(out) != len(batch):
                raise ValueError(f"quality model returned {len(out)} scores for {len(batch)} windows")
            scores.extend(out)
        return scores

    def __call__(self, sample: VideoSample) -> float:
        return smoothness_from_scores(
            self.window_scores(sample.sampled_frames(self.num_frames)), self.threshold
        )


class QAlignQualityModel:
    """Q-Align (``q-future/one-align``) window quality, as the benchmark's ``QAlignVideoScorer`` computes it,
    on the native port :class:`bindweave.eval.scorers.qalign.MplugOwl2QualityModel` (fp16, as released).

    Frames are padded to a square with the image processor's mean colour, preprocessed by the folder's
    CLIP image processor, cast to the model dtype; the prompt is tokenised with the folder's
    sentencepiece model; the logits of the five level words at the last position give
    :func:`quality_from_logits` in the model dtype. ``attn_implementation`` defaults to ``"sdpa"``, what
    OpenS2V-Eval v1.1's Q-Align environment runs; ``"eager"`` is upstream Q-Align's path (see
    :mod:`bindweave.eval.scorers.qalign`).
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cuda",
        dtype: torch.dtype = torch.float16,
        attn_implementation: str | None = None,
    ) -> None:
        import sentencepiece
        from transformers import CLIPImageProcessor

        from bindweave.eval.scorers.qalign import QALIGN_ATTENTION, MplugOwl2QualityModel, qalign_input_ids

        model_path = Path(model_path)
        require_weights("motion_smoothness", model_path, QALIGN_SOURCE)
        require_files(
            "motion_smoothness",
            [
                (model_path / "tokenizer.model", QALIGN_SOURCE),
                (model_path / "preprocessor_config.json", QALIGN_SOURCE),
            ],
        )
        self.device = torch.device(device)
        self.model = MplugOwl2QualityModel.from_folder(
            model_path, dtype=dtype, attn_implementation=attn_implementation or QALIGN_ATTENTION
        ).to(self.device)
        self.dtype = dtype
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path / "tokenizer.model"))
        self.input_ids = torch.tensor(qalign_input_ids(sp), device=self.device)
        # The benchmark takes token [1] of tokenizer([word]): the first piece after BOS.
        self.level_ids = [sp.encode(word)[0] for word in QUALITY_LEVELS]
        self.image_processor = CLIPImageProcessor.from_pretrained(model_path)
        self.fill = tuple(int(x * 255) for x in self.image_processor.image_mean)

    def pixels(self, window: Sequence[Image.Image]) -> torch.Tensor:
        """``(F, 3, S, S)`` model input of one window."""
        squares = [expand_to_square(f.convert("RGB"), self.fill) for f in window]
        pixels = self.image_processor(images=squares, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def level_logits(self, windows: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
        """``(B, 5)`` logits of "excellent" ... "bad" after each window."""
        logits = self.model.last_logits(self.input_ids, [self.pixels(w) for w in windows])
        return logits[:, self.level_ids]

    def __call__(self, windows: Sequence[Sequence[Image.Image]]) -> list[float]:
        return quality_from_logits(self.level_logits(windows)).tolist()
