"""Multi-GPU generation: context parallelism of one video, through diffusers' ``enable_parallelism``.

``WanTransformer3DModel._cp_plan``, which :class:`~bindweave.models.BindWeaveTransformer3DModel` inherits,
splits the sequence the stock forward builds and gathers it at ``proj_out``:

- ``rope`` outputs and ``blocks.0``'s ``hidden_states`` are split along the token dimension. The BindWeave
  forward hands the stock forward the latents *with* the reference slots, so the split sequence is the
  patchified ``(slots + F) x h/2 x w/2`` tokens, slot tokens first, with the matching RoPE positions;
- self-attention (``WanAttnProcessor``) gets the parallel config: Ulysses (all-to-all over heads) or
  ring (K/V passed around); cross-attention does not: every rank holds the whole context, and the
  BindWeave cross-attention processors pass ``parallel_config=None``;
- ``proj_out``'s output is all-gathered, so the slot frames are dropped, after the stock forward
  returns, from the full sequence.

The split is equal (``EquipartitionSharder``): the token count must be divisible by the world size
(:func:`check_sequence_split`), and Ulysses also needs the head count divisible by it. The 720p job has
25 x 45 x 80 = 90,000 tokens, divisible by 2, 3, 4, 5, 6, 8; 40 heads allow Ulysses degree 2, 4, 5, 8.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

from ..models import BindWeaveTransformer3DModel
from .kinds import ContextParallelKind

__all__ = [
    "ContextParallelKind",
    "DistributedContext",
    "check_sequence_split",
    "enable_context_parallel",
    "init_distributed",
    "sequence_length",
]


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device


def init_distributed() -> DistributedContext:
    """The torchrun process group (NCCL on CUDA, else gloo), initialised once; this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        raise ValueError(
            "context parallelism runs under torchrun with more than one process (WORLD_SIZE > 1)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def enable_context_parallel(
    transformer: BindWeaveTransformer3DModel, kind: ContextParallelKind, degree: int
) -> ContextParallelConfig:
    """Split every video's sequence over ``degree`` ranks with Ulysses or ring attention.

    Run after the model is on its device and after any attention processor swap or backend choice
    (diffusers hands the parallel config to the processors present at this call).
    """
    if kind == "ulysses":
        heads = transformer.config.num_attention_heads
        if heads % degree:
            raise ValueError(
                f"Ulysses needs the {heads} attention heads divisible by the degree, got {degree}"
            )
        config = ContextParallelConfig(ulysses_degree=degree)
    elif kind == "ring":
        config = ContextParallelConfig(ring_degree=degree)
    else:
        raise ValueError(f"unknown context parallelism {kind!r}; choose ulysses or ring")
    transformer.enable_parallelism(config=config)
    return config


def sequence_length(config, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Self-attention tokens of one video: ``(slots + F) * h/p_h * w/p_w`` (the reference slots included)."""
    p_t, p_h, p_w = config.patch_size
    frames = config.num_reference_slots + latent_frames
    return (frames // p_t) * (latent_height // p_h) * (latent_width // p_w)


def check_sequence_split(
    config, latent_frames: int, latent_height: int, latent_width: int, world_size: int
) -> int:
    """The per-rank token count; a clear error where diffusers' equal split would assert."""
    tokens = sequence_length(config, latent_frames, latent_height, latent_width)
    if tokens % world_size:
        raise ValueError(
            f"context parallelism splits the {tokens} video tokens equally over {world_size} ranks, which does "
            f"not divide them; choose a size whose (slots + latent frames) x h/16 x w/16 is a multiple of "
            f"{world_size}"
        )
    return tokens // world_size
