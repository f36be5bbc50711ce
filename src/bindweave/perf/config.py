"""The speed and memory options of every generation job, and how they are applied to a pipeline.

:class:`PerfConfig` is a base of :class:`bindweave.generate.ModelConfig`, so each field is a CLI flag of
``generate``, ``run-manifest``, ``demo`` and ``bench``. Defaults give the reference computation, except
``batch_cfg``, which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import field
from .kinds import (
    RING_ATTENTION_BACKENDS,
    AttentionBackend,
    ContextParallelKind,
    MemoryMode,
    Precision,
    StepCacheKind,
)

if TYPE_CHECKING:  # the CLI builds its parsers from this module: keep diffusers out of its imports
    import torch

    from .caching import StepCacheSpec
    from .parallel import DistributedContext

__all__ = [
    "AttentionBackend",
    "ContextParallelKind",
    "MemoryMode",
    "PerfConfig",
    "Precision",
    "StepCacheKind",
    "apply_perf_config",
]


@dataclass(kw_only=True)
class PerfConfig:
    """How fast and how lean to run (docs/performance.md)."""

    memory: MemoryMode = field(
        "none",
        help="where weights live: none (all on the device), model-offload (one component at a time), "
        "group-offload (one DiT block at a time, prefetched), sequential (one layer at a time)",
    )
    fp8_weights: bool = field(False, help="store the DiT weights in float8 e4m3, upcast per layer (lossy)")
    vae_tiling: bool = field(False, help="decode the VAE in overlapping tiles (less memory; seams blended)")
    attention_backend: AttentionBackend | None = field(
        None, help="diffusers attention backend (default: native PyTorch SDPA)"
    )
    compile: bool = field(False, help="torch.compile the repeated DiT blocks (regional compilation)")
    batch_cfg: bool = field(
        True, help="run both CFG branches as one batch of 2 (exact; more activation memory)"
    )
    context_kv_cache: bool = field(
        False, help="compute the cross-attention K/V of the context once per video, not per step (exact)"
    )
    cache: StepCacheKind = field("none", help="step cache, lossy: first-block, mag or taylorseer")
    cache_threshold: float | None = field(
        None, help="first-block / mag skip threshold (default 0.05 / 0.06; 0 never skips first-block)"
    )
    cache_interval: int | None = field(None, help="taylorseer: steps between full forwards (default 5)")
    mag_ratios: Path | None = field(None, help="mag: this model's MagCache ratios, a JSON list")
    context_parallel: ContextParallelKind = field(
        "none", help="split each video over the torchrun ranks: ulysses or ring (needs WORLD_SIZE > 1)"
    )
    precision: Precision = field(
        "float32",
        help="float32: noise, latents, CFG and VAE in float32 (more exact); released: bf16 noise, latents, "
        "CFG and VAE as the release computes them (half the VAE memory)",
    )

    def validate_perf(self) -> None:
        """Combinations that cannot work, refused before any weights are loaded."""
        self.step_cache_spec()
        if self.compile and self.context_kv_cache:
            raise ValueError(
                "--context-kv-cache looks its projections up in Python: use it without --compile"
            )
        if self.context_parallel == "ring" and self.attention_backend not in RING_ATTENTION_BACKENDS:
            raise ValueError(
                f"ring attention needs an attention backend that returns the log-sum-exp: "
                f"--attention-backend {' / '.join(RING_ATTENTION_BACKENDS)} (or use --context-parallel ulysses)"
            )
        if self.context_parallel != "none" and self.memory != "none":
            raise ValueError(
                "--context-parallel keeps the DiT on every rank's GPU: use it with --memory none"
            )

    def step_cache_spec(self) -> StepCacheSpec | None:
        from .caching import StepCacheSpec, load_mag_ratios

        if self.cache == "none":
            for name in ("cache_threshold", "cache_interval", "mag_ratios"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name.replace('_', '-')} needs --cache")
            return None
        ratios = load_mag_ratios(self.mag_ratios) if self.mag_ratios is not None else None
        return StepCacheSpec(self.cache, self.cache_threshold, self.cache_interval, ratios)


def apply_perf_config(
    pipe, config: PerfConfig, device: torch.device, distributed: DistributedContext | None = None
) -> None:
    """Apply ``config`` to a freshly loaded pipeline and place it (on ``device`` or offloaded).

    The order matters: processors are swapped before the attention backend and the parallel config are
    handed to them; weights are cast to fp8 before they are offloaded; compilation comes last.
    """
    from .memory import apply_memory_mode, enable_fp8_weights
    from .speed import compile_blocks, set_attention_backend

    config.validate_perf()
    transformer = pipe.transformer
    pipe.enable_batched_cfg(config.batch_cfg)
    pipe.enable_context_kv_cache(config.context_kv_cache)
    if config.attention_backend is not None:
        set_attention_backend(transformer, config.attention_backend)
    if config.fp8_weights:
        enable_fp8_weights(transformer, compute_dtype=transformer.dtype)
    pipe.enable_step_cache(config.step_cache_spec())
    pipe.set_precision(config.precision)  # casts the VAE: before it is offloaded
    if config.context_parallel != "none":
        if distributed is None:
            raise ValueError("--context-parallel needs the torchrun process group (init_distributed)")
        pipe.to(distributed.device)
        pipe.enable_context_parallel(config.context_parallel, distributed.world_size)
    else:
        apply_memory_mode(pipe, config.memory, device)
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    if config.compile:
        compile_blocks(transformer, fullgraph=config.cache == "none")
