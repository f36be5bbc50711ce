"""LoRA files and their keys: what ``BindWeavePipeline.load_lora_weights`` reads, converts and checks.

The formats are diffusers' for Wan (``WanLoraLoaderMixin``):

- diffusers / PEFT keys, ``transformer.blocks.0.attn1.to_q.lora_A.weight`` (``save_lora_weights``), or
  without the ``transformer.`` prefix as ``save_lora_adapter`` (and so ``bindweave train``) writes them;
- the original Wan / ComfyUI keys, ``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` with
  ``lora_up`` and a scalar ``alpha`` (also ``lora_A`` / ``lora_B``, ``diff_b`` biases): LightX2V's LoRAs,
  and most LoRAs made for Wan2.1 in ComfyUI or musubi-tuner (``lora_unet_*``).

diffusers converts them (``_convert_non_diffusers_wan_lora_to_diffusers``, reached through
``WanLoraLoaderMixin.lora_state_dict``). BindWeave adds one thing: its MLLM connector, called
``text_projection.0`` / ``text_projection.2`` in ComfyUI (``nn.Sequential(Linear, GELU, Linear)``, as in
ComfyUI-WanVideoWrapper's BindWeave loader), which diffusers' converter does not know; its keys are converted
here, the same way (``alpha / rank`` folded into ``lora_down``).

diffusers silently skips keys that match no layer (a warning at best), so a LoRA for another model would
change nothing. :func:`check_lora_keys` and :func:`check_lora_against_model` make that an error naming the
first keys.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

__all__ = [
    "CONNECTOR_MODULES",
    "LoraError",
    "adapter_config",
    "check_lora_against_model",
    "check_lora_keys",
    "component_metadata",
    "convert_lora_keys",
    "lora_modules",
    "original_module_name",
    "read_lora_file",
]

ORIGINAL_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
#: BindWeave's MLLM connector: its ComfyUI / original name -> ours.
CONNECTOR_MODULES = {
    "text_projection.0": "condition_embedder.text_projector.linear_1",
    "text_projection.2": "condition_embedder.text_projector.linear_2",
}
#: The three tensors of a converted LoRA layer (``lora_B.bias`` from ``diff_b``).
LORA_PARTS = ("lora_A.weight", "lora_B.weight", "lora_B.bias")
_CONVERTED_KEY = re.compile(
    r"^transformer\.(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias)$"
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


class LoraError(ValueError):
    """A LoRA that cannot be applied to the BindWeave DiT; the message names its first offending keys."""


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


def component_metadata(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """A LoRA's PEFT config as ``load_lora_weights`` takes it: keyed ``transformer.<name>``.

    diffusers' ``save_lora_weights`` (a pipeline) writes it so; ``save_lora_adapter`` (a model, and
    ``bindweave train``) writes bare names, which diffusers would silently ignore (and load ``alpha = r``).
    """
    if not metadata or any(k.startswith(DIFFUSERS_PREFIX) for k in metadata):
        return metadata
    return {DIFFUSERS_PREFIX + k: v for k, v in metadata.items()}


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


def _convert_connector(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pop the connector's original-format keys from ``original`` (``diffusion_model.`` stripped) and convert them.

    As diffusers converts the DiT's: ``alpha / rank`` is folded into ``lora_A``, ``diff_b`` becomes
    ``lora_B.bias``.
    """
    converted: dict[str, torch.Tensor] = {}
    for theirs, ours in CONNECTOR_MODULES.items():
        down = original.pop(f"{theirs}.lora_down.weight", None)
        down = original.pop(f"{theirs}.lora_A.weight", down)
        up = original.pop(f"{theirs}.lora_up.weight", None)
        up = original.pop(f"{theirs}.lora_B.weight", up)
        alpha = original.pop(f"{theirs}.alpha", None)
        bias = original.pop(f"{theirs}.diff_b", None)
        if (down is None) != (up is None):
            raise LoraError(f"the connector layer {theirs} has only one of its two LoRA matrices")
        target = DIFFUSERS_PREFIX + ours
        if down is not None:
            scale = 1.0 if alpha is None else alpha.item() / down.shape[0]
            converted[f"{target}.lora_A.weight"] = down * scale if scale != 1.0 else down
            converted[f"{target}.lora_B.weight"] = up
        if bias is not None:
            converted[f"{target}.lora_B.bias"] = bias
    unknown = sorted(k for k in original if k.startswith("text_projection."))
    if unknown:
        raise LoraError(f"connector keys that are no LoRA layer of it: {_first(unknown)}")
    return converted


