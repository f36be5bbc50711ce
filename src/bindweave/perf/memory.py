"""Memory modes: where the weights live while a video is generated, through diffusers' own offloading.

The pipeline runs its components in the order MLLM -> umT5 -> CLIP -> VAE encode -> DiT loop -> VAE
decode (``BindWeavePipeline.model_cpu_offload_seq``) and encodes all conditioning before the first DiT
step, so every encoder is done before denoising starts and the offloading modes can release it:

- ``none``: everything on the device (fastest; the 14B release needs ~60 GB in bf16 with the MLLM).
- ``model-offload``: one whole component on the device at a time (``enable_model_cpu_offload``): the chain
  sends each encoder back to the CPU when the next one starts, so the DiT loop runs alone on the device;
  the pipeline offloads the DiT before the VAE decode. Peak: the DiT (28 GB bf16) + activations.
- ``group-offload``: one DiT block at a time (``apply_group_offloading``, block level), prefetched on a
  CUDA stream while the previous block computes. The other components are block-offloaded without
  streams (they run once). Peak: a block or two + activations.
- ``sequential``: one leaf module at a time (``enable_sequential_cpu_offload``); lowest memory, slowest.

None of them changes the arithmetic: on the same device every mode gives the same video as ``none``
(tested bitwise on CPU where diffusers allows the mode on CPU, see ``tests/perf/test_memory.py``).

``fp8_weights`` stores the DiT's linear/conv weights in ``float8_e4m3fn`` and upcasts each layer to the
compute dtype just before it runs (``enable_layerwise_casting``): half the bf16 weight memory, lossy.
diffusers' default skip list keeps the patch embedding, the condition embedder (which holds the MLLM
connector) and every norm in the compute dtype.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.hooks import apply_group_offloading

from .kinds import MemoryMode

__all__ = ["MemoryMode", "apply_memory_mode", "enable_fp8_weights"]

FP8_STORAGE_DTYPE = torch.float8_e4m3fn


def enable_fp8_weights(transformer: ModelMixin, compute_dtype: torch.dtype) -> None:
    """Store the DiT's weights in float8 (e4m3), computing each layer in ``compute_dtype``.

    Apply before any offloading, so the offloaded copies are the float8 ones.
    """
    if compute_dtype == FP8_STORAGE_DTYPE:
        raise ValueError("fp8 weights need a wider compute dtype (bfloat16, float16 or float32)")
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE_DTYPE, compute_dtype=compute_dtype)


def apply_memory_mode(pipe: DiffusionPipeline, mode: MemoryMode, device: torch.device) -> None:
    """Place ``pipe``'s components for ``mode`` (see the module docstring), computing on ``device``."""
    device = torch.device(device)
    if mode == "none":
        pipe.to(device)
    elif mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        if device.type == "cpu":
            # accelerate's sequential offload moves weights between the CPU and an accelerator; with both
            # on the CPU its hooks fail inside transformers' models.
            raise ValueError("--memory sequential needs an accelerator (cuda); on a CPU use --memory none")
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode == "group-offload":
        _group_offload(pipe, device)
    else:
        raise ValueError(
            f"unknown memory mode {mode!r}; choose one of none, model-offload, group-offload, sequential"
        )


def _group_offload(pipe: DiffusionPipeline, device: torch.device) -> None:
    """Block-level group offloading of every component; the DiT's transfers overlap compute on CUDA."""
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        # The DiT runs 2 x 50 times: prefetching its next block on a side stream hides the transfers.
        # The others run once, and streams with the VAE's tiled first pass are fragile (diffusers warns).
        use_stream = device.type == "cuda" and name == "transformer"
        kwargs = dict(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=use_stream,
        )
        if isinstance(component, ModelMixin):
            component.enable_group_offload(**kwargs)
        else:  # transformers models (umT5, CLIP, Qwen2.5-VL)
            apply_group_offloading(component, **kwargs)
