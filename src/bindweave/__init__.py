"""BindWeave: subject-consistent video generation on PyTorch + diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bindweave._lazy import lazy_getattr
from bindweave._logging import quiet_library_warnings

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models import BindWeaveTransformer3DModel
    from .pipeline import BindWeavePipeline

# Imported on first use, so `import bindweave` (and the CLI's start-up) stays light.
_EXPORTS = {"BindWeavePipeline": "pipeline", "BindWeaveTransformer3DModel": "models"}
__all__ = ["BindWeavePipeline", "BindWeaveTransformer3DModel"]


__getattr__ = lazy_getattr(__name__, _EXPORTS)

quiet_library_warnings()