def _looks_like_unprefixed_peft(keys: list[str]) -> bool:
    """``save_lora_adapter``'s keys: PEFT names without the ``transformer.`` prefix diffusers filters on."""
    return bool(keys) and all(
        not k.startswith((DIFFUSERS_PREFIX, ORIGINAL_PREFIX, "lora_unet_"))
        and (".lora_A." in k or ".lora_B." in k)
        for k in keys
    )


def convert_lora_keys(
    state_dict: Mapping[str, torch.Tensor],
    convert_wan: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """A LoRA's keys in diffusers' converted form (``transformer.<layer>.lora_A.weight``), checked.

    Args:
        state_dict: the LoRA's tensors as stored.
        convert_wan: diffusers' conversion for Wan, ``WanLoraLoaderMixin.lora_state_dict`` on a dict.

    Raises:
        LoraError: the LoRA has keys diffusers cannot convert, or keys that are no LoRA layer after it.
    """
    state_dict = dict(state_dict)
    keys = sorted(state_dict)
    if not keys:
        raise LoraError("it holds no tensors")
    converted: dict[str, torch.Tensor] = {}
    if any(k.startswith(ORIGINAL_PREFIX) for k in keys):
        # The connector is BindWeave's: take its keys out before diffusers converts the Wan ones.
        original = {k.removeprefix(ORIGINAL_PREFIX): v for k, v in state_dict.items()}
        converted = _convert_connector(original)
        state_dict = {ORIGINAL_PREFIX + k: v for k, v in original.items()}
    elif _looks_like_unprefixed_peft(keys):
        state_dict = {DIFFUSERS_PREFIX + k: v for k, v in state_dict.items()}
    if state_dict:
        try:
            converted.update(convert_wan(state_dict))
        except (ValueError, KeyError, IndexError, AttributeError, RuntimeError) as err:
            raise LoraError(
                f"diffusers cannot convert it as a Wan LoRA ({type(err).__name__}: {err}); its keys: {_first(keys)}"
            ) from err
    check_lora_keys(converted, keys)
    return converted


def check_lora_keys(converted: Mapping[str, torch.Tensor], stored_keys: list[str] | None = None) -> None:
    """Every converted key is ``transformer.<layer>.lora_A.weight`` / ``lora_B.weight`` / ``lora_B.bias``.

    Raises:
        LoraError: naming the first keys that are not (with the stored keys when nothing converted).
    """
    if not converted:
        raise LoraError(
            f"no key converts to a LoRA layer of the Wan DiT; its keys: {_first(stored_keys or [])}"
        )
    bad = sorted(k for k in converted if not _CONVERTED_KEY.match(k))
    if bad:
        raise LoraError(
            f"{len(bad)} of its {len(converted)} keys are not LoRA weights of a Wan DiT layer "
            f"(transformer.<layer>.lora_A / lora_B): {_first(bad)}"
        )


def lora_modules(converted: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Converted keys grouped by layer: ``{"blocks.0.attn1.to_q": {"lora_A.weight": A, ...}}``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in converted.items():
        match = _CONVERTED_KEY.match(key)
        if match is None:
            raise LoraError(f"not a converted LoRA key: {key}")
        modules.setdefault(match["module"], {})[match["part"]] = tensor
    return modules


# ---------------------------------------------------------------------------------------------- checking


def check_lora_against_model(converted: Mapping[str, torch.Tensor], transformer: torch.nn.Module) -> None:
    """Every LoRA layer names a linear layer of ``transformer`` and has its shapes: ``A (r, in)``, ``B (out, r)``.

    Raises:
        LoraError: naming the first keys that match no layer, and the first whose shapes differ.
    """
    layers = dict(transformer.named_modules())
    unknown, mismatched, incomplete = [], [], []
    for module, parts in sorted(lora_modules(converted).items()):
        layer = layers.get(module)
        layer = getattr(layer, "base_layer", layer)  # a layer that holds adapters already (PEFT)
        if not isinstance(layer, torch.nn.Linear):
            unknown += [f"{DIFFUSERS_PREFIX}{module}.{part}" for part in parts]
            continue
        down, up = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        if down is None or up is None:
            incomplete.append(module)
            continue
        rank = down.shape[0]
        expected = {
            "lora_A.weight": (rank, layer.in_features),
            "lora_B.weight": (layer.out_features, rank),
            "lora_B.bias": (layer.out_features,),
        }
        for part, tensor in parts.items():
            if tuple(tensor.shape) != expected[part]:
                mismatched.append(
                    f"{DIFFUSERS_PREFIX}{module}.{part}: LoRA {list(tensor.shape)} vs DiT {list(expected[part])}"
                )
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} of its {len(converted)} keys match no linear layer of the DiT: {_first(unknown)}"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ from the DiT's: {_first(mismatched)}")
    if incomplete:
        problems.append(f"layers with lora_A or lora_B missing: {_first(incomplete)}")
    if problems:
        raise LoraError("; ".join(problems))
