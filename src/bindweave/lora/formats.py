"""The key layouts Wan LoRA files come in, read into one form: low-rank layers and whole-tensor deltas.

Every tool that writes Wan LoRAs names the same layers its own way; each stored key is one of:

- a low-rank pair of a linear layer: ``lora_down`` / ``lora_up`` (ComfyUI, LightX2V, musubi-tuner) or
  ``lora_A`` / ``lora_B`` (diffusion-pipe, ai-toolkit, DiffSynth, PEFT), with an optional scalar ``alpha``
  (the pair's update is ``alpha / rank * up @ down``, alpha defaulting to the rank);
- a whole-tensor delta, added as it is: ``<layer>.diff`` to the weight, ``<layer>.diff_b`` to the bias,
  ``blocks.N.diff_m`` / ``head.diff_m`` to the ``modulation`` table (ComfyUI's ``LoraSave`` extracts and
  full-diff files, LightX2V's extractor and its step-distillation LoRAs).

The layer names: the original Wan ones (``blocks.0.self_attn.q``) behind ``diffusion_model.`` /
``model.diffusion_model.`` or bare (DiffSynth); musubi-tuner's with underscores (``lora_unet_blocks_0_
self_attn_q``; Wan-Fun's ``lora_unet__``, as ComfyUI's ``convert_lora_wan_fun`` reads it); or diffusers'
(``transformer.blocks.0.attn1.to_q``, or bare as ``save_lora_adapter`` writes them). Original names are
renamed with diffusers' own Wan renaming (``convert_wan_transformer_to_diffusers``, run on names only),
BindWeave's connector from its ComfyUI name ``text_projection.0`` / ``.2``.

:func:`read_lora_contents` returns a :class:`LoraContents`: diffusers layer / parameter names, each low-rank
pair with its ``alpha / rank`` folded into ``down`` (so PEFT loads it with scaling 1), every delta as
stored, and every stored key it could not read, which the caller refuses or skips (never drops silently).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

__all__ = [
    "CONNECTOR_MODULES",
    "LoraContents",
    "LoraError",
    "original_to_diffusers",
    "read_lora_contents",
    "underscore_to_original",
]

_ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_MUSUBI_PREFIXES = ("lora_unet__", "lora_unet_")  # Wan-Fun's double underscore first
_DIFFUSERS_PREFIX = "transformer."
#: BindWeave's MLLM connector: its ComfyUI / original name (ComfyUI-WanVideoWrapper's
#: ``nn.Sequential(Linear, GELU, Linear)``) -> ours.
CONNECTOR_MODULES = {
    "text_projection.0": "condition_embedder.text_projector.linear_1",
    "text_projection.2": "condition_embedder.text_projector.linear_2",
}
# The stored parts of a key, after its layer name.
_DOWN = ("lora_down.weight", "lora_A.weight")
_UP = ("lora_up.weight", "lora_B.weight")
_PARTS = (*_DOWN, *_UP, "lora_B.bias", "alpha", "diff", "diff_b", "diff_m")
_PART = re.compile(r"^(?P<layer>.+?)\.(?P<part>" + "|".join(re.escape(p) for p in _PARTS) + r")$")
# Names only the original Wan layout has (bare keys are told apart by these).
_ORIGINAL_MARKERS = re.compile(
    r"(^|\.)(self_attn|cross_attn|ffn\.[02]|norm3|modulation|head\.head|text_embedding|time_embedding|"
    r"time_projection|img_emb|text_projection)(\.|$)|(^|\.)diff_m$"
)
# musubi-tuner's underscore names -> original Wan names.
_UNDERSCORE = [
    (re.compile(r"^blocks_(\d+)_(self_attn|cross_attn)_(.+)$"), r"blocks.\1.\2.\3"),
    (re.compile(r"^blocks_(\d+)_ffn_(\d+)$"), r"blocks.\1.ffn.\2"),
    (re.compile(r"^blocks_(\d+)_(.+)$"), r"blocks.\1.\2"),
    (re.compile(r"^img_emb_proj_(\d+)$"), r"img_emb.proj.\1"),
    (re.compile(r"^head_head$"), "head.head"),
    (re.compile(r"^(text_embedding|time_embedding|time_projection|text_projection)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^(patch_embedding)$"), r"\1"),
]


class LoraError(ValueError):
    """A LoRA that cannot be applied to the BindWeave DiT; the message names its first offending keys."""


@dataclass
class LoraContents:
    """A LoRA file in diffusers names: what PEFT holds, what is added as it is, and what was not understood."""

    low_rank: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """``{layer: (down (r, in) with alpha / r folded in, up (out, r))}``."""
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    """``{layer: lora_B.bias}`` of PEFT files (``lora_bias=True``), already times PEFT's scaling."""
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    """``{parameter: delta}``, added as ``param += scale * delta``."""
    unreadable: list[str] = field(default_factory=list)
    """Stored keys that name no Wan layer this reader knows, or hold a part it cannot use."""
    sources: dict[str, list[str]] = field(default_factory=dict)
    """``{layer or parameter: the stored keys it came from}``, to name them in errors."""


def underscore_to_original(name: str) -> str | None:
    """musubi-tuner's ``blocks_0_self_attn_q`` -> ``blocks.0.self_attn.q``; ``None`` for an unknown name."""
    for pattern, replacement in _UNDERSCORE:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return None


