"""LoRA files and their keys: what ``BindWeavePipeline.load_lora_weights`` reads, converts and checks.

:mod:`.formats` reads every Wan LoRA layout into diffusers names (:class:`~.formats.LoraContents`); this
module turns that into the state dict ``load_lora_weights`` takes and checks it against the DiT:

- low-rank layers as PEFT keys, ``transformer.<layer>.lora_A.weight`` / ``lora_B.weight`` (``lora_B.bias``
  for PEFT's ``lora_bias``), with the scale folded into ``lora_A`` (PEFT then loads them at scaling 1);
- whole-tensor deltas (``diff``, ``diff_b``, ``diff_m``), which PEFT cannot hold, as
  ``transformer.<parameter>.lora_diff``; :mod:`.deltas` adds them to the parameters.

diffusers' own Wan conversion (``_convert_non_diffusers_wan_lora_to_diffusers``) is not used for the stored
keys: it drops norm ``diff`` / ``diff_b``, ``diff_m``, ``patch_embedding.diff`` and every ``.diff`` of a
full-diff file (logged at INFO at most), and refuses top-level ``alpha`` keys, attention-only musubi files,
``head.head.diff`` without ``diff_b`` and ``k_img`` without ``v_img``, all of which ComfyUI or LightX2V load.

A key that names no parameter of the DiT, or whose shape does not fit, is an error naming the first keys
(:func:`match_lora_to_model`), or, when asked for, skipped and named (never silently).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .formats import CONNECTOR_MODULES, LoraContents, LoraError

__all__ = [
    "CONNECTOR_MODULES",
    "DELTA_PART",
    "LoraError",
    "adapter_config",
    "lora_state_dict_of",
    "match_lora_to_model",
    "original_module_name",
    "read_lora_file",
    "split_state_dict",
]

ORIGINAL_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
#: The key part of a whole-tensor delta in the converted state dict: ``transformer.<parameter>.lora_diff``
#: (it must hold "lora": diffusers' ``load_lora_weights`` checks every key does).
DELTA_PART = "lora_diff"
_CONVERTED_KEY = re.compile(
    r"^transformer\.(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_diff)$"
)
_SHOWN = 5  # keys named in an error message

# Original Wan module names of the diffusers ones (the inverse of diffusers' single-file rename of Wan),
# for exporting LoRAs; blocks.N.* are matched by _BLOCK_MODULE.
_TOP_LEVEL_ORIGINAL = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "proj_out": "head.head",
    **{ours: theirs for theirs, ours in CONNECTOR_MODULES.items()},
}
_BLOCK_ORIGINAL = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_BLOCK_MODULE = re.compile(r"^blocks\.(?P<index>\d+)\.(?P<rest>.+)$")


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def original_module_name(module: str) -> str | None:
    """The original Wan / ComfyUI name of a DiT linear layer (``blocks.0.attn1.to_q`` -> ``blocks.0.self_attn.q``).

    ``None`` for a layer that has none diffusers converts back (e.g. the patch embedding, a convolution).
    """
    if module in _TOP_LEVEL_ORIGINAL:
        return _TOP_LEVEL_ORIGINAL[module]
    match = _BLOCK_MODULE.match(module)
    if match and match["rest"] in _BLOCK_ORIGINAL:
        return f"blocks.{match['index']}.{_BLOCK_ORIGINAL[match['rest']]}"
    return None


# ---------------------------------------------------------------------------------------------- reading


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors of a ``.safetensors`` LoRA and its PEFT config (diffusers' ``lora_adapter_metadata``), if any."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise LoraError(f"{path} is not a readable .safetensors file: {err}") from err
    config = metadata.get(LORA_ADAPTER_METADATA_KEY)
    return state_dict, (json.loads(config) if config else None)


def adapter_config(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """A LoRA's PEFT config under bare names (``r``, ``lora_alpha``...), whichever way it was saved."""
    if not metadata:
        return None
    if any(k.startswith(DIFFUSERS_PREFIX) for k in metadata):
        return {
            k.removeprefix(DIFFUSERS_PREFIX): v for k, v in metadata.items() if k.startswith(DIFFUSERS_PREFIX)
        }
    return dict(metadata)


# ---------------------------------------------------------------------------------------------- converting


