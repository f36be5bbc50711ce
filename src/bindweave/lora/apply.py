"""Fusing the ``--lora`` LoRAs into a loaded pipeline's DiT, through diffusers' own LoRA methods."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .config import LoraSpec, resolve_lora_file

logger = logging.getLogger(__name__)

__all__ = ["apply_loras"]


def apply_loras(pipe, specs: Sequence[LoraSpec]) -> list[str]:
    """Load each LoRA as an adapter, weight it by its scale, fuse them all into the DiT, and drop the adapters.

    ``load_lora_weights`` -> ``set_adapters(names, scales)`` -> ``fuse_lora`` -> ``unload_lora_weights``: the
    DiT keeps plain linear layers holding ``W + sum_i scale_i * (alpha_i / rank_i) * up_i @ down_i`` (in the
    weights' dtype), so every speed and memory option runs on it as on the base model, at its speed. Call it
    before those options are applied. Returns the adapter names, in order.
    """
    names = [f"lora_{i}" for i in range(len(specs))]  # PEFT adapter names: no dots (module-dict keys)
    if not names:
        return names
    for name, spec in zip(names, specs, strict=True):
        pipe.load_lora_weights(str(resolve_lora_file(spec.path)), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
    pipe.fuse_lora(components=["transformer"], adapter_names=names)
    pipe.unload_lora_weights()
    logger.info("fused %d LoRA(s) into the DiT: %s", len(specs), ", ".join(str(s) for s in specs))
    return names
