"""Peak GPU memory of one denoising step in each memory mode, and with fp8 weights, for the real shapes.

Each mode is applied with the pipeline's own code (:func:`bindweave.perf.memory.apply_memory_mode`) to a
pipeline holding only a random DiT of the target widths, and one step's DiT work runs (both CFG branches,
batched) on the real token count. To keep it fast, the DiT is built with 1 and with 2 blocks; the peak at
the model's depth is extrapolated linearly, ``p(L) = p(1) + (L - 1) (p(2) - p(1))``: a resident mode grows
by one block's weights per block, an offloading mode not at all, and the activations do not depend on the
depth. Both measured peaks are reported beside the extrapolation.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..perf.bench_config import DEFAULT_VIDEO
from ..perf.cross_attention import install_fast_cross_attention
from ..perf.dit_timing import dit_inputs, dit_step, random_transformer
from ..perf.memory import apply_memory_mode, enable_fp8_weights
from .config import GpuCheckSize
from .timing import GUIDANCE, MLLM_TOKENS, target_config

__all__ = ["MEMORY_CASES", "DiTOnlyPipeline", "MemoryResult", "measure_memory"]

# (name, memory mode, fp8 weights)
MEMORY_CASES = (
    ("none", "none", False),
    ("model-offload", "model-offload", False),
    ("group-offload", "group-offload", False),
    ("sequential", "sequential", False),
    ("none + fp8 weights", "none", True),
    ("group-offload + fp8 weights", "group-offload", True),
)
DEPTHS = (1, 2)


@dataclass(frozen=True)
class MemoryResult:
    """One case: the extrapolated peak at the model's depth and the two measured ones, or why there is none."""

    case: str
    layers: int
    peak_gib: float | None
    peak_gib_by_depth: dict[int, float]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiTOnlyPipeline(DiffusionPipeline):
    """A pipeline of the DiT alone: the memory modes place it with the calls they use on the full pipeline.

    In the full pipeline every encoder has finished (and, offloaded, left the device) before the first DiT
    step, so during a step the DiT is the only component that holds device memory.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.register_modules(transformer=transformer)


def measure_memory(size: GpuCheckSize, device: torch.device) -> list[MemoryResult]:
    """Every case of :data:`MEMORY_CASES` on ``device``; on a CPU the steps run but no peak is measured."""
    config = target_config(size)
    return [_measure_case(name, mode, fp8, config, size, device) for name, mode, fp8 in MEMORY_CASES]


def _measure_case(name: str, mode: str, fp8: bool, config: dict, size, device: torch.device) -> MemoryResult:
    layers = config["num_layers"]
    if mode == "sequential" and device.type != "cuda":
        return MemoryResult(name, layers, None, {}, "needs CUDA (refused on a CPU)")
    peaks = {
        depth: _peak_of_one_step({**config, "num_layers": depth}, mode, fp8, size, device) for depth in DEPTHS
    }
    if device.type != "cuda":
        return MemoryResult(name, layers, None, {}, "the step ran; peak GPU memory needs CUDA")
    first, second = (peaks[d] for d in DEPTHS)
    return MemoryResult(name, layers, first + (layers - DEPTHS[0]) * (second - first), peaks)


def _peak_of_one_step(config: dict, mode: str, fp8: bool, size, device: torch.device) -> float:
    """GiB: ``torch.cuda.max_memory_allocated`` over placing the DiT and one CFG step (0 on a CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # Random weights are drawn on the device (seconds, not minutes, for 14B-wide layers), then start on the
    # CPU as loaded weights do; the peak count restarts after that.
    transformer = random_transformer(config, device, dtype).to("cpu")
    install_fast_cross_attention(transformer)  # batched CFG, the pipeline's default
    if fp8:
        enable_fp8_weights(transformer, compute_dtype=dtype)  # before offloading, as the pipeline does
    pipe = DiTOnlyPipeline(transformer)
    _release(device)
    apply_memory_mode(pipe, mode, device)
    height, width, num_frames = DEFAULT_VIDEO[size]
    inputs = dit_inputs(transformer, height, width, num_frames, device, mllm_tokens=MLLM_TOKENS, cfg=True)
    dit_step(transformer, inputs, GUIDANCE, batch_cfg=True)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    pipe.remove_all_hooks()
    del pipe, transformer, inputs
    _release(device)
    return peak


def _release(device: torch.device) -> None:
    """Free what the previous case left and restart the peak count."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