def lora_state_dict_of(contents: LoraContents) -> dict[str, torch.Tensor]:
    """The state dict ``load_lora_weights`` takes: PEFT keys for the low-rank layers, ``lora_diff`` for deltas.

    Raises:
        LoraError: the file holds keys no Wan layer reads (named), or nothing at all.
    """
    if contents.unreadable:
        raise LoraError(
            f"{len(contents.unreadable)} keys are no LoRA part of a Wan DiT layer (lora_down / lora_up / "
            f"lora_A / lora_B / alpha / diff / diff_b / diff_m): {_first(contents.unreadable)}"
        )
    converted: dict[str, torch.Tensor] = {}
    for module, (down, up) in contents.low_rank.items():
        converted[f"{DIFFUSERS_PREFIX}{module}.lora_A.weight"] = down
        converted[f"{DIFFUSERS_PREFIX}{module}.lora_B.weight"] = up
        if module in contents.biases:
            converted[f"{DIFFUSERS_PREFIX}{module}.lora_B.bias"] = contents.biases[module]
    for parameter, delta in contents.deltas.items():
        converted[f"{DIFFUSERS_PREFIX}{parameter}.{DELTA_PART}"] = delta
    if not converted:
        raise LoraError("it holds no LoRA tensors")
    return converted


def split_state_dict(
    converted: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(PEFT keys, {parameter: delta})`` of a converted state dict.

    Raises:
        LoraError: naming the keys that are neither (e.g. an unconverted key passed in a dict).
    """
    peft: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    bad = []
    for key, tensor in converted.items():
        match = _CONVERTED_KEY.match(key)
        if match is None:
            bad.append(key)
        elif match["part"] == DELTA_PART:
            deltas[match["module"]] = tensor
        else:
            peft[key] = tensor
    if bad:
        raise LoraError(
            f"{len(bad)} of its {len(converted)} keys are not converted LoRA keys "
            f"(transformer.<layer>.lora_A / lora_B / lora_diff): {_first(sorted(bad))}"
        )
    return peft, deltas


def _parameter_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The DiT's parameter shapes by name, PEFT's ``base_layer`` taken out (a layer that holds adapters)."""
    return {name.replace(".base_layer.", "."): tuple(p.shape) for name, p in transformer.named_parameters()
            if ".lora_" not in name}  # fmt: skip


def match_lora_to_model(
    converted: Mapping[str, torch.Tensor],
    transformer: torch.nn.Module,
    skip_unknown: bool = False,
    sources: Mapping[str, list[str]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check every LoRA layer and delta against ``transformer``; returns the state dict to load and the keys
    skipped (only with ``skip_unknown``).

    A low-rank layer must name a linear layer with its shapes (``A (r, in)``, ``B (out, r)``, ``bias (out,)``),
    a delta a parameter of its shape.

    Args:
        sources: ``{layer or parameter: the stored keys it came from}``, so errors name the file's keys.

    Raises:
        LoraError: naming the first keys that match nothing, and the first whose shapes differ (unless
            ``skip_unknown``).
    """
    sources = sources or {}

    def stored(module: str, part: str | None = None) -> list[str]:
        return sources.get(module) or [f"{DIFFUSERS_PREFIX}{module}" + (f".{part}" if part else "")]

    layers = dict(transformer.named_modules())
    shapes = _parameter_shapes(transformer)
    unknown, mismatched, skipped_modules = [], [], set()
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in converted.items():
        match = _CONVERTED_KEY.match(key)
        if match is None:
            raise LoraError(f"not a converted LoRA key: {key}")
        modules.setdefault(match["module"], {})[match["part"]] = tensor
    for module, parts in sorted(modules.items()):
        if DELTA_PART in parts:
            delta = parts[DELTA_PART]
            if module not in shapes:
                unknown += stored(module, DELTA_PART)
            elif tuple(delta.shape) != shapes[module]:
                mismatched.append(
                    f"{stored(module)[0]}: LoRA {list(delta.shape)} vs DiT {list(shapes[module])}"
                )
            else:
                continue
            skipped_modules.add(module)
            continue
        layer = layers.get(module)
        layer = getattr(layer, "base_layer", layer)  # a layer that holds adapters already (PEFT)
        if not isinstance(layer, torch.nn.Linear):
            unknown += stored(module)
            skipped_modules.add(module)
            continue
        rank = parts["lora_A.weight"].shape[0]
        expected = {
            "lora_A.weight": (rank, layer.in_features),
            "lora_B.weight": (layer.out_features, rank),
            "lora_B.bias": (layer.out_features,),
        }
        for part, tensor in parts.items():
            if tuple(tensor.shape) != expected[part]:
                mismatched.append(
                    f"{module}.{part} (from {stored(module)[0]}): LoRA {list(tensor.shape)} vs DiT "
                    f"{list(expected[part])}"
                )
                skipped_modules.add(module)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys match no parameter of the DiT: {_first(sorted(unknown))}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ from the DiT's: {_first(mismatched)}")
    if problems and not skip_unknown:
        raise LoraError("; ".join(problems))
    kept = {k: v for k, v in converted.items() if _CONVERTED_KEY.match(k)["module"] not in skipped_modules}
    skipped = sorted(k for k in converted if k not in kept)
    return kept, skipped
