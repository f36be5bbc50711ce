"""The OpenS2V-Eval per-video scorers (one module each); see :mod:`bindweave.eval.scorers.base`."""

from bindweave.eval.scorers.base import (
    DEFAULT_NUM_FRAMES,
    MissingModelFileError,
    Scored,
    Scorer,
    VideoSample,
    category_of,
    require_files,
)

__all__ = [
    "DEFAULT_NUM_FRAMES",
    "MissingModelFileError",
    "Scored",
    "Scorer",
    "VideoSample",
    "category_of",
    "require_files",
]
