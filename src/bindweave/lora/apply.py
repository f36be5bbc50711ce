"""Fusing the ``--lora`` LoRAs into a loaded pipeline's DiT, through diffusers' own LoRA methods."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .config import LoraSpec, resolve_lora_file

logger = logging.getLogger(__name__)

__all__ = ["apply_loras", "lora_adapter_name"]


def lora_adapter_name(index: int) -> str:
    """The adapter name of the ``index``-th ``--lora`` (PEFT adapter names: no dots, module-dict keys)."""
    return f"lora_{index}"


def apply_loras(pipe, specs: Sequence[LoraSpec], skip_unknown_keys: bool = False) -> dict[str, list[str]]:
    """Load each LoRA as an adapter, weight it by its scale, fuse them all into the DiT, and drop the adapters.

    ``load_lora_weights`` -> ``set_adapters(names, scales)`` -> ``fuse_lora`` -> ``unload_lora_weights``: the
    DiT keeps plain layers holding ``W + sum_i scale_i * delta_i`` (low-rank ``(alpha_i / rank_i) * up_i @
    down_i``, or a whole-tensor ``diff``), so every speed and memory option runs on it as on the base model,
    at its speed. Call it before those options are applied.

    Returns:
        ``{LoRA file: the stored keys skipped}`` for each LoRA that had some (only with ``skip_unknown_keys``;
        otherwise a key that fits no parameter of the DiT is an error).
    """
    names = [lora_adapter_name(i) for i in range(len(specs))]
    if not names:
        return {}
    files = [resolve_lora_file(spec.path) for spec in specs]
    for name, file in zip(names, files, strict=True):
        pipe.load_lora_weights(str(file), adapter_name=name, skip_unknown_keys=skip_unknown_keys)
    skipped = {str(file): pipe.lora_skipped_keys[name] for name, file in zip(names, files, strict=True)
               if pipe.lora_skipped_keys.get(name)}  # fmt: skip
    pipe.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
    pipe.fuse_lora(components=["transformer"], adapter_names=names)
    pipe.unload_lora_weights()
    logger.info("fused %d LoRA(s) into the DiT: %s", len(specs), ", ".join(str(s) for s in specs))
    return skipped
