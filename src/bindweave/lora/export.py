"""``bindweave export-lora``: a LoRA trained by ``bindweave train`` as one ComfyUI / original-Wan ``.safetensors``.

``bindweave train`` (``trainable: lora``) saves PEFT adapters with diffusers' ``save_lora_adapter``: keys
``blocks.0.attn1.to_q.lora_A.weight`` and the PEFT config (rank, ``lora_alpha``) in the file's metadata.
ComfyUI (its ``LoraLoaderModelOnly`` node) and the Wan tools read the original Wan names instead:
``diffusion_model.blocks.0.self_attn.q.lora_down.weight``, ``lora_up``, and a scalar ``alpha`` whose
``alpha / rank`` is the scale. This writes that, with BindWeave's connector as ``text_projection.0`` /
``.2``, a PEFT ``lora_B.bias`` as ``diff_b``, and checks that the written keys read back (as ``--lora``
reads them) onto every layer they came from.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..io.files import atomic_write
from .config import ExportLoraConfig, resolve_lora_file
from .formats import read_lora_contents
from .keys import (
    CONNECTOR_MODULES,
    ORIGINAL_PREFIX,
    LoraError,
    adapter_config,
    original_module_name,
    read_lora_file,
)

logger = logging.getLogger(__name__)

__all__ = ["ExportedLora", "comfyui_lora_state_dict", "export_lora", "run_export_lora"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class ExportedLora:
    path: Path
    layers: int
    rank: int  # the largest rank of a layer
    scale: float  # alpha / rank of the layers (PEFT's scaling)


def _adapter_scale(config: dict[str, Any] | None, rank: int) -> float:
    """PEFT's scaling ``lora_alpha / r`` (``/ sqrt(r)`` for rsLoRA); 1 without a config, as diffusers loads it."""
    if config is None:
        return 1.0
    unsupported = [name for name in ("rank_pattern", "alpha_pattern") if config.get(name)]
    if config.get("use_dora"):
        unsupported.append("use_dora")
    if unsupported:
        raise LoraError(
            f"its PEFT config uses {', '.join(unsupported)}, which the ComfyUI format cannot hold"
        )
    alpha = float(config.get("lora_alpha", config.get("r", rank)))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def comfyui_lora_state_dict(
    stored: dict[str, torch.Tensor], config: dict[str, Any] | None, dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """The ComfyUI / original-Wan tensors of a diffusers / PEFT LoRA and its scale ``alpha / rank``.

    Every layer keeps its own matrices, with ``alpha = scaling * rank`` (ComfyUI's and our reader both apply
    ``alpha / rank * up @ down``, for block and top-level layers alike); a PEFT ``lora_B.bias`` is written as
    ``diff_b = scaling * bias``, the bias change of PEFT's merge, which ComfyUI adds as it is.

    Args:
        stored: the LoRA's tensors as ``save_lora_adapter`` wrote them (with or without ``transformer.``).
        config: its PEFT config (``lora_alpha``, ``r``...), from the file's metadata.
        dtype: the dtype of the written matrices (default: as stored); ``alpha`` is always float32.
    """
    contents = read_lora_contents(stored)  # no config: the matrices as stored, scaling 1
    if contents.unreadable or contents.deltas:
        raise LoraError(
            f"keys that are no PEFT LoRA layer: {', '.join((contents.unreadable or list(contents.deltas))[:5])}"
        )
    unnamed = sorted(m for m in contents.low_rank if original_module_name(m) is None)
    if unnamed:
        raise LoraError(f"layers without an original Wan name for ComfyUI: {', '.join(unnamed[:5])}")
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    out: dict[str, torch.Tensor] = {}
    scales = set()
    for module, (down, up) in sorted(contents.low_rank.items()):
        target = ORIGINAL_PREFIX + original_module_name(module)
        scale = _adapter_scale(config, down.shape[0])
        scales.add(scale)
        out[f"{target}.lora_down.weight"] = cast(down).contiguous()
        out[f"{target}.lora_up.weight"] = cast(up).contiguous()
        out[f"{target}.alpha"] = torch.tensor(scale * down.shape[0], dtype=torch.float32)
        if module in contents.biases:  # PEFT merges bias += scaling * lora_B.bias
            out[f"{target}.diff_b"] = cast(contents.biases[module].float() * scale).contiguous()
    _check_reimport(out, contents)
    connector = sorted(m for m in contents.low_rank if m in CONNECTOR_MODULES.values())
    if connector:
        logger.warning(
            "the LoRA trains the MLLM connector (%s): core ComfyUI has no BindWeave model and skips its "
            "text_projection.* keys; ComfyUI-WanVideoWrapper's BindWeave loader applies them",
            ", ".join(connector),
        )
    return out, max(scales)


def _check_reimport(out: dict[str, torch.Tensor], contents) -> None:
    """The written keys, read back as ``--lora`` reads them, give every layer and bias change of the adapter."""
    again = read_lora_contents({k: v.clone() for k, v in out.items()})
    expected_deltas = {f"{m}.bias" for m in contents.biases}
    if (
        again.unreadable
        or set(again.low_rank) != set(contents.low_rank)
        or set(again.deltas) != expected_deltas
    ):
        raise LoraError("the exported keys do not read back onto the adapter's layers")
    for module, (down, up) in contents.low_rank.items():
        back_down, back_up = again.low_rank[module]
        if back_down.shape != down.shape or back_up.shape != up.shape:
            raise LoraError(f"the exported {module} reads back with other shapes")


def export_lora(source: Path, out: Path, dtype: torch.dtype | None = None) -> ExportedLora:
    """Write the LoRA at ``source`` (a checkpoint, its ``lora/`` folder or the file) to ``out`` for ComfyUI."""
    file = resolve_lora_file(source)
    stored, metadata = read_lora_file(file)
    config = adapter_config(metadata)
    if config is None:
        logger.warning("%s has no PEFT config in its metadata: exported with scale 1 (alpha = rank)", file)
    try:
        tensors, scale = comfyui_lora_state_dict(stored, config, dtype)
    except LoraError as err:
        raise LoraError(f"LoRA {file}: {err}") from err
    with atomic_write(out) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "bindweave_export_of": file.name})
    ranks = [t.shape[0] for k, t in tensors.items() if k.endswith(".lora_down.weight")]
    return ExportedLora(path=Path(out), layers=len(ranks), rank=max(ranks), scale=scale)


def run_export_lora(config: ExportLoraConfig) -> ExportedLora:
    config.validate()
    exported = export_lora(config.lora, config.out, None if config.dtype == "keep" else _DTYPES[config.dtype])
    print(
        f"wrote {exported.path}: {exported.layers} LoRA layers, rank {exported.rank}, "
        f"alpha/rank {exported.scale:g} (ComfyUI: LoraLoaderModelOnly, strength 1.0)"
    )
    return exported
