"""The page's pipeline: loaded once, reloaded when the memory mode changes."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from ...generate import ModelConfig, load_pipeline
from .inputs import UIError, memory_modes

logger = logging.getLogger(__name__)


def with_memory(config: ModelConfig, mode: str) -> ModelConfig:
    """``config`` with the memory mode chosen in the page (a copy; the launch config stays untouched)."""
    if mode not in memory_modes():
        raise UIError(f"Unknown memory mode {mode!r}; choose one of {', '.join(memory_modes())}.")
    return dataclasses.replace(config, memory=mode)


def model_config_of(config: ModelConfig) -> ModelConfig:
    """Only the :class:`ModelConfig` part of a larger config (e.g. the launcher's)."""
    return ModelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig)})


class PipelineLoader:
    """Loads the pipeline once and keeps it; a different memory mode reloads it (freeing the old one first).

    Calls are serialised by a lock, so two events can never load two copies of a 14B model at once.
    """

    def __init__(self, config: ModelConfig, load: Callable[[ModelConfig], Any] = load_pipeline) -> None:
        self.config = model_config_of(config)
        self._load = load
        self._pipe: Any = None
        self._mode: str | None = None
        self._lock = threading.Lock()

    def __call__(self, memory: str | None = None) -> Any:
        mode = memory or self.config.memory
        with self._lock:
            if self._pipe is None or mode != self._mode:
                if self._pipe is not None:
                    logger.info("memory mode %s -> %s: reloading the pipeline", self._mode, mode)
                    self._pipe = self._mode = None
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                self._pipe = self._load(with_memory(self.config, mode))
                self._mode = mode
            return self._pipe
