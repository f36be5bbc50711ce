"""``bindweave bench``: how fast the DiT and the whole pipeline run, against stock diffusers Wan.

One run measures, for a model size with random weights:

- the DiT time per sampling step (both CFG branches, batched or not, as configured), timed over
  ``repeats`` steps after a warm-up step, on conditioning of the release's shapes;
- its FLOPs (:mod:`bindweave.perf.flops`), achieved TFLOP/s and MFU against ``peak_tflops`` (given, the
  GPU's known peak, or measured with a large matmul: :mod:`bindweave.perf.peak`);
- the same step on stock diffusers ``WanTransformer3DModel`` sharing the same weights, at the same token
  count and context length (the stock cross-attention split, no connector), and the time ratio;
- the end-to-end pipeline time (encoders, ``steps`` DiT steps, VAE decode) and the peak memory
  (``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS).

Sizes: ``tiny`` (the test model) and ``medium`` (a 4-layer, 1024-wide DiT) run anywhere, with the tiny
umT5 / CLIP / VAE / MLLM; ``14b`` is the released DiT's shape, built on the meta device and materialised
with random weights on the GPU only, DiT-only (no end-to-end: the real encoders are not loaded).
"""

from __future__ import annotations

import contextlib
import platform
import resource
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..generate import resolve_device, resolve_dtype
from ..models import BindWeaveTransformer3DModel
from ..pipeline import BindWeavePipeline
from ..testing import build_tiny_release, tiny_transformer_kwargs
from .bench_config import DEFAULT_VIDEO, BenchConfig, BenchSize
from .config import apply_perf_config
from .cross_attention import context_kv_cache, install_fast_cross_attention
from .dit_timing import (
    DiTInputs,
    dit_inputs,
    dit_step,
    random_transformer,
    stock_forward,
    stock_wan_sharing_weights,
    time_calls,
)
from .memory import enable_fp8_weights
from .peak import KNOWN_PEAK_TFLOPS, resolve_peak_tflops
from .speed import compile_blocks, set_attention_backend

__all__ = [
    "DEFAULT_VIDEO",
    "KNOWN_PEAK_TFLOPS",
    "BenchConfig",
    "BenchResult",
    "BenchSize",
    "random_transformer",
    "resolve_peak_tflops",
    "run_bench",
    "stock_wan_sharing_weights",
]

MEDIUM_DIT = dict(
    num_attention_heads=8, attention_head_dim=128, ffn_dim=4096, num_layers=4, added_kv_proj_dim=1024
)


@dataclass(frozen=True)
class BenchResult:
    """Every figure of one bench run (printed by :meth:`report`)."""

    size: str
    device: str
    dtype: str
    video: str  # "F x H x W"
    dit_tokens: int  # self-attention tokens per sample, reference slots included
    context_tokens: int  # cross-attention context tokens of the positive branch
    forwards_per_step: int
    dit_step_seconds: float
    dit_step_tflop: float
    achieved_tflops: float
    peak_tflops: float
    peak_tflops_source: str  # given, a known GPU peak, or measured with a matmul
    mfu: float
    stock_step_seconds: float | None
    stock_achieved_tflops: float | None
    bindweave_over_stock: float | None
    end_to_end_seconds: float | None
    end_to_end_steps: int | None
    peak_memory_gib: float
    peak_memory_kind: str

    def report(self) -> str:
        """One ``name: value`` line per figure."""
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                value = f"{value:.6g}"
            lines.append(f"{f.name}: {'not measured' if value is None else value}")
        return "\n".join(lines)


