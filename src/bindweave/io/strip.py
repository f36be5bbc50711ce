"""A PNG contact strip: the references, then evenly spaced frames, side by side at the video's height;
optionally a second row of the true clip's frames under them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image

from .files import atomic_write
from .video import sample_frame_indices


def contact_strip(
    references: Sequence[PIL.Image.Image],
    frames: np.ndarray,
    num_frames: int = 6,
    gap: int = 4,
    truth: np.ndarray | None = None,
) -> PIL.Image.Image:
    """``frames``: ``(F, H, W, 3)`` floats in [0, 1] or uint8. Returns one RGB image of height ``H``.

    With ``truth`` (the true clip, same shape), a second row below shows its frames at the same indices,
    under the generated ones (white under the references), so the two can be compared frame by frame.
    """
    video = _uint8(frames)
    height = video.shape[1]
    refs = [
        ref.convert("RGB").resize((max(1, round(ref.width * height / ref.height)), height))
        for ref in references
    ]
    indices = sample_frame_indices(len(video), num_frames)
    rows = [refs + [PIL.Image.fromarray(video[i]) for i in indices]]
    if truth is not None:
        true_video = _uint8(truth)
        if true_video.shape != video.shape:
            raise ValueError(f"truth has shape {true_video.shape}, the frames {video.shape}: they must match")
        blanks = [PIL.Image.new("RGB", ref.size, (255, 255, 255)) for ref in refs]
        rows.append(blanks + [PIL.Image.fromarray(true_video[i]) for i in indices])
    width = sum(t.width for t in rows[0]) + gap * (len(rows[0]) - 1)
    strip = PIL.Image.new("RGB", (width, len(rows) * height + gap * (len(rows) - 1)), (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            strip.paste(tile, (x, r * (height + gap)))
            x += tile.width + gap
    return strip


def _uint8(frames: np.ndarray) -> np.ndarray:
    video = np.asarray(frames)
    if video.dtype != np.uint8:
        video = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    return video


def write_strip(
    references: Sequence[PIL.Image.Image],
    frames: np.ndarray,
    path: Path,
    num_frames: int = 6,
    truth: np.ndarray | None = None,
) -> Path:
    with atomic_write(path) as tmp:
        contact_strip(references, frames, num_frames, truth=truth).save(tmp, format="PNG")
    return Path(path)
