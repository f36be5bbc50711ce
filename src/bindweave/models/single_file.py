"""Single-file DiT checkpoints in the original Wan / ComfyUI layout, as ComfyUI users download them.

One ``.safetensors`` file holding the DiT under the original Wan names (``blocks.0.self_attn.q.weight``),
bare as in ComfyUI's ``models/diffusion_models`` or prefixed ``model.diffusion_model.`` as in a full
checkpoint; BindWeave's connector as ComfyUI-WanVideoWrapper names it, ``text_projection.0`` / ``.2``.
Weights in fp32 / bf16 / fp16, or in float8 (e4m3fn or e5m2):

- plain float8 weights (e.g. ``*_fp8_e4m3fn.safetensors``), upcast as they are;
- ComfyUI's ``fp8_scaled`` files: a ``scaled_fp8`` marker and a per-tensor ``<layer>.scale_weight``
  (``<layer>.scale_input`` for fp8 matmuls is not needed), ``W = w_fp8 * scale_weight``; and its newer
  layout, ``<layer>.weight_scale`` with a ``<layer>.comfy_quant`` format record (float8 formats only).

Every float8 weight is dequantised to the load dtype; ``--fp8-weights`` (:mod:`bindweave.perf.memory`)
then stores the DiT in float8 again, layer by layer, if memory asks for it.

The key renaming is diffusers' own (``convert_wan_transformer_to_diffusers``), applied to the key names only
so that each tensor is read, dequantised and cast once (a 14B file is never held twice in memory).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from ..singlefile.reader import FP8_DTYPES, ComponentFile
from .checkpoint import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["FP8_DTYPES", "infer_single_file_config", "load_single_file_state_dict", "single_file_shapes"]

#: Wan's attention head width: a single file says the model width, and the heads follow from it (as
#: ComfyUI's ``detect_unet_config`` does, ``num_heads = dim // 128``).
WAN_HEAD_DIM = 128

_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_CONNECTOR = {"text_projection.0.": "condition_embedder.text_projector.linear_1.",
              "text_projection.2.": "condition_embedder.text_projector.linear_2."}  # fmt: skip
_OTHER_MODELS = {"motion_encoder", "face_adapter", "vace_blocks"}


class _SingleFile:
    """The DiT tensors of one single-file checkpoint: original names -> diffusers names, read lazily.

    Reading and dequantising are :class:`~bindweave.singlefile.reader.ComponentFile`'s (shared with the other
    ComfyUI component files); this adds the DiT's names: the connector's, then diffusers' renaming.
    """

    def __init__(self, path: Path):
        self.path = path
        self.file = ComponentFile(path, "BindWeave DiT", prefixes=_PREFIXES)
        if self.file.left_out:
            logger.info("%s: %d tensors outside %s (other components) are not read", path, self.file.left_out,
                        self.file.prefix)  # fmt: skip
        other_models = sorted({n.split(".")[0] for n in self.file.names} & _OTHER_MODELS)
        if other_models:  # diffusers' converter reshapes these tensors: not a renaming of names alone
            raise CheckpointError(
                f"{path} holds {', '.join(other_models)}: a Wan-Animate / VACE model, not a Wan2.1-I2V DiT"
            )
        original = {self._connector(n): n for n in self.file.names}
        # diffusers' renaming, run on the names alone: {diffusers name: original name}.
        self.names = convert_wan_transformer_to_diffusers({k: n for k, n in original.items()})

    @staticmethod
    def _connector(name: str) -> str:
        for theirs, ours in _CONNECTOR.items():
            if name.startswith(theirs):
                return ours + name.removeprefix(theirs)
        return name

    def shape(self, diffusers_name: str) -> tuple[int, ...]:
        return self.file.shape(self.names[diffusers_name])

    def tensor(self, diffusers_name: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor in ``dtype``; a float8 weight dequantised with its scale, if it has one."""
        return self.file.tensor(self.names[diffusers_name], dtype)


def single_file_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The DiT tensors of a single-file checkpoint under their diffusers names, with shapes (headers only)."""
    checkpoint = _SingleFile(Path(path))
    return {name: checkpoint.shape(name) for name in checkpoint.names}


def infer_single_file_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, int | tuple[int, ...]]:
    """The model sizes a single file's tensor shapes (diffusers names) say, as ComfyUI reads them.

    Widths, layers, channels and patch size come from the shapes; the heads from the width
    (``dim // 128``; one head for a width that is no multiple of 128). What no shape says (the 257 image
    tokens, the 4 reference slots, norms, RoPE) is left to the caller's config. A tensor the file lacks leaves its value out (the key check names it).
    """
    config: dict[str, int | tuple[int, ...]] = {}

    def shape(name: str) -> tuple[int, ...] | None:
        return shapes.get(name)

    if (patch := shape("patch_embedding.weight")) is not None:
        dim, config["in_channels"], *kernel = patch
        config["patch_size"] = tuple(kernel)
        if dim % WAN_HEAD_DIM == 0:
            config["num_attention_heads"], config["attention_head_dim"] = dim // WAN_HEAD_DIM, WAN_HEAD_DIM
        else:  # not a Wan width (a test model): one head as wide as the model, so every shape still fits
            config["num_attention_heads"], config["attention_head_dim"] = 1, dim
        if (out := shape("proj_out.weight")) is not None and math.prod(kernel):
            config["out_channels"] = out[0] // math.prod(kernel)
    if layers := len({name.split(".")[1] for name in shapes if name.startswith("blocks.")}):
        config["num_layers"] = layers
    sizes = {
        "ffn_dim": ("blocks.0.ffn.net.0.proj.weight", 0),
        "text_dim": ("condition_embedder.text_embedder.linear_1.weight", 1),
        "freq_dim": ("condition_embedder.time_embedder.linear_1.weight", 1),
        "image_dim": ("condition_embedder.image_embedder.norm1.weight", 0),
        "added_kv_proj_dim": ("blocks.0.attn2.add_k_proj.weight", 1),
        "mllm_dim": ("condition_embedder.text_projector.linear_1.weight", 1),
    }
    for key, (name, axis) in sizes.items():
        if (found := shape(name)) is not None:
            config[key] = found[axis]
    return config


def load_single_file_state_dict(path: str | os.PathLike, dtype_of: Any = None) -> dict[str, torch.Tensor]:
    """The DiT's state dict from a single-file checkpoint, under diffusers' names.

    Args:
        path: the ``.safetensors`` file.
        dtype_of: ``name -> torch.dtype``, the dtype each tensor is loaded in (float8 weights dequantised
            first); default float32.
    """
    checkpoint = _SingleFile(Path(path))
    dtype_of = dtype_of or (lambda _name: torch.float32)
    return {name: checkpoint.tensor(name, dtype_of(name)) for name in checkpoint.names}
