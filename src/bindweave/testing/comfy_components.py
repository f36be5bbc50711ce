"""Component files in the layouts ComfyUI users download, written from tiny transformers / diffusers models,
for tests of :mod:`bindweave.singlefile`.

Each layout is an explicit name table from the model's names to the file's, taken from ComfyUI's module
names (``comfy/text_encoders/t5.py``, ``comfy/clip_vision.py``, ``comfy/ldm/wan/vae.py``,
``comfy/text_encoders/llama.py`` + ``qwen_vl.py``), independent of the loaders (which rename the other way,
the VAE with diffusers' converter): a test that loads these files checks one against the other.
Quantised layouts are ComfyUI's ``fp8_scaled``: float8 e4m3fn linear weights, a float32 ``scale_weight``
and ``scale_input`` per weight, and a ``scaled_fp8`` marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

__all__ = [
    "ComponentLayout",
    "comfy_clip_openclip_tensors",
    "comfy_clip_vision_name",
    "comfy_qwen_vl_name",
    "comfy_umt5_name",
    "comfy_wan_vae_name",
    "write_component_file",
]

ComponentLayout = Literal["plain", "fp8_scaled"]
FP8_MAX = 448.0  # largest float8 e4m3fn value


# ---------------------------------------------------------------------------------------------- names


def comfy_umt5_name(name: str) -> str | None:
    """ComfyUI's T5 module names are transformers' (``comfy/text_encoders/t5.py``); its T5 has no
    ``encoder.embed_tokens`` (the input embedding is ``shared``), so that tied alias is not written."""
    table = {
        "shared.weight": "shared.weight",
        "encoder.final_layer_norm.weight": "encoder.final_layer_norm.weight",
    }
    if name in table:
        return table[name]
    block = re.fullmatch(
        r"encoder\.block\.(\d+)\.layer\.(0\.SelfAttention\.(?:q|k|v|o|relative_attention_bias)|0\.layer_norm"
        r"|1\.DenseReluDense\.(?:wi_0|wi_1|wo)|1\.layer_norm)\.weight",
        name,
    )
    if block:
        return f"encoder.block.{block[1]}.layer.{block[2]}.weight"
    if name == "encoder.embed_tokens.weight":
        return None
    raise KeyError(f"no ComfyUI umT5 name for {name}")


def comfy_qwen_vl_name(name: str, lm_head: bool = True) -> str | None:
    """ComfyUI's Qwen2.5-VL names are transformers' before 4.52: ``model.language_model.X`` -> ``model.X``,
    ``model.visual.X`` -> ``visual.X``; ``lm_head`` kept or (ComfyUI's text-encoder file) left out."""
    for ours, theirs in (("model.language_model.", "model."), ("model.visual.", "visual.")):
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    if name == "lm_head.weight":
        return name if lm_head else None
    raise KeyError(f"no ComfyUI Qwen2.5-VL name for {name}")


_VAE_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
               "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip
_VAE_TOP = {"encoder.conv_in": "encoder.conv1", "decoder.conv_in": "decoder.conv1",
            "encoder.norm_out.gamma": "encoder.head.0.gamma", "decoder.norm_out.gamma": "decoder.head.0.gamma",
            "encoder.conv_out": "encoder.head.2", "decoder.conv_out": "decoder.head.2",
            "quant_conv": "conv1", "post_quant_conv": "conv2"}  # fmt: skip
_VAE_MID = {"resnets.0": "middle.0", "attentions.0": "middle.1", "resnets.1": "middle.2"}
#: Wan 2.1's decoder: per level 3 residual blocks (num_res_blocks + 1) and an upsampler, flattened.
_VAE_UP_STRIDE = 4


def _vae_resnet(part: str) -> str:
    for ours, theirs in _VAE_RESNET.items():
        if part == ours or part.startswith(ours + "."):
            return theirs + part.removeprefix(ours)
    raise KeyError(part)


def comfy_wan_vae_name(name: str) -> str:
    """The original Wan 2.1 VAE name (``comfy/ldm/wan/vae.py``) of a diffusers ``AutoencoderKLWan`` tensor."""
    stem, _, kind = name.rpartition(".")
    if stem in _VAE_TOP or name in _VAE_TOP:
        return _VAE_TOP[name] if name in _VAE_TOP else f"{_VAE_TOP[stem]}.{kind}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.0)\.(.+)", name):
        side, block, rest = m.groups()
        return f"{side}.{_VAE_MID[block]}.{rest if block.startswith('attentions') else _vae_resnet(rest)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", name):  # the same flat list in both
        index, rest = m.groups()
        rest = rest if rest.startswith(("resample.", "time_conv.")) else _vae_resnet(rest)
        return f"encoder.downsamples.{index}.{rest}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        level, block, rest = m.groups()
        return f"decoder.upsamples.{int(level) * _VAE_UP_STRIDE + int(block)}.{_vae_resnet(rest)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", name):
        level, rest = m.groups()
        return f"decoder.upsamples.{int(level) * _VAE_UP_STRIDE + _VAE_UP_STRIDE - 1}.{rest}"
    raise KeyError(f"no original Wan VAE name for {name}")


