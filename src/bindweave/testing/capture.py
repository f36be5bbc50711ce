"""The frames ``bindweave generate`` writes to its mp4, kept as floats, for tests that compare other front
ends (the ComfyUI nodes) with the command itself rather than with a re-implementation of it.

The command encodes its frames to H.264 (lossy); :func:`captured_generate_frames` hands the float frames
that :func:`bindweave.generate.run_generate` passes to ``write_video`` to the caller as well, and still
writes the mp4.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["captured_generate_frames"]


@contextmanager
def captured_generate_frames() -> Iterator[list[np.ndarray]]:
    """Within the block, each video ``bindweave generate`` writes is also appended to the yielded list,
    as its ``(F, H, W, 3)`` float frames."""
    from bindweave import generate

    captured: list[np.ndarray] = []
    write_video = generate.write_video

    def write_and_keep(frames, path, **kwargs):
        captured.append(np.array(frames, copy=True))
        return write_video(frames, path, **kwargs)

    generate.write_video = write_and_keep
    try:
        yield captured
    finally:
        generate.write_video = write_video