def run_bench(config: BenchConfig) -> BenchResult:
    """Run the benchmark ``config`` describes and print its figures."""
    config.validate()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    height, width, num_frames = config.video()
    if config.size == "14b" and device.type != "cuda":
        raise ValueError("the 14b bench materialises 14B random weights: it needs a CUDA device")
    if config.size == "14b" and config.memory != "none":
        raise ValueError("the 14b bench is DiT-only and keeps it on the GPU: use --memory none")
    if config.context_parallel != "none":
        raise ValueError(
            "bench times one process; benchmark context parallelism with generate under torchrun"
        )
    peak = resolve_peak_tflops(config.peak_tflops, device, dtype)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with tempfile.TemporaryDirectory() as tmp:
        pipe, transformer = _build(config, device, dtype, Path(tmp))
        inputs = dit_inputs(
            transformer,
            height,
            width,
            num_frames,
            device,
            mllm_tokens=config.mllm_tokens,
            cfg=config.guidance != 1.0,
            seed=config.seed,
        )
        # Stock first, on the untouched weights (fp8 casting would change them in place).
        stock = _time_stock(transformer, inputs, config, device) if config.compare_stock else None
        _apply_options(pipe, transformer, config, device)
        # One sampling run's worth of reuse: the warm-up step projects the contexts, the timed steps reuse them.
        reuse = context_kv_cache(transformer) if config.context_kv_cache else contextlib.nullcontext()
        with reuse:
            step_seconds = time_calls(
                lambda: dit_step(transformer, inputs, config.guidance, config.batch_cfg),
                config.repeats,
                device,
            )
        end_to_end = _time_end_to_end(pipe, inputs, config, (height, width, num_frames), device)

    flops = inputs.flops_per_step
    achieved = flops / step_seconds / 1e12
    stock_seconds, stock_tflops = stock if stock is not None else (None, None)
    memory, memory_kind = _peak_memory_gib(device)
    result = BenchResult(
        size=config.size,
        device=_device_name(device),
        dtype=str(dtype).removeprefix("torch."),
        video=f"{num_frames} x {height} x {width}",
        dit_tokens=inputs.workload.tokens,
        context_tokens=inputs.workload.context_tokens,
        forwards_per_step=1 if inputs.uncond is None or config.batch_cfg else 2,
        dit_step_seconds=step_seconds,
        dit_step_tflop=flops / 1e12,
        achieved_tflops=achieved,
        peak_tflops=peak.tflops,
        peak_tflops_source=peak.source,
        mfu=achieved / peak.tflops,
        stock_step_seconds=stock_seconds,
        stock_achieved_tflops=stock_tflops,
        bindweave_over_stock=None if stock_seconds is None else step_seconds / stock_seconds,
        end_to_end_seconds=end_to_end,
        end_to_end_steps=None if end_to_end is None else config.steps,
        peak_memory_gib=memory,
        peak_memory_kind=memory_kind,
    )
    print(f"bindweave bench ({platform.node()}, torch {torch.__version__})")
    print(result.report())
    return result


# ---------------------------------------------------------------------------------------------- building


def _build(config: BenchConfig, device: torch.device, dtype: torch.dtype, tmp: Path):
    """``(pipeline or None, DiT on device)``: tiny encoders + a random DiT of the size, or the bare 14B DiT.

    The tiny and medium DiTs take the tiny encoders' widths (text, image and MLLM dims of 32).
    """
    if config.size == "14b":
        return None, random_transformer(BindWeaveTransformer3DModel.released_config(), device, dtype)
    kwargs = tiny_transformer_kwargs() | (MEDIUM_DIT if config.size == "medium" else {})
    release = build_tiny_release(tmp, seed=config.seed)
    pipe = BindWeavePipeline.from_released(
        release.wan, release.transformer, release.mllm, torch_dtype=dtype, **tiny_transformer_kwargs()
    )
    transformer = BindWeaveTransformer3DModel(**kwargs).to(device).eval()
    if dtype != torch.float32:
        transformer = transformer.to(dtype)
    pipe = BindWeavePipeline(**{**pipe.components, "transformer": transformer, "mllm": None})
    pipe.set_progress_bar_config(disable=True)
    return pipe, transformer


# ---------------------------------------------------------------------------------------------- timing


def _time_stock(transformer, inputs: DiTInputs, config: BenchConfig, device: torch.device):
    """``(seconds per step, TFLOP/s)`` of stock Wan on the same weights (:func:`.dit_timing.stock_forward`)."""
    step, flops = stock_forward(transformer, inputs, config.attention_backend)
    seconds = time_calls(step, config.repeats, device)
    return seconds, flops / seconds / 1e12


def _apply_options(pipe, transformer, config: BenchConfig, device: torch.device) -> None:
    """The configured options: on the whole pipeline, or on the bare 14B DiT those that concern it."""
    if pipe is not None:
        apply_perf_config(pipe, config, device)
        return
    if config.batch_cfg or config.context_kv_cache:
        install_fast_cross_attention(transformer)
    if config.attention_backend is not None:
        set_attention_backend(transformer, config.attention_backend)
    if config.fp8_weights:
        enable_fp8_weights(transformer, compute_dtype=transformer.dtype)
    if config.compile:
        compile_blocks(transformer, fullgraph=True)


def _time_end_to_end(
    pipe, inputs: DiTInputs, config: BenchConfig, video: tuple[int, int, int], device: torch.device
) -> float | None:
    """Seconds of one full pipeline call (after a warm-up call); ``None`` for the DiT-only 14b bench."""
    if pipe is None:
        return None
    height, width, num_frames = video
    rng = np.random.default_rng(config.seed)
    references = [PIL.Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))]

    def call() -> None:
        pipe(
            "a subject moves",
            references,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            mllm_hidden_states=inputs.cond.mllm,
            negative_mllm_hidden_states=None if inputs.uncond is None else inputs.uncond.mllm,
            generator=torch.Generator().manual_seed(config.seed),
        )

    return time_calls(call, 1, device)


# ---------------------------------------------------------------------------------------------- helpers


def _peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    # ru_maxrss is in KiB on Linux: the peak resident set of this process since it started.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS of the process"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
