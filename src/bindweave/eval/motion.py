"""MotionAmplitude: the OpenS2V-Eval v1.1 optical-flow motion score (spec section 7).

The score is deliberately *signed* before the final absolute value: Farneback flow is computed between
every pair of consecutive frames (all frames, no sampling), each flow map is shrunk with area
interpolation to 16 pixels wide, the maps are averaged over time, and the mean over all positions and
both components (dx and dy together) is taken. A pan therefore counts, while motions that cancel out
(left half moving right, right half moving left; or a diagonal move with dx = -dy) do not.

**(quirk)** The frames are RGB, but they are greyed with OpenCV's *BGR* weights, as the released
evaluation script does; we reproduce it so that scores are comparable with the leaderboard.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Farneback parameters of the released script (spec section 7).
FARNEBACK_PARAMS = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
#: Width the flow maps are shrunk to before averaging.
DOWNSCALE_WIDTH = 16


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MotionAmplitude needs OpenCV: install the 'eval' extra (opencv-python-headless)"
        ) from exc
    return cv2


def _grey(frame: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {frame.shape}")
    # (quirk) RGB frames greyed with the BGR weights, as in the released script.
    return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_BGR2GRAY)


def downscaled_size(height: int, width: int, target_width: int = DOWNSCALE_WIDTH) -> tuple[int, int]:
    """``(width, height)`` for ``cv2.resize``: width ``target_width``, height ``int(h * (16 / w))``."""
    return target_width, int(height * (target_width / width))


def flow_maps(frames: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """Yield the downscaled Farneback flow map ``(h16, 16, 2)`` of every consecutive frame pair."""
    cv2 = _cv2()
    prev = None
    for frame in frames:
        grey = _grey(frame)
        if prev is not None:
            if grey.shape != prev.shape:
                raise ValueError(f"frame size changed within the clip: {prev.shape} -> {grey.shape}")
            flow = cv2.calcOpticalFlowFarneback(prev, grey, None, **FARNEBACK_PARAMS)
            size = downscaled_size(*flow.shape[:2])
            yield cv2.resize(flow, size, interpolation=cv2.INTER_AREA)
        prev = grey


def signed_motion(frames: Iterable[np.ndarray]) -> float:
    """The mean of the time-averaged downscaled flow over positions and both components (signed)."""
    total: np.ndarray | None = None
    count = 0
    for small in flow_maps(frames):
        total = small.astype(np.float64) if total is None else total + small
        count += 1
    if total is None:
        raise ValueError("MotionAmplitude needs at least two frames")
    return float((total / count).mean())


def motion_amplitude(frames: Iterable[np.ndarray]) -> float:
    """MotionAmplitude of a clip given as RGB uint8 frames ``(F, H, W, 3)`` (all frames are used)."""
    return abs(signed_motion(frames))


class MotionAmplitudeScorer:
    """Scorer wrapper (no model): the raw per-video value, normalised later by ``min(|x|, 1)``."""

    name = "motion_amplitude"

    def __call__(self, sample) -> float:  # sample: bindweave.eval.scorers.base.VideoSample
        return motion_amplitude(sample.frames)