def comfy_clip_vision_name(name: str) -> str:
    """ComfyUI's CLIP vision model (``comfy/clip_model.py``) keeps the tower under ``vision_model.``, as
    transformers' checkpoints do; transformers >= 5's ``CLIPVisionModel`` names its tensors without it."""
    return "vision_model." + name


_OPENCLIP_TOP = {
    "embeddings.class_embedding": "visual.class_embedding",
    "embeddings.patch_embedding.weight": "visual.conv1.weight",
    "embeddings.position_embedding.weight": "visual.positional_embedding",
    "pre_layrnorm.weight": "visual.ln_pre.weight",
    "pre_layrnorm.bias": "visual.ln_pre.bias",
    "post_layernorm.weight": "visual.ln_post.weight",
    "post_layernorm.bias": "visual.ln_post.bias",
}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}  # fmt: skip


def comfy_clip_openclip_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPVisionModel`` state dict (its own names) in OpenCLIP's layout (what ComfyUI converts from):
    ``visual.transformer.resblocks.N``, q / k / v stacked into ``attn.in_proj_weight`` / ``in_proj_bias``."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[name]] = tensor
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m is None:
            raise KeyError(f"no OpenCLIP name for {name}")
        layer, module, kind = m.groups()
        block = f"visual.transformer.resblocks.{layer}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if module == "self_attn.q_proj":
                parts = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{block}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        else:
            out[f"{block}{_OPENCLIP_LAYER[module]}.{kind}"] = tensor
    return out


# ---------------------------------------------------------------------------------------------- files


def write_component_file(
    state: dict[str, torch.Tensor],
    path: Path,
    name_of: Callable[[str], str | None],
    *,
    layout: ComponentLayout = "plain",
    dtype: torch.dtype = torch.bfloat16,
    quantised: Callable[[str, torch.Tensor], bool] = lambda name, tensor: False,
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Write ``state`` (the model's names) as one file under ``name_of(name)`` (None: not written).

    ``plain``: every tensor in ``dtype``. ``fp8_scaled``: the tensors ``quantised(file name, tensor)`` picks in
    float8 e4m3fn with a per-tensor ``scale_weight`` (and ``scale_input``), the rest in ``dtype``, plus the
    ``scaled_fp8`` marker. ``extra`` tensors are written as they are (ComfyUI's ``spiece_model``...).
    Returns what a loader must produce in float32, by the model's name.
    """
    stored: dict[str, torch.Tensor] = dict(extra or {})
    expected: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = name_of(name)
        if key is None:
            continue
        if layout == "plain" or not quantised(key, tensor):
            stored[key] = tensor.to(dtype).contiguous()
            expected[name] = stored[key].float()
            continue
        scale = (tensor.abs().max().float() / FP8_MAX).clamp(min=1e-12)
        stored[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
        expected[name] = stored[key].float() * scale
        layer = key.removesuffix(".weight")
        stored[f"{layer}.scale_weight"] = scale.reshape(())
        stored[f"{layer}.scale_input"] = torch.tensor(1.0)
    if layout == "fp8_scaled":
        stored["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(stored, path)
    return expected
