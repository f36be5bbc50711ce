"""Kernel-level speed: the attention backend and regional compilation, through diffusers' APIs.

- ``set_attention_backend`` reaches every attention processor that has an ``_attention_backend``
  attribute: Wan's self-attention ``WanAttnProcessor`` and BindWeave's cross-attention processors, which
  pass it to ``dispatch_attention_fn`` (checked by :func:`attention_backends`). ``native`` is PyTorch SDPA
  (flash / memory-efficient / cuDNN kernels chosen by PyTorch); ``flash`` needs ``flash-attn``, ``sage``
  needs ``sageattention``, and diffusers raises a clear error when the package is missing.
- ``compile_repeated_blocks`` compiles each ``WanTransformerBlock`` once (regional compilation): the
  40 blocks share one compiled graph, so compilation takes seconds, not minutes.
"""

from __future__ import annotations

import torch

from .kinds import AttentionBackend

__all__ = ["AttentionBackend", "attention_backends", "compile_blocks", "set_attention_backend"]


def set_attention_backend(transformer: torch.nn.Module, backend: AttentionBackend) -> None:
    """Route every attention call of ``transformer`` (self and cross) through ``backend``."""
    transformer.set_attention_backend(backend)
    unset = {name for name, value in attention_backends(transformer).items() if value is None}
    if unset:
        raise RuntimeError(f"set_attention_backend({backend!r}) did not reach {sorted(unset)}")


def attention_backends(transformer: torch.nn.Module) -> dict[str, str | None]:
    """``{module name: backend}`` of every attention processor (``None``: diffusers' active default)."""
    backends = {}
    for name, module in transformer.named_modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            backends[name] = None if backend is None else str(getattr(backend, "value", backend))
    return backends


def compile_blocks(transformer: torch.nn.Module, fullgraph: bool = False) -> None:
    """``torch.compile`` each repeated DiT block (diffusers' ``compile_repeated_blocks``)."""
    transformer.compile_repeated_blocks(fullgraph=fullgraph)
