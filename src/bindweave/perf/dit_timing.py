"""The DiT side of the benchmarks: random weights of any size, one step's inputs, timing, the stock twin.

Shared by ``bindweave bench`` (:mod:`.bench`) and ``bindweave gpu-check`` (:mod:`bindweave.gpu_check`):
inputs have the release's shapes for a video size (umT5 512 tokens, 4 CLIP slots of 257 tokens, an MLLM
prompt of ``mllm_tokens``, the negative one 6 tokens longer), and FLOPs are counted analytically
(:mod:`.flops`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from ..conditioning.latents import latent_frame_count
from ..denoiser import Conditioning, guided_velocity
from ..models import BindWeaveTransformer3DModel
from .flops import DiTWorkload, dit_forward_flops
from .parallel import sequence_length
from .speed import set_attention_backend

__all__ = [
    "NEGATIVE_EXTRA_TOKENS",
    "DiTInputs",
    "dit_inputs",
    "dit_step",
    "random_transformer",
    "stock_forward",
    "stock_wan_sharing_weights",
    "synchronize",
    "time_calls",
]

NEGATIVE_EXTRA_TOKENS = 6  # the release's negative MLLM prompt has the motion suffix appended: 526 vs 532


def random_transformer(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """A BindWeave DiT of ``config`` with random weights, allocated directly on ``device`` in ``dtype``.

    Built on the meta device (no host copy of 14B parameters) with the dtypes ``from_pretrained`` would
    give (``_keep_in_fp32_modules`` in float32, the rest in ``dtype``), so the device holds one copy
    of the weights, then materialised: matrices ~ N(0, 0.02), vectors 0 (biases) or 1 (norm scales),
    RoPE tables recomputed.
    """
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = BindWeaveTransformer3DModel(**kwargs)
    keep_fp32 = model._keep_in_fp32_modules or []
    for name, param in model.named_parameters():  # still on meta: no memory
        keep = any(pattern in name.split(".") for pattern in keep_fp32)
        param.data = param.data.to(torch.float32 if keep else dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02)
            else:
                param.fill_(0.0 if name.endswith("bias") else 1.0)
    c = model.config
    model.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len).to(device)
    return model.eval()


@dataclass(frozen=True)
class DiTInputs:
    """Random inputs of one sampling step, with the release's shapes for the video size."""

    latents: torch.Tensor  # (1, z, F', h, w)
    timestep: torch.Tensor  # (1,)
    cond: Conditioning
    uncond: Conditioning | None  # None without CFG
    workload: DiTWorkload  # the positive branch's
    flops_per_step: int  # useful FLOPs of both branches (padding rows of batched CFG not counted)

    @property
    def branches(self) -> list[Conditioning]:
        return [self.cond] if self.uncond is None else [self.cond, self.uncond]

    def workload_of(self, branch: Conditioning) -> DiTWorkload:
        return replace(self.workload, mllm_tokens=branch.mllm.shape[1])


def dit_inputs(
    transformer,
    height: int,
    width: int,
    num_frames: int,
    device: torch.device,
    *,
    mllm_tokens: int = 526,
    cfg: bool = True,
    seed: int = 0,
) -> DiTInputs:
    """Seeded random inputs of one step at ``height x width x num_frames``; ``cfg``: a negative branch too."""
    c = transformer.config
    frames, h, w = latent_frame_count(num_frames, 4), height // 8, width // 8
    slots, dtype = c.num_reference_slots, transformer.dtype
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    cond = Conditioning(
        text=randn(1, 512, c.text_dim),
        image=randn(1, slots * c.image_context_tokens, c.image_dim),
        mllm=randn(1, mllm_tokens, c.mllm_dim),
        condition=randn(1, c.in_channels - c.out_channels, slots + frames, h, w),
    )
    uncond = None
    if cfg:
        negative_mllm = randn(1, mllm_tokens + NEGATIVE_EXTRA_TOKENS, c.mllm_dim)
        uncond = cond.with_prompt(randn(1, 512, c.text_dim), negative_mllm)
    workload = DiTWorkload(
        tokens=sequence_length(c, frames, h, w),
        image_branch_tokens=c.image_context_tokens,
        clip_tokens=slots * c.image_context_tokens,
        mllm_tokens=mllm_tokens,
    )
    inputs = DiTInputs(
        latents=randn(1, c.out_channels, frames, h, w),
        timestep=torch.full((1,), 500.0, device=device),
        cond=cond,
        uncond=uncond,
        workload=workload,
        flops_per_step=0,
    )
    flops = sum(dit_forward_flops(c, inputs.workload_of(branch)).total for branch in inputs.branches)
    return replace(inputs, flops_per_step=flops)


def dit_step(transformer, inputs: DiTInputs, guidance: float, batch_cfg: bool) -> torch.Tensor:
    """One sampling step's DiT work: both CFG branches, in one batched forward or two."""
    with torch.no_grad():
        return guided_velocity(
            transformer,
            inputs.latents,
            inputs.timestep,
            inputs.cond,
            inputs.uncond,
            guidance,
            batch_cfg=batch_cfg,
        )


def stock_forward(
    transformer, inputs: DiTInputs, attention_backend: str | None = None
) -> tuple[Callable[[], None], int]:
    """``(step, FLOPs)``: stock Wan's forwards of every branch, same weights, tokens and context length.

    Stock Wan takes the slots and the condition already concatenated, ``(1, 36, slots + F', h, w)``, and
    a text context of the same length as BindWeave's (``L + 512``, split by the stock processor at
    ``len - 512``); it has no connector, whose FLOPs are left out of its count.
    """
    stock = stock_wan_sharing_weights(transformer)
    if attention_backend is not None:
        set_attention_backend(stock, attention_backend)
    c = transformer.config
    latents = inputs.latents  # (1, z, F', h, w)
    slot_frames = latents.new_zeros(*latents.shape[:2], c.num_reference_slots, *latents.shape[3:])
    calls = []
    for branch in inputs.branches:
        hidden = torch.cat([torch.cat([slot_frames, latents], dim=2), branch.condition], dim=1)
        text = torch.cat([branch.mllm.new_zeros(1, branch.mllm.shape[1], c.text_dim), branch.text], dim=1)
        calls.append((hidden, text, branch.image))  # (1, 36, S+F', h, w), (1, L+512, text_dim), (1, S*257, D)

    def step() -> None:
        with torch.no_grad():
            for hidden, text, image in calls:
                stock(hidden, inputs.timestep, text, image, return_dict=False)

    flops = sum(dit_forward_flops(c, inputs.workload_of(b)).without_connector() for b in inputs.branches)
    return step, flops


def stock_wan_sharing_weights(transformer) -> torch.nn.Module:
    """Stock diffusers ``WanTransformer3DModel`` of the same config, sharing ``transformer``'s tensors."""
    bindweave_only = ("mllm_dim", "image_context_tokens", "num_reference_slots")
    kwargs = {
        k: v for k, v in transformer.config.items() if not k.startswith("_") and k not in bindweave_only
    }
    with torch.device("meta"):
        stock = WanTransformer3DModel(**kwargs)
    state = {k: v for k, v in transformer.state_dict().items() if ".text_projector." not in k}
    stock.load_state_dict(state, strict=True, assign=True)
    stock.rope = transformer.rope  # the non-persistent RoPE tables are not in the state dict
    return stock.eval()


def time_calls(step: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Mean seconds of ``step`` over ``repeats`` calls, after one warm-up call."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (CUDA runs them asynchronously; the CPU needs no wait)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
