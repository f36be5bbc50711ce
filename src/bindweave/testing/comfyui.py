"""Single-file DiT checkpoints in the original Wan / ComfyUI layouts, written from a diffusers-layout BindWeave
DiT, for tests of :meth:`BindWeaveTransformer3DModel.from_single_file`.

The names are written from an explicit table of the original Wan module names (Wan's ``WanModel``:
``self_attn.q``, ``norm3`` for the cross-attention norm, ``head.modulation``...) and BindWeave's connector
as ComfyUI-WanVideoWrapper names it (``text_projection.0`` / ``.2``), independent of the loader, which
renames with diffusers' converter: a test that loads these files checks one against the other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

__all__ = ["SingleFileLayout", "original_wan_name", "write_single_file"]

SingleFileLayout = Literal["plain", "fp8", "fp8_scaled", "comfy_quant"]

_TOP = {
    "scale_shift_table": "head.modulation",
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.text_projector.linear_1": "text_projection.0",
    "condition_embedder.text_projector.linear_2": "text_projection.2",
    "proj_out": "head.head",
}
_BLOCK = {
    "scale_shift_table": "modulation",
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # Wan's cross-attention norm is norm3; diffusers calls it norm2
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_PARAM = re.compile(r"^(?P<module>.+?)(?P<suffix>\.weight|\.bias)?$")
FP8_MAX = 448.0  # largest float8 e4m3fn value


def original_wan_name(name: str) -> str:
    """The original Wan name of a BindWeave DiT parameter (``blocks.0.attn1.to_q.weight`` -> ``blocks.0.self_attn.q.weight``)."""
    match = _PARAM.match(name)
    module, suffix = match["module"], match["suffix"] or ""
    if module in _TOP:
        return _TOP[module] + suffix
    block = re.match(r"^blocks\.(\d+)\.(.+)$", module)
    if block and block[2] in _BLOCK:
        return f"blocks.{block[1]}.{_BLOCK[block[2]]}{suffix}"
    raise KeyError(f"no original Wan name for {name}")


def _quantised(name: str, tensor: torch.Tensor) -> bool:
    """ComfyUI's fp8 files quantise the blocks' linear weights; norms, biases and embeddings stay wide."""
    return name.startswith("blocks.") and name.endswith(".weight") and tensor.ndim == 2


def write_single_file(
    state_dict: dict[str, torch.Tensor],
    path: Path,
    layout: SingleFileLayout = "plain",
    *,
    prefix: str = "",
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """Write ``state_dict`` (diffusers names) as one original-layout file; return what a loader must give.

    Layouts: ``plain`` (every tensor in ``dtype``); ``fp8`` (the blocks' linear weights in float8 e4m3fn,
    no scale); ``fp8_scaled`` (ComfyUI's: a ``scaled_fp8`` marker and a float32 ``scale_weight`` per
    quantised weight, plus a ``scale_input``); ``comfy_quant`` (ComfyUI's newer layout: ``weight_scale`` and
    a ``comfy_quant`` JSON record per weight). Returns the float32 values a loader must produce, by
    diffusers name: the dequantised ``w_fp8 * scale`` or the ``dtype``-rounded value.
    """
    stored: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        key = prefix + original_wan_name(name)
        layer = key.removesuffix(".weight")
        if layout == "plain" or not _quantised(name, tensor):
            stored[key] = tensor.to(dtype).contiguous()
            expected[name] = stored[key].float()
            continue
        scale = (
            (tensor.abs().max().float() / FP8_MAX).clamp(min=1e-12) if layout != "fp8" else torch.tensor(1.0)
        )
        weight = (tensor.float() / scale).to(torch.float8_e4m3fn)
        stored[key] = weight
        expected[name] = weight.float() * scale if layout != "fp8" else weight.float()
        if layout == "fp8_scaled":
            stored[f"{layer}.scale_weight"] = scale.reshape(())
            stored[f"{layer}.scale_input"] = torch.tensor(1.0)
        elif layout == "comfy_quant":
            stored[f"{layer}.weight_scale"] = scale.reshape(())
            record = json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")
            stored[f"{layer}.comfy_quant"] = torch.tensor(list(record), dtype=torch.uint8)
    if layout == "fp8_scaled":
        stored[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(stored, path)
    return expected