def original_to_diffusers(parameter: str) -> str:
    """An original Wan parameter name in diffusers' layout (``blocks.0.norm3.weight`` -> ``blocks.0.norm2.weight``)."""
    for theirs, ours in CONNECTOR_MODULES.items():
        if parameter.startswith(theirs + "."):
            return ours + parameter.removeprefix(theirs)
    (renamed,) = convert_wan_transformer_to_diffusers({parameter: None})
    return renamed


def _peft_scaling(config: Mapping[str, Any] | None, rank: int) -> float:
    """PEFT's ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA) of a diffusers / PEFT file; 1 without a config."""
    if not config:
        return 1.0
    patterns = [name for name in ("rank_pattern", "alpha_pattern") if config.get(name)]
    if patterns or config.get("use_dora"):
        raise LoraError(f"its PEFT config uses {', '.join(patterns) or 'use_dora'}, which is not supported")
    alpha = float(config.get("lora_alpha", config.get("r", rank)))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _split(stored: Mapping[str, torch.Tensor]) -> tuple[dict[tuple[str, str], str], list[str], set[str]]:
    """``{(diffusers layer, part): stored key}``, the keys not read, and the keys stored under diffusers'
    names. For ``diff_m`` the "layer" is the modulation parameter itself (``blocks.0.diff_m`` ->
    ``blocks.0.scale_shift_table``)."""
    keys = list(stored)
    bare = [k for k in keys if not k.startswith((*_ORIGINAL_PREFIXES, *_MUSUBI_PREFIXES, _DIFFUSERS_PREFIX))]
    bare_are_original = any(_ORIGINAL_MARKERS.search(k) for k in bare)
    parts: dict[tuple[str, str], str] = {}
    unreadable, diffusers_named = [], set()
    for key in keys:
        prefix = next(
            (p for p in (*_ORIGINAL_PREFIXES, *_MUSUBI_PREFIXES, _DIFFUSERS_PREFIX) if key.startswith(p)), ""
        )
        match = _PART.match(key.removeprefix(prefix))
        if match is None:
            unreadable.append(key)
            continue
        layer, part = match["layer"], match["part"]
        if prefix in _MUSUBI_PREFIXES:
            layer = underscore_to_original(layer)
        if layer is None:
            unreadable.append(key)
            continue
        if prefix != _DIFFUSERS_PREFIX and (prefix or bare_are_original):
            suffix = ".modulation" if part == "diff_m" else ".weight"
            layer = original_to_diffusers(layer + suffix).removesuffix(".weight")
        else:
            diffusers_named.add(key)
        if (layer, part) in parts:
            unreadable.append(key)  # the same layer twice (e.g. lora_down and lora_A): ambiguous
            continue
        parts[(layer, part)] = key
    return parts, unreadable, diffusers_named


def read_lora_contents(
    stored: Mapping[str, torch.Tensor], peft_config: Mapping[str, Any] | None = None
) -> LoraContents:
    """A LoRA's tensors (any layout above) in diffusers names, each low-rank pair's scale folded into ``down``.

    Args:
        stored: the tensors as stored in the file.
        peft_config: the PEFT config of a diffusers / PEFT file (its metadata), for its ``lora_alpha / r``.
    """
    parts, unreadable, diffusers_named = _split(stored)
    contents = LoraContents(unreadable=list(unreadable))
    layers = {layer for layer, _ in parts}
    for layer in sorted(layers):
        found = {part: parts[(layer, part)] for part in _PARTS if (layer, part) in parts}
        down_key = next((found.pop(p) for p in _DOWN if p in found), None)
        up_key = next((found.pop(p) for p in _UP if p in found), None)
        alpha_key = found.pop("alpha", None)
        if down_key is not None and up_key is not None:
            down, up = stored[down_key], stored[up_key]
            if alpha_key is None and down_key in diffusers_named:  # a PEFT file: its config's scaling
                scale = _peft_scaling(peft_config, down.shape[0])
            else:
                alpha = stored[alpha_key].item() if alpha_key is not None else down.shape[0]
                scale = alpha / down.shape[0]
            contents.low_rank[layer] = (down.float() * scale if scale != 1.0 else down, up)
            contents.sources[layer] = [k for k in (down_key, up_key, alpha_key) if k]
            bias_key = found.pop("lora_B.bias", None)
            if bias_key is not None:  # PEFT's lora_bias: merged as bias += scaling * lora_B.bias
                contents.biases[layer] = stored[bias_key].float() * _peft_scaling(peft_config, down.shape[0])
                contents.sources[layer].append(bias_key)
        else:
            # One matrix of a pair, or an alpha for no pair: nothing a tool could apply.
            contents.unreadable += [k for k in (down_key, up_key, alpha_key) if k]
        targets = {"diff": ".weight", "diff_b": ".bias", "diff_m": ".modulation"}
        for part, suffix in targets.items():
            key = found.pop(part, None)
            if key is None:
                continue
            parameter = layer if part == "diff_m" else layer + suffix
            contents.deltas[parameter] = stored[key]
            contents.sources[parameter] = [key]
        contents.unreadable += list(found.values())  # lora_B.bias without its pair
    contents.unreadable.sort()
    return contents
