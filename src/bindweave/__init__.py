"""BindWeave: subject-consistent video generation on PyTorch + diffusers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models import BindWeaveTransformer3DModel
    from .pipeline import BindWeavePipeline

# Imported on first use, so `import bindweave` (and the CLI's start-up) stays light.
_EXPORTS = {"BindWeavePipeline": "pipeline", "BindWeaveTransformer3DModel": "models"}
__all__ = ["BindWeavePipeline", "BindWeaveTransformer3DModel"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
