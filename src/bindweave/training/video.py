"""Training clips from videos: a window of ``num_frames`` frames at a target fps, resized to the bucket.

Only the frames up to the end of the window are decoded (a training video can be minutes long), and
frames are picked on the source's own time grid: at source rate ``r`` and target rate ``f`` frame ``i`` of
the clip is source frame ``start + round(i * r / f)``.
"""

from __future__ import annotations

import math

import av
import numpy as np
import torch
import torch.nn.functional as F

from bindweave.io.files import PathLike
from bindweave.io.video import probe_video

__all__ = [
    "ClipError",
    "clip_frame_indices",
    "decode_frames",
    "read_subject_mask",
    "read_training_clip",
    "resize_center_crop",
]


class ClipError(ValueError):
    """A video that cannot give a training clip (unreadable, too short); the message names the file."""


def clip_frame_indices(
    total_frames: int, source_fps: float, num_frames: int, fps: float, start_fraction: float
) -> list[int]:
    """Source frame indices of a ``num_frames`` window at ``fps``.

    ``start_fraction`` in [0, 1) places the window among all possible starts (0: the first frame).

    Raises:
        ClipError: when the video is too short for the window.
    """
    step = source_fps / fps
    span = round((num_frames - 1) * step) + 1  # source frames covered by the window
    if span > total_frames:
        raise ClipError(
            f"{num_frames} frames at {fps:g} fps span {span} source frames at {source_fps:g} fps, "
            f"but the video has {total_frames}"
        )
    start = min(int(start_fraction * (total_frames - span + 1)), total_frames - span)
    return [start + round(i * step) for i in range(num_frames)]


def decode_frames(path: PathLike, indices: list[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (sorted, may repeat): ``(len(indices), H, W, 3)`` uint8 RGB.

    Decoding stops after the last wanted frame.
    """
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
    except (av.error.FFmpegError, IndexError) as err:
        raise ClipError(f"cannot decode video {path}: {err}") from err
    if len(found) != len(wanted):
        missing = sorted(set(wanted) - set(found))
        raise ClipError(
            f"video {path} ended before frame {missing[0]} (decoded {len(found)} of {len(wanted)})"
        )
    return np.stack([found[i] for i in indices])


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> ``(3, F, height, width)`` float32 in [-1, 1].

    Scaled (antialiased bilinear) so the frame covers the bucket, then centre-cropped: no letterbox
    borders in the training targets.
    """
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (F, 3, H, W)
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
    if (new_h, new_w) != (h, w):
        video = F.interpolate(
            video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    video = video[:, :, top : top + height, left : left + width].clamp(0.0, 1.0)
    return (video * 2.0 - 1.0).permute(1, 0, 2, 3).contiguous()


def read_training_clip(
    path: PathLike, num_frames: int, fps: float, height: int, width: int, start_fraction: float
) -> torch.Tensor:
    """A training clip ``(3, num_frames, height, width)`` in [-1, 1] from the video at ``path``."""
    try:
        info = probe_video(path)
    except (ValueError, FileNotFoundError) as err:
        raise ClipError(str(err)) from err
    indices = clip_frame_indices(info.num_frames, info.fps, num_frames, fps, start_fraction)
    return resize_center_crop(decode_frames(path, indices), height, width)


def read_subject_mask(
    path: PathLike,
    video: PathLike,
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    start_fraction: float,
) -> torch.Tensor:
    """The subject mask ``(num_frames, height, width)`` bool of the training clip that
    :func:`read_training_clip` reads from ``video`` with the same arguments: the same frames, resized and
    cropped alike, then brighter than mid grey -> True.

    Raises:
        ClipError: when the mask video is unreadable or its frame count, rate or size differ from the video's.
    """
    try:
        info, mask_info = probe_video(video), probe_video(path)
    except (ValueError, FileNotFoundError) as err:
        raise ClipError(str(err)) from err
    facts = ("num_frames", "fps", "height", "width")
    differ = [
        f"{k} {getattr(mask_info, k)} (the video: {getattr(info, k)})"
        for k in facts
        if getattr(mask_info, k) != getattr(info, k)
    ]
    if differ:
        raise ClipError(f"subject mask {path} must have the video's frames: it has " + ", ".join(differ))
    indices = clip_frame_indices(info.num_frames, info.fps, num_frames, fps, start_fraction)
    grey = resize_center_crop(decode_frames(path, indices), height, width).mean(dim=0)  # (F, H, W) in [-1, 1]
    return grey > 0.0
