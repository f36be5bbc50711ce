"""Processes and sharding: ``torchrun`` environment, FSDP2, and the few collectives the trainer needs.

One code path for every layout: a plain ``python`` process is world size 1 with no process group; under
``torchrun`` (one node or many) every rank joins the default group (NCCL on GPUs, gloo on CPUs) and the
transformer is sharded with FSDP2 (``fully_shard`` on each transformer block, then on the root).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from .config import DistributedConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "global_grad_norm",
    "has_fast_bf16",
    "init_distributed",
    "shard_transformer",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False  # this context created the default group (and should destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init_distributed(timeout_minutes: float = 30.0, *, group_of_one: bool = False) -> DistributedContext:
    """Join the ``torchrun`` job described by the environment, or describe this lone process.

    The device is ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU (gloo backend). A lone process
    gets a process group of its own only with ``group_of_one`` (FSDP2 needs one to shard over).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = (world_size > 1 or group_of_one) and not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A group of one needs no rendezvous: an in-memory store works with or without torchrun's variables.
        store = {"store": dist.HashStore(), "rank": 0, "world_size": 1} if world_size == 1 else {}
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
            **store,
        )
        logger.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_process_group=owns
    )


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device``: off the CPU, yes; on it, only with oneDNN's bf16
    kernels (AVX-512 and up). Otherwise it is emulated: the toy DiT's step took 7x fp32's on an AVX2 CPU."""
    return device.type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The mean of ``value`` over ranks (a copy; ``value`` itself is left alone)."""
    value = value.detach().clone()
    if ctx.is_distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value


def all_reduce_sum(value: int, ctx: DistributedContext) -> int:
    if not ctx.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def global_grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The L2 norm of all of ``params``' gradients (over every shard), before clipping them to ``max_norm``."""
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def device_mesh(ctx: DistributedContext, config: DistributedConfig) -> DeviceMesh:
    """1-D mesh (shard over all ranks) or, with ``shard_group_size``, 2-D (replicate, shard) for HSDP."""
    group = config.shard_group_size or ctx.world_size
    if ctx.world_size % group:
        raise ValueError(
            f"distributed.shard_group_size={group} does not divide the world size {ctx.world_size}"
        )
    if group == ctx.world_size:
        return init_device_mesh(ctx.device.type, (ctx.world_size,), mesh_dim_names=("shard",))
    return init_device_mesh(
        ctx.device.type, (ctx.world_size // group, group), mesh_dim_names=("replicate", "shard")
    )


def shard_transformer(
    transformer: torch.nn.Module,
    ctx: DistributedContext,
    config: DistributedConfig,
    compute_dtype: torch.dtype | None,
) -> torch.nn.Module:
    """Shard ``transformer`` in place with FSDP2: each block, then the root (embedders, head).

    With ``compute_dtype`` (bf16) the weights are gathered in that dtype while the sharded float32
    master copies stay the optimizer's and gradients are reduced in float32. Forward inputs are not
    cast: the trainer runs the forward under autocast, so the timestep reaches the sinusoidal
    embedding in float32, exactly as at inference (a bf16 timestep would be off by up to 4 near 1000).
    """
    mesh = device_mesh(ctx, config)
    logger.info(
        "FSDP2: sharding the DiT over %d rank(s), %s on %s", ctx.world_size, dist.get_backend(), ctx.device
    )
    mixed = (
        MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
        if compute_dtype is not None
        else MixedPrecisionPolicy()
    )
    options = {"mesh": mesh, "mp_policy": mixed, "reshard_after_forward": config.reshard_after_forward}
    for block in transformer.blocks:
        fully_shard(block, **options)
    fully_shard(transformer, **options)
    return transformer
