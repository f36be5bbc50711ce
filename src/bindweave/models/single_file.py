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

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors import safe_open

from .checkpoint import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["FP8_DTYPES", "infer_single_file_config", "load_single_file_state_dict", "single_file_shapes"]

#: Wan's attention head width: a single file says the model width, and the heads follow from it (as
#: ComfyUI's ``detect_unet_config`` does, ``num_heads = dim // 128``).
WAN_HEAD_DIM = 128

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_CONNECTOR = {"text_projection.0.": "condition_embedder.text_projector.linear_1.",
              "text_projection.2.": "condition_embedder.text_projector.linear_2."}  # fmt: skip
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # ComfyUI's scaled_fp8, and its comfy_quant layout
_QUANT_SUFFIXES = (*_SCALE_SUFFIXES, ".scale_input", ".input_scale", ".comfy_quant")
_QUANT_MARKERS = ("scaled_fp8",)
_FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")


class _SingleFile:
    """The DiT tensors of one single-file checkpoint: original names -> diffusers names, read lazily."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.handle = safe_open(path, framework="pt")
            keys = list(self.handle.keys())
            metadata = self.handle.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise CheckpointError(f"{path} is not a readable .safetensors file: {err}") from err
        prefix = next((p for p in _PREFIXES if any(k.startswith(p) for k in keys)), "")
        if prefix:
            others = [k for k in keys if not k.startswith(prefix)]
            if others:
                logger.info(
                    "%s: %d tensors outside %s (other components) are not read", path, len(others), prefix
                )
            keys = [k for k in keys if k.startswith(prefix)]
        self.stored = {k.removeprefix(prefix): k for k in keys}  # name without prefix -> key in the file
        self.formats = self._quantization_formats(metadata, prefix)
        names = [n for n in self.stored if not n.endswith(_QUANT_SUFFIXES) and n not in _QUANT_MARKERS]
        other_models = sorted(
            {n.split(".")[0] for n in names} & {"motion_encoder", "face_adapter", "vace_blocks"}
        )
        if other_models:  # diffusers' converter reshapes these tensors: not a renaming of names alone
            raise CheckpointError(
                f"{path} holds {', '.join(other_models)}: a Wan-Animate / VACE model, not a Wan2.1-I2V DiT"
            )
        # Refused before any shape is compared: a packed format (nvfp4: two values a byte) has other shapes.
        unreadable = sorted((layer, form) for layer, form in self.formats.items() if form not in _FP8_FORMATS)
        if unreadable:
            layer, form = unreadable[0]
            raise CheckpointError(
                f"{path}: {layer}.weight is stored as {form!r} ({len(unreadable)} layers in formats other than "
                "float8); only float8 (e4m3fn, e5m2) weights can be dequantised here: use the file's bf16 / "
                "fp16 / fp8_scaled version"
            )
        original = {self._connector(n): n for n in names}
        # diffusers' renaming, run on the names alone: {diffusers name: original name}.
        self.names = convert_wan_transformer_to_diffusers({k: n for k, n in original.items()})

    @staticmethod
    def _connector(name: str) -> str:
        for theirs, ours in _CONNECTOR.items():
            if name.startswith(theirs):
                return ours + name.removeprefix(theirs)
        return name

    def _quantization_formats(self, metadata: dict[str, str], prefix: str) -> dict[str, str]:
        """``{layer: format}`` from ComfyUI's ``_quantization_metadata`` or its ``<layer>.comfy_quant`` records."""
        formats: dict[str, str] = {}
        if "_quantization_metadata" in metadata:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
            formats |= {k.removeprefix(prefix): v.get("format", "") for k, v in layers.items()}
        for name, key in self.stored.items():
            if name.endswith(".comfy_quant"):
                record = json.loads(bytes(self.handle.get_tensor(key).tolist()).decode("utf-8"))
                formats[name.removesuffix(".comfy_quant")] = record.get("format", "")
        return formats

    def shape(self, diffusers_name: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(self.stored[self.names[diffusers_name]]).get_shape())

    def tensor(self, diffusers_name: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor in ``dtype``; a float8 weight dequantised with its scale, if it has one."""
        name = self.names[diffusers_name]
        tensor = self.handle.get_tensor(self.stored[name])
        layer = name.removesuffix(".weight")
        scale_name = next((layer + s for s in _SCALE_SUFFIXES if layer + s in self.stored), None)
        if scale_name is not None and tensor.dtype not in FP8_DTYPES:
            raise CheckpointError(
                f"{self.path}: {name} is {tensor.dtype} with a scale ({scale_name}); only float8 weights with "
                "per-tensor scales can be dequantised here"
            )
        if tensor.dtype in FP8_DTYPES:
            tensor = tensor.float()
            if scale_name is not None:
                tensor = tensor * self._scale(scale_name, name, tensor.shape)
        return tensor.to(dtype)

    def _scale(self, scale_name: str, name: str, shape: torch.Size) -> torch.Tensor:
        """The dequantisation scale, shaped to broadcast along the axis its own shape names: one value
        (per tensor), or ``(out,)`` / ``(out, 1, ...)`` (per output row). A scale along another axis (e.g.
        ``(1, out)``) is refused, never guessed from its element count."""
        scale = self.handle.get_tensor(self.stored[scale_name]).float()
        rows = shape[0]
        if scale.numel() == 1:
            return scale.reshape(())
        if scale.ndim >= 1 and scale.shape[0] == rows and all(n == 1 for n in scale.shape[1:]):
            return scale.reshape(rows, *([1] * (len(shape) - 1)))
        raise CheckpointError(
            f"{self.path}: {scale_name} has shape {list(scale.shape)}: only per-tensor scales or per-row scales "
            f"([{rows}] or [{rows}, 1]) of {name} {list(shape)} can be dequantised"
        )


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
