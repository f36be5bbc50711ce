"""ComfyUI's CLIP vision files (``models/clip_vision/clip_vision_h.safetensors``) as transformers'
``CLIPVisionModel``, the image encoder Wan 2.1 I2V and BindWeave use (ViT-H/14, penultimate states).

ComfyUI reads two layouts (``comfy/clip_vision.py``, ``load`` / ``convert_to_transformers``): transformers'
checkpoint names (``vision_model.encoder.layers.N.self_attn.q_proj``, with a ``visual_projection`` that Wan does not
use), or OpenCLIP's (``visual.transformer.resblocks.N.attn.in_proj_weight``, q / k / v stacked), which it
converts. Both load here. The files carry no config: widths, layers, patch and image size come from the
shapes; the heads, which no shape shows, from the width as ComfyUI's configs have them (ViT-H/14 and
ViT-L/14: 16 heads) or from ``num_attention_heads``.
"""

from __future__ import annotations

import math
import os
import re

import torch

from .assign import assign_state_dict
from .reader import ComponentFile

__all__ = ["CLIP_VISION_COMPONENT", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "load_clip_vision_file"]

CLIP_VISION_COMPONENT = "CLIP vision encoder (ComfyUI clip_vision_h.safetensors)"
#: ComfyUI's configs (clip_vision_config_h.json / _vitl.json / _g.json): width -> (heads, activation).
KNOWN_WIDTHS = {1280: (16, "gelu"), 1024: (16, "quick_gelu"), 1664: (16, "gelu")}
#: The normalisation of OpenAI's CLIP, which Wan's image processor and ComfyUI's clip_preprocess use.
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_OPENCLIP_TOP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_RESBLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def _from_openclip(file: ComponentFile, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """OpenCLIP's names -> transformers', the stacked ``in_proj`` split into q, k, v (as ComfyUI does)."""
    state = {}
    for name in file.names:
        if name in _OPENCLIP_TOP:
            state[_OPENCLIP_TOP[name]] = file.tensor(name, dtype)
        elif name == "visual.proj":  # the projection head: Wan uses the penultimate states, not it
            continue
        elif match := _IN_PROJ.match(name):
            layer, kind = match.groups()
            for part, tensor in zip("qkv", file.tensor(name, dtype).chunk(3, dim=0), strict=True):
                state[f"vision_model.encoder.layers.{layer}.self_attn.{part}_proj.{kind}"] = (
                    tensor.contiguous()
                )
        elif match := _RESBLOCK.match(name):
            layer, module, kind = match.groups()
            state[f"vision_model.encoder.layers.{layer}.{_OPENCLIP_BLOCK.get(module, module)}.{kind}"] = (
                file.tensor(name, dtype)
            )
        else:
            state[name] = file.tensor(name, dtype)  # reported as unexpected by the key check
    return state


def clip_vision_config(state: dict[str, torch.Tensor], num_attention_heads: int | None, path):
    """The ``CLIPVisionConfig`` the tensors' shapes say (heads: given, or ComfyUI's for a known width)."""
    from transformers import CLIPVisionConfig

    width = state["vision_model.embeddings.class_embedding"].shape[0]
    heads, activation = KNOWN_WIDTHS.get(width, (num_attention_heads, "gelu"))
    if num_attention_heads is not None:
        heads = num_attention_heads
    if heads is None:
        raise ValueError(
            f"{path}: a CLIP vision model {width} wide is not one ComfyUI knows (ViT-H/14 is 1280): give its "
            "number of attention heads"
        )
    out_channels, channels, patch, _ = state["vision_model.embeddings.patch_embedding.weight"].shape
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(
            {n.split(".")[3] for n in state if n.startswith("vision_model.encoder.layers.")}
        ),
        num_attention_heads=heads,
        num_channels=channels,
        patch_size=patch,
        image_size=patch * math.isqrt(positions - 1),
        hidden_act=activation,
        layer_norm_eps=1e-5,
    )


def load_clip_vision_file(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, num_attention_heads: int | None = None
):
    """``CLIPVisionModel`` from one ComfyUI CLIP vision file (either layout, any of the reader's dtypes)."""
    from transformers import CLIPVisionModel

    file = ComponentFile(path, CLIP_VISION_COMPONENT)
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in file.names:
        state = _from_openclip(file, dtype)
    else:
        # transformers' names; the projection head is not part of the vision tower Wan uses.
        state = file.state_dict(lambda name: None if name.startswith("visual_projection.") else name, dtype)
    if "vision_model.embeddings.class_embedding" not in state:
        raise ValueError(
            f"{path} is not a CLIP vision file: it has neither vision_model.embeddings.class_embedding nor "
            "visual.class_embedding"
        )
    config = clip_vision_config(state, num_attention_heads, path)
    # transformers >= 5 names the tower's tensors without the "vision_model." its checkpoints (and ComfyUI's
    # files) have; it renames them the same way when it loads such a checkpoint.
    state = {name.removeprefix("vision_model."): tensor for name, tensor in state.items()}
    return assign_state_dict(
        lambda: CLIPVisionModel._from_config(config, dtype=dtype), state, file.path, CLIP_VISION_COMPONENT
    )
