"""Reading one ``.safetensors`` component file as ComfyUI users have it, float8 weights dequantised.

The layouts ComfyUI writes and loads (``comfy/ops.py``, ``comfy/utils.py``):

- plain tensors in fp32 / bf16 / fp16, or float8 (e4m3fn, e5m2) upcast as they are;
- ``fp8_scaled`` files (``*_fp8_e4m3fn_scaled.safetensors``): a ``scaled_fp8`` marker tensor, and for each
  quantised weight a per-tensor ``<layer>.scale_weight`` (plus ``<layer>.scale_input`` for fp8 matmuls, not
  needed to dequantise), ``W = w_fp8 * scale_weight``;
- the newer ``comfy_quant`` layout: ``<layer>.weight_scale`` with a ``<layer>.comfy_quant`` JSON record
  (uint8 bytes) naming the format; only float8 formats are readable here.

Every weight is dequantised in float32 and then cast to the load dtype, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from ..models.checkpoint import CheckpointError

__all__ = ["FP8_DTYPES", "ComponentFile"]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_QUANT_SUFFIXES = (*_SCALE_SUFFIXES, ".scale_input", ".input_scale", ".comfy_quant")
_MARKERS = ("scaled_fp8",)
_FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")


class ComponentFile:
    """The tensors of one component file, by name (a known ``prefix`` removed), read lazily.

    Args:
        path: the ``.safetensors`` file.
        component: what it should hold (``"umT5-XXL text encoder"``), for error messages.
        prefixes: prefixes one of which may stand before every tensor name (e.g. a full checkpoint's
            ``text_encoders.umt5xxl.transformer.``); the first one that some tensor has is removed, and the
            tensors without it are left out.
        extras: names of non-weight tensors the file may carry (ComfyUI's ``spiece_model``): kept out of
            :attr:`names`, readable with :meth:`raw`.
    """

    def __init__(
        self, path: str | Path, component: str, prefixes: Iterable[str] = (), extras: Iterable[str] = ()
    ):
        self.path = Path(path)
        self.component = component
        if not self.path.is_file():
            raise FileNotFoundError(f"{component}: no such file {self.path}")
        try:
            self.handle = safe_open(self.path, framework="pt")
            keys = list(self.handle.keys())
            metadata = self.handle.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise CheckpointError(f"{self.path} is not a readable .safetensors file: {err}") from err
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in keys)), "")
        stored = {k.removeprefix(prefix): k for k in keys if k.startswith(prefix)}
        self.prefix = prefix
        self.left_out = len(keys) - len(stored)  # tensors outside the prefix: other components
        self._stored = stored
        extras = set(extras)
        self.extras = {name for name in stored if name in extras}
        self.names = [
            n for n in stored if not n.endswith(_QUANT_SUFFIXES) and n not in _MARKERS and n not in extras
        ]
        self._formats = self._quantization_formats(metadata, prefix)
        unreadable = sorted(
            (layer, form) for layer, form in self._formats.items() if form not in _FP8_FORMATS
        )
        if unreadable:
            layer, form = unreadable[0]
            raise CheckpointError(
                f"{self.path}: {layer}.weight is stored as {form!r} ({len(unreadable)} layers in formats other than "
                f"float8); only float8 (e4m3fn, e5m2) weights can be dequantised here: use the {component}'s bf16 / "
                "fp16 / fp8_scaled file"
            )

    def _quantization_formats(self, metadata: dict[str, str], prefix: str) -> dict[str, str]:
        """``{layer: format}`` from ComfyUI's ``_quantization_metadata`` or its ``<layer>.comfy_quant`` records."""
        formats: dict[str, str] = {}
        if "_quantization_metadata" in metadata:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
            formats |= {k.removeprefix(prefix): v.get("format", "") for k, v in layers.items()}
        for name, key in self._stored.items():
            if name.endswith(".comfy_quant"):
                record = json.loads(bytes(self.handle.get_tensor(key).tolist()).decode("utf-8"))
                formats[name.removesuffix(".comfy_quant")] = record.get("format", "")
        return formats

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(self._stored[name]).get_shape())

    def raw(self, name: str) -> torch.Tensor:
        """A tensor as stored (for the non-weight ``extras``)."""
        return self.handle.get_tensor(self._stored[name])

    def tensor(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor ``name`` in ``dtype``; a float8 weight dequantised with its scale, if it has one."""
        tensor = self.handle.get_tensor(self._stored[name])
        layer = name.removesuffix(".weight")
        scale_name = next((layer + s for s in _SCALE_SUFFIXES if layer + s in self._stored), None)
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
        """One value (per tensor) or one per output row (``(out,)`` / ``(out, 1)``); anything else is refused."""
        scale = self.handle.get_tensor(self._stored[scale_name]).float()
        if scale.numel() == 1:
            return scale.reshape(())
        if scale.ndim >= 1 and scale.shape[0] == shape[0] and all(n == 1 for n in scale.shape[1:]):
            return scale.reshape(shape[0], *([1] * (len(shape) - 1)))
        raise CheckpointError(
            f"{self.path}: {scale_name} has shape {list(scale.shape)}: only per-tensor scales or per-row scales "
            f"([{shape[0]}] or [{shape[0]}, 1]) of {name} {list(shape)} can be dequantised"
        )

    def state_dict(self, rename: Callable[[str], str | None], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Every weight under its model name (``rename(name)``; ``None`` leaves the tensor out), in ``dtype``."""
        result = {}
        for name in self.names:
            target = rename(name)
            if target is not None:
                result[target] = self.tensor(name, dtype)
        return result
