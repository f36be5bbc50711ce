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

The quality model is a :class:`WindowQualityModel`; :class:`QAlignQualityModel` is the adapter to the real
``q-future/one-align`` checkpoint (mPLUG-Owl2 architecture, needs the ``q_align`` package) and is NOT
verified in this repository (no weights available here).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from bindweave.eval.scorers.base import VideoSample, require_weights

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
    """``(N, 5)`` logits of the five quality words -> ``(N,)`` expected quality in [0, 1]."""
    if logits.shape[-1] != len(QUALITY_WEIGHTS):
        raise ValueError(f"expected logits for {len(QUALITY_WEIGHTS)} quality levels, got {logits.shape}")
    weights = torch.tensor(QUALITY_WEIGHTS, dtype=torch.float32, device=logits.device)
    return torch.softmax(logits.float(), dim=-1) @ weights


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad ``image`` to a square with ``fill``, content centred (Q-Align's preprocessing)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


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
        batch_size: int = 16,
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
    """Adapter to Q-Align (``q-future/one-align``). NOT VERIFIED HERE: needs the ``q_align`` package
    (https://github.com/Q-Future/Q-Align) and the 7B weights, neither of which is available in this repo.

    Mirrors the released scorer: prompt ``"USER: How would you rate the quality of this video?\\n<|image|>
    \\nASSISTANT: The quality of the video is"``, frames padded to square with the processor's mean colour,
    logits of the five quality words at the last position, :func:`quality_from_logits`.
    """

    PROMPT = "USER: How would you rate the quality of this video?\n<|image|>\nASSISTANT: The quality of the video is"

    def __init__(self, model_path: str | Path, device: str = "cuda") -> None:
        model_path = Path(model_path)
        require_weights("motion_smoothness", model_path, QALIGN_SOURCE)
        try:
            from q_align.constants import IMAGE_TOKEN_INDEX
            from q_align.mm_utils import tokenizer_image_token
            from q_align.model.builder import load_pretrained_model
        except ImportError as exc:
            raise ImportError(
                "motion_smoothness needs the q_align package (https://github.com/Q-Future/Q-Align)"
            ) from exc
        tokenizer, model, image_processor, _ = load_pretrained_model(
            str(model_path), None, "mplug_owl2", device=device
        )
        self.model = model.eval().requires_grad_(False)
        self.image_processor = image_processor
        self.level_ids = [tokenizer([w])["input_ids"][0][1] for w in QUALITY_LEVELS]
        self.input_ids = (
            tokenizer_image_token(self.PROMPT, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            .unsqueeze(0)
            .to(model.device)
        )
        self.fill = tuple(int(x * 255) for x in image_processor.image_mean)

    @torch.inference_mode()
    def __call__(self, windows: Sequence[Sequence[Image.Image]]) -> list[float]:
        tensors = [
            self.image_processor.preprocess(
                [expand_to_square(f, self.fill) for f in win], return_tensors="pt"
            )["pixel_values"]
            .half()
            .to(self.model.device)
            for win in windows
        ]
        output = self.model(self.input_ids.repeat(len(tensors), 1), images=tensors)
        logits = output["logits"][:, -1, self.level_ids]
        return quality_from_logits(logits).tolist()
