"""A PNG contact strip: the references, then evenly spaced frames, side by side at the video's height."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image

from .files import atomic_write
from .video import sample_frame_indices


def contact_strip(
    references: Sequence[PIL.Image.Image], frames: np.ndarray, num_frames: int = 6, gap: int = 4
) -> PIL.Image.Image:
    """``frames``: ``(F, H, W, 3)`` floats in [0, 1] or uint8. Returns one RGB image of height ``H``."""
    video = np.asarray(frames)
    if video.dtype != np.uint8:
        video = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    height = video.shape[1]
    tiles = [
        ref.convert("RGB").resize((max(1, round(ref.width * height / ref.height)), height))
        for ref in references
    ]
    tiles += [PIL.Image.fromarray(video[i]) for i in sample_frame_indices(len(video), num_frames)]
    strip = PIL.Image.new(
        "RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), height), (255, 255, 255)
    )
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return strip


def write_strip(
    references: Sequence[PIL.Image.Image], frames: np.ndarray, path: Path, num_frames: int = 6
) -> Path:
    with atomic_write(path) as tmp:
        contact_strip(references, frames, num_frames).save(tmp, format="PNG")
    return Path(path)
