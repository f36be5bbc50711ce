"""The choices of the speed and memory options.

A leaf module: :mod:`.config` and the modules that apply each option (:mod:`.caching`, :mod:`.memory`,
:mod:`.parallel`, :mod:`.speed`) import it, so they no longer import one another in a circle.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "RING_ATTENTION_BACKENDS",
    "AttentionBackend",
    "ContextParallelKind",
    "MemoryMode",
    "Precision",
    "StepCacheKind",
]

MemoryMode = Literal["none", "model-offload", "group-offload", "sequential"]
Precision = Literal["float32", "released"]
StepCacheKind = Literal["none", "first-block", "mag", "taylorseer"]
ContextParallelKind = Literal["none", "ulysses", "ring"]
# Ring attention merges partial softmaxes with their log-sum-exp, which these backends return
# (PyTorch's default SDPA path, "native", does not).
RING_ATTENTION_BACKENDS = ("_native_cudnn", "_native_flash", "flash", "sage")
# The diffusers attention backends that make sense here (hub variants download kernels at first use).
AttentionBackend = Literal[
    "native",
    "flash",
    "_flash_3",
    "sage",
    "flex",
    "xformers",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "_native_math",
]
