"""What every OpenS2V-Eval scorer shares: the video sample it scores and the up-front model-file checks.

A scorer is any callable ``scorer(sample) -> float | Scored`` with a ``name`` (the metric key of
:mod:`bindweave.eval.scores`) and optionally ``applies_to(sample) -> bool`` (FaceSim only scores face
categories). Model-backed scorers take their model as a small callable interface, so the pre- and
post-processing (which is what decides the score) is tested here with tiny stand-ins, while the adapters
to the real models stay thin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from bindweave.io.video import read_video

__all__ = [
    "MissingModelFileError",
    "Scored",
    "Scorer",
    "SkipVideo",
    "VideoSample",
    "benchmark_frame_indices",
    "category_of",
    "require_files",
]

#: Frames per video for the frame-sampled metrics (Aesthetic, FaceSim, GME, Nexus).
DEFAULT_NUM_FRAMES = 32


def benchmark_frame_indices(num_frames: int, k: int) -> list[int]:
    """The benchmark's ``k`` frames: ``np.linspace(0, N - 1, k, dtype=int)``.

    Truncated, not rounded (at N = 81, k = 32 this differs from rounding in 15 of 32 indices), and with
    duplicates when ``N < k`` (each frame then weighs as often as the benchmark counts it).
    """
    if num_frames < 1:
        raise ValueError(f"cannot sample frames of a video with {num_frames} frames")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [int(i) for i in np.linspace(0, num_frames - 1, k, dtype=int)]


class SkipVideo(Exception):  # noqa: N818 - a control-flow signal, not an error of the run
    """The benchmark leaves this video out of this metric (e.g. FaceSim: no face in the reference).

    The run records the reason in the per-video JSON, counts the video as skipped for that metric in the
    summary, and goes on with the next video.
    """


class Scored(NamedTuple):
    """A per-video value plus details worth keeping in the per-video JSON (e.g. the judge's runs)."""

    value: float
    details: dict[str, Any]


@runtime_checkable
class Scorer(Protocol):
    name: str

    def __call__(self, sample: VideoSample) -> float | Scored: ...


def category_of(video_id: str) -> str:
    """The OpenS2V-Eval category of a case id: ``singleface_12`` -> ``singleface``.

    Ids without a numeric ``_N`` suffix are their own category.
    """
    head, sep, tail = video_id.rpartition("_")
    return head if sep and head and tail.isdigit() else video_id


class MissingModelFileError(FileNotFoundError):
    """A scorer's model file or folder is absent; the message names it and where to get it."""


def require_files(metric: str, paths: Sequence[tuple[Path, str]]) -> None:
    """Check that every ``(path, source)`` exists; raise one error listing all that are missing.

    ``source`` is the model's public name (e.g. ``openai/clip-vit-large-patch14``), said in the message so
    the user knows what to download.
    """
    missing = [(Path(p), src) for p, src in paths if not Path(p).exists()]
    if missing:
        lines = "; ".join(f"{p} (from {src})" for p, src in missing)
        raise MissingModelFileError(f"{metric}: missing model file(s): {lines}")


def require_weights(metric: str, folder: Path, source: str) -> None:
    """A transformers-style model folder: ``config.json`` plus safetensors/bin weights (sharded or not)."""
    require_files(metric, [(folder / "config.json", source)])
    patterns = ("*.safetensors", "pytorch_model*.bin")
    if not any(any(folder.glob(p)) for p in patterns):
        raise MissingModelFileError(
            f"{metric}: no weights (*.safetensors or pytorch_model*.bin) in {folder} (from {source})"
        )


@dataclass
class VideoSample:
    """One generated video and its case: decoded lazily, once, and shared by all scorers."""

    id: str
    video_path: Path
    prompt: str = ""
    reference_paths: Sequence[Path] = ()
    class_labels: Sequence[str] = ()
    category: str = ""
    _frames: np.ndarray | None = field(default=None, repr=False)
    _fps: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.category:
            self.category = category_of(self.id)

    @classmethod
    def from_frames(cls, video_id: str, frames: np.ndarray, fps: float = 16.0, **kwargs: Any) -> VideoSample:
        """A sample over in-memory frames ``(F, H, W, 3)`` uint8 RGB (tests, or already-decoded clips)."""
        return cls(id=video_id, video_path=Path(f"<memory:{video_id}>"), _frames=frames, _fps=fps, **kwargs)

    def _load(self) -> None:
        if self._frames is None:
            self._frames, self._fps = read_video(self.video_path)

    @property
    def frames(self) -> np.ndarray:
        """All frames, ``(F, H, W, 3)`` uint8 RGB."""
        self._load()
        assert self._frames is not None
        return self._frames

    @property
    def fps(self) -> float:
        self._load()
        assert self._fps is not None
        return self._fps

    def sampled_frames(self, k: int | None) -> np.ndarray:
        """The benchmark's ``k`` frames (:func:`benchmark_frame_indices`); all frames when ``k`` is ``None``."""
        frames = self.frames
        if k is None:
            return frames
        return frames[benchmark_frame_indices(len(frames), k)]

    def sampled_images(self, k: int | None) -> list[Image.Image]:
        return [Image.fromarray(f) for f in self.sampled_frames(k)]

    def reference_images(self) -> list[Image.Image]:
        """The case's reference images as RGB PIL images (files are checked to exist)."""
        images = []
        for path in self.reference_paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{self.id}: reference image not found: {path}")
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        return images

    def release(self) -> None:
        """Drop the decoded frames (a 720p clip is ~220 MB)."""
        self._frames = None
