"""OpenS2V-Eval scoring: per-video metrics, their aggregation and the ``eval score`` job.

Names are imported lazily so that the light parts (weights and normalisation, the chat client) do not
pull in torch, transformers or the video decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bindweave._lazy import lazy_getattr

if TYPE_CHECKING:
    from bindweave.eval.chat import ChatClient, ChatEndpointError
    from bindweave.eval.motion import motion_amplitude
    from bindweave.eval.score import run_score
    from bindweave.eval.score_config import EvalScoreConfig
    from bindweave.eval.scorers.base import MissingModelFileError, Scored, VideoSample
    from bindweave.eval.scores import (
        METRICS,
        TotalScore,
        aggregate,
        normalize_metric,
        total_score,
        weights_for,
    )

_EXPORTS = {
    "ChatClient": "chat",
    "ChatEndpointError": "chat",
    "motion_amplitude": "motion",
    "EvalScoreConfig": "score_config",
    "run_score": "score",
    "MissingModelFileError": "scorers.base",
    "Scored": "scorers.base",
    "VideoSample": "scorers.base",
    "METRICS": "scores",
    "TotalScore": "scores",
    "aggregate": "scores",
    "normalize_metric": "scores",
    "total_score": "scores",
    "weights_for": "scores",
}

__all__ = [
    "ChatClient",
    "ChatEndpointError",
    "EvalScoreConfig",
    "METRICS",
    "MissingModelFileError",
    "Scored",
    "TotalScore",
    "VideoSample",
    "aggregate",
    "motion_amplitude",
    "normalize_metric",
    "run_score",
    "total_score",
    "weights_for",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
