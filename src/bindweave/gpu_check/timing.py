"""Seconds of a DiT forward with the real shapes, ours against stock diffusers Wan on the same weights.

A randomly initialised DiT of the target config (the released 14B: dim 5120, 40 heads, ffn 13824, bf16)
but ``timing_layers`` blocks runs on the real token count (720p x 81 frames: 21 latent frames + 4 reference
slots, 90,000 tokens) and context lengths (umT5 512, 4 x 257 CLIP tokens, a 526-token MLLM prompt; the
negative one 532). The figures at the model's own depth assume the achieved TFLOP/s of the timed depth:
seconds scale with the FLOPs (:mod:`bindweave.perf.flops`), i.e. almost exactly with the block count, since
the blocks hold all but ~0.1 % of the work. MFU is against the measured bf16 matmul peak of this device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ..models import BindWeaveTransformer3DModel
from ..perf.bench_config import DEFAULT_VIDEO
from ..perf.cross_attention import install_fast_cross_attention
from ..perf.dit_timing import dit_inputs, dit_step, random_transformer, stock_forward, time_calls
from ..perf.flops import dit_forward_flops
from ..perf.peak import KNOWN_PEAK_TFLOPS, MATMUL_SIDE, measure_matmul_tflops
from ..testing import tiny_transformer_kwargs
from .config import GpuCheckSize

__all__ = ["TimingResult", "target_config", "time_dit"]

MLLM_TOKENS = 526  # the release's positive prompt for its `singleface` case (spec 3)
GUIDANCE = 5.0  # the paper's CFG scale


def target_config(size: GpuCheckSize) -> dict[str, Any]:
    """The DiT config whose figures are reported: the released 14B one, or the tiny test DiT's."""
    if size == "14b":
        return BindWeaveTransformer3DModel.released_config()
    return tiny_transformer_kwargs()


@dataclass(frozen=True)
class TimingResult:
    """The timing part's figures (seconds at the model's depth unless the name says ``timed``)."""

    video: str  # "F x H x W"
    dtype: str
    tokens: int  # self-attention tokens, reference slots included
    context_tokens: int  # cross-attention context of the positive branch
    layers: int  # the model's blocks
    timed_layers: int  # the blocks that ran
    depth_scale: float  # model FLOPs / timed FLOPs of one forward: what timed seconds are multiplied by
    repeats: int
    timed_forward_seconds: float
    timed_stock_forward_seconds: float
    forward_seconds: float
    stock_forward_seconds: float
    bindweave_over_stock: float
    forward_tflop: float  # of the model at its depth
    achieved_tflops: float
    matmul_peak_tflops: float  # measured: a large bf16 matmul on this device
    datasheet_peak_tflops: float | None  # the known dense bf16 peak of this GPU, for comparison
    mfu: float  # achieved / measured matmul peak
    cfg_step_seconds: float  # both branches, batched (the default --batch-cfg)
    cfg_step_measured: bool  # False: estimated as twice the forward (the time budget ran out)
    predicted_50_steps_cfg_seconds: float
    predicted_4_steps_no_cfg_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_dit(
    size: GpuCheckSize,
    device: torch.device,
    *,
    timing_layers: int,
    repeats: int,
    time_budget: float,
    seed: int = 0,
) -> TimingResult:
    """Time the DiT of ``size`` with ``timing_layers`` blocks on ``device`` (bf16 on CUDA, float32 on CPU)."""
    start = time.perf_counter()
    config = target_config(size)
    layers = config["num_layers"]
    timed = {**config, "num_layers": min(timing_layers, layers)}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    height, width, num_frames = DEFAULT_VIDEO[size]
    transformer = random_transformer(timed, device, dtype)
    install_fast_cross_attention(transformer)  # what the pipeline runs by default (--batch-cfg)
    single = dit_inputs(
        transformer, height, width, num_frames, device, mllm_tokens=MLLM_TOKENS, cfg=False, seed=seed
    )
    forward = time_calls(lambda: dit_step(transformer, single, 1.0, batch_cfg=True), repeats, device)
    stock_step, _ = stock_forward(transformer, single)
    stock = time_calls(stock_step, repeats, device)

    # The CFG step is 2 forwards' work in one batch; time it if the budget allows (warm-up + 1 call).
    cfg_measured = time.perf_counter() - start + 4 * forward <= time_budget
    if cfg_measured:
        both = dit_inputs(
            transformer, height, width, num_frames, device, mllm_tokens=MLLM_TOKENS, cfg=True, seed=seed
        )
        cfg_step = time_calls(lambda: dit_step(transformer, both, GUIDANCE, batch_cfg=True), 1, device)
    else:
        cfg_step = 2 * forward

    scale, stock_scale = _depth_scales(transformer, single, layers)
    flops = single.flops_per_step * scale
    matmul_peak = measure_matmul_tflops(device, dtype, MATMUL_SIDE.get(device.type, MATMUL_SIDE["cpu"]))
    achieved = single.flops_per_step / forward / 1e12
    return TimingResult(
        video=f"{num_frames} x {height} x {width}",
        dtype=str(dtype).removeprefix("torch."),
        tokens=single.workload.tokens,
        context_tokens=single.workload.context_tokens,
        layers=layers,
        timed_layers=timed["num_layers"],
        depth_scale=scale,
        repeats=repeats,
        timed_forward_seconds=forward,
        timed_stock_forward_seconds=stock,
        forward_seconds=forward * scale,
        stock_forward_seconds=stock * stock_scale,
        bindweave_over_stock=forward / stock,
        forward_tflop=flops / 1e12,
        achieved_tflops=achieved,
        matmul_peak_tflops=matmul_peak,
        datasheet_peak_tflops=_datasheet_peak(device),
        mfu=achieved / matmul_peak,
        cfg_step_seconds=cfg_step * scale,
        cfg_step_measured=cfg_measured,
        predicted_50_steps_cfg_seconds=50 * cfg_step * scale,
        predicted_4_steps_no_cfg_seconds=4 * forward * scale,
    )


def _depth_scales(transformer, inputs, layers: int) -> tuple[float, float]:
    """FLOPs of one forward at ``layers`` blocks over those at the timed depth: ours, and stock's (no connector)."""
    timed = dit_forward_flops(transformer.config, inputs.workload)
    full = dit_forward_flops(SimpleNamespace(**{**transformer.config, "num_layers": layers}), inputs.workload)
    return full.total / timed.total, full.without_connector() / timed.without_connector()


def _datasheet_peak(device: torch.device) -> float | None:
    """This GPU's known dense bf16 peak (:data:`bindweave.perf.peak.KNOWN_PEAK_TFLOPS`), else ``None``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for pattern, peak in KNOWN_PEAK_TFLOPS if pattern in name), None)
