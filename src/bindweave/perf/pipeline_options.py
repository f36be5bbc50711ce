"""The pipeline's speed and precision options: the methods ``BindWeavePipeline`` gets from this mixin.

Each option is set once on a pipeline and read by its denoising loop; none changes the weights, except
``set_precision("released")``, which casts the VAE.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry

from .caching import StepCacheSpec
from .cross_attention import install_fast_cross_attention
from .kinds import Precision
from .parallel import ContextParallelKind, enable_context_parallel

#: dtype of the noise, the latents through the sampler, the CFG combination and the VAE (spec 3).
PRECISION_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "released": torch.bfloat16}


class SpeedOptionsMixin:
    """Batched CFG, the context K/V cache, step caches, context parallelism and the sampling precision."""

    transformer: torch.nn.Module
    vae: torch.nn.Module

    def _init_speed_options(self) -> None:
        """Every option off: the released computation in float32."""
        self._batch_cfg = False
        self._context_kv_cache = False
        self._step_cache: StepCacheSpec | None = None
        self._step_cache_steps: int | None = None
        self._context_parallel_degree = 1
        self._sampling_dtype = torch.float32  # set_precision

    def enable_batched_cfg(self, enabled: bool = True) -> None:
        """Run the two CFG branches as one batch of 2: the same velocities, one forward per step.

        Exact although the branches' MLLM states differ in length: each sample's cross-attention skips its
        own padding rows (:mod:`bindweave.perf.cross_attention`). Costs the activations of a second sample.
        """
        if enabled:
            install_fast_cross_attention(self.transformer)
        self._batch_cfg = enabled

    def enable_context_kv_cache(self, enabled: bool = True) -> None:
        """Compute each block's cross-attention K/V of the context once per video instead of once per step.

        Exact (a cached projection is only used for a bitwise-equal context); keeps the projections of
        every block and branch for the run: ``2 x layers x (context tokens) x 2 x dim`` values.
        """
        if enabled:
            install_fast_cross_attention(self.transformer)
        self._context_kv_cache = enabled

    def enable_step_cache(self, spec: StepCacheSpec | None) -> None:
        """Use a diffusers step cache (lossy, opt-in; :mod:`bindweave.perf.caching`); ``None`` turns it off."""
        if self.transformer.is_cache_enabled:
            self.transformer.disable_cache()
        self._step_cache = None if spec is None or spec.kind == "none" else spec
        self._step_cache_steps = None

    def enable_context_parallel(self, kind: ContextParallelKind, degree: int) -> None:
        """Split each video's DiT sequence over ``degree`` torchrun ranks (:mod:`bindweave.perf.parallel`).

        Call once the pipeline is on this rank's device; every rank then runs the same call.
        """
        enable_context_parallel(self.transformer, kind, degree)
        self._context_parallel_degree = degree

    def set_precision(self, precision: Precision) -> None:
        """Where the sampling runs in float32 (the default) or in bf16 as the release does (spec 3).

        ``"float32"``: float32 noise, latents through the sampler, CFG combination and VAE; the more exact
        choice. ``"released"``: bf16 noise drawn on the generator's device, bf16 latents through UniPC, a
        bf16 CFG combination and a bf16 VAE (encode and decode), as the released pipeline computes. The VAE
        is cast: going back to ``"float32"`` after ``"released"`` keeps its bf16-rounded weights.
        """
        if precision not in PRECISION_DTYPES:
            raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
        self._sampling_dtype = PRECISION_DTYPES[precision]
        if self.vae.dtype != self._sampling_dtype:
            # torch's own ``to``: diffusers' ModelMixin.to warns about float32-kept modules on every dtype
            # cast, also for a model that keeps none, as the Wan VAE.
            torch.nn.Module.to(self.vae, dtype=self._sampling_dtype)

    def _prepare_step_cache(self, num_inference_steps: int) -> None:
        """Apply the step cache for this many steps, starting from an empty cache state."""
        spec, transformer = self._step_cache, self.transformer
        if spec is None:
            return
        stale = spec.depends_on_steps and self._step_cache_steps != num_inference_steps
        if transformer.is_cache_enabled and stale:
            transformer.disable_cache()
        if not transformer.is_cache_enabled:
            transformer.enable_cache(spec.config(num_inference_steps))
            self._step_cache_steps = num_inference_steps
        # A run must not start from the previous run's cached residuals (``denoise`` may be called alone).
        HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks()
