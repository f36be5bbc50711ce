"""Library log messages that bindweave users cannot act on, dropped at their source logger."""

from __future__ import annotations

import logging

# transformers, on first use of a `<Model>ImageProcessor` without torchvision (diffusers' Wan pipelines
# import CLIPImageProcessor). bindweave needs no torchvision: it reads only the CLIP processor's mean and
# std, which the PIL class it falls back to has too.
_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_FALLBACK not in record.getMessage()


def quiet_library_warnings() -> None:
    """Install the filters (idempotent). Costs no import: loggers exist before their library is loaded."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
