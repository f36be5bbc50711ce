"""Opt-in step caches (lossy): skip DiT work on steps whose output barely changes, via diffusers' hooks.

All three are diffusers' own cache hooks (``transformer.enable_cache``). They sit on the transformer
blocks (``WanTransformerBlock``) and ``proj_out``, never on the BindWeave forward, so its extra
arguments (``mllm_hidden_states``, ``condition``) do not reach them. Their state is kept per diffusers
cache context, and :func:`bindweave.denoiser.guided_velocity` runs each CFG branch in its own context
(``cond``, ``uncond``, or ``cond_uncond`` when batched): a branch is only ever compared with itself.

- ``first-block``: First Block Cache. Each step runs block 0; when its residual moved less than
  ``threshold`` (relative L1) since the last full step, the other blocks are skipped and their cached
  residual added. ``threshold=0`` never skips.
- ``mag``: MagCache. Skips while the accumulated error predicted by per-step magnitude ratios stays under
  ``threshold``. The ratios are model dependent: measure them with :func:`calibrate_mag_ratios`.
- ``taylorseer``: TaylorSeer, lite variant: every ``interval`` steps a full forward; in between all
  blocks are skipped and ``proj_out``'s output is extrapolated by a first-order Taylor series. (The full
  variant keeps factors of every attention output: hundreds of GB at 720p.) ``interval=1`` never skips.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from .kinds import StepCacheKind

__all__ = [
    "StepCacheKind",
    "StepCacheSpec",
    "calibrate_mag_ratios",
    "load_mag_ratios",
    "save_mag_ratios",
]

DEFAULT_THRESHOLDS = {"first-block": 0.05, "mag": 0.06}
DEFAULT_TAYLORSEER_INTERVAL = 5
DEFAULT_TAYLORSEER_WARMUP = 3  # full steps before the first prediction (diffusers' default)


@dataclass(frozen=True)
class StepCacheSpec:
    """Which step cache to use, independent of the number of steps (MagCache's config needs it).

    Args:
        kind: the cache.
        threshold: ``first-block`` / ``mag`` skip threshold (default 0.05 / 0.06).
        interval: ``taylorseer`` steps between full forwards (default 5).
        mag_ratios: ``mag`` per-step magnitude ratios of this model (:func:`calibrate_mag_ratios`).
    """

    kind: StepCacheKind
    threshold: float | None = None
    interval: int | None = None
    mag_ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and self.threshold < 0:
            raise ValueError(f"cache threshold must be >= 0, got {self.threshold}")
        if self.interval is not None and self.interval < 1:
            raise ValueError(f"cache interval must be >= 1, got {self.interval}")
        if self.threshold is not None and self.kind not in DEFAULT_THRESHOLDS:
            raise ValueError(f"--cache-threshold applies to first-block and mag, not {self.kind}")
        if self.interval is not None and self.kind != "taylorseer":
            raise ValueError(f"--cache-interval applies to taylorseer, not {self.kind}")
        if self.kind == "mag" and not self.mag_ratios:
            raise ValueError(
                "MagCache needs this model's magnitude ratios (--mag-ratios, a JSON list): measure them once "
                "with bindweave.perf.caching.calibrate_mag_ratios"
            )

    @property
    def depends_on_steps(self) -> bool:
        return self.kind == "mag"

    def config(self, num_inference_steps: int) -> Any:
        """The diffusers cache config for a run of ``num_inference_steps`` (``None`` for ``none``)."""
        if self.kind == "none":
            return None
        if self.kind == "first-block":
            return FirstBlockCacheConfig(threshold=self._threshold())
        if self.kind == "mag":
            return MagCacheConfig(
                threshold=self._threshold(),
                num_inference_steps=num_inference_steps,
                mag_ratios=torch.tensor(self.mag_ratios),  # interpolated to num_inference_steps
            )
        return TaylorSeerCacheConfig(
            cache_interval=self.interval or DEFAULT_TAYLORSEER_INTERVAL,
            disable_cache_before_step=DEFAULT_TAYLORSEER_WARMUP,
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        )

    def _threshold(self) -> float:
        return DEFAULT_THRESHOLDS[self.kind] if self.threshold is None else self.threshold


def load_mag_ratios(path: Path) -> tuple[float, ...]:
    """A JSON list of positive floats, as :func:`save_mag_ratios` writes."""
    ratios = json.loads(Path(path).read_text())
    if not isinstance(ratios, list) or not ratios or not all(isinstance(r, (int, float)) for r in ratios):
        raise ValueError(f"{path} must hold a non-empty JSON list of numbers (MagCache ratios)")
    return tuple(float(r) for r in ratios)


def save_mag_ratios(ratios: list[float], path: Path) -> Path:
    Path(path).write_text(json.dumps([round(r, 6) for r in ratios]) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------------------------- MagCache


class _ResidualState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.head_input: torch.Tensor | None = None  # (B, N, D) input of the first block
        self.previous_residual: torch.Tensor | None = None  # (B, N, D) residual of the previous step


class _HeadInputHook(ModelHook):
    """Remembers the first block's input hidden states, per cache context."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager):
        super().__init__()
        self.state_manager = state_manager

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.state_manager.get_state().head_input = hidden_states
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class _ResidualRatioHook(ModelHook):
    """Records ``mean_tokens(|r_t| / |r_{t-1}|)`` of the residual ``r`` = last block output - first block input.

    The ratio of MagCache's calibration mode (``MagCacheBlockHook._perform_calibration_step``), recorded
    per cache context in :attr:`ratios`, which outlives the pipeline's end-of-call state reset.
    """

    _is_stateful = True

    def __init__(self, state_manager: StateManager):
        super().__init__()
        self.state_manager = state_manager
        self.ratios: dict[str, list[float]] = {}

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        state: _ResidualState = self.state_manager.get_state()
        residual = (output - state.head_input).float()  # (B, N, D)
        if state.previous_residual is None:
            ratio = 1.0
        else:
            ratio = (residual.norm(dim=-1) / (state.previous_residual.norm(dim=-1) + 1e-8)).mean().item()
        self.ratios.setdefault(self.state_manager.context.name, []).append(ratio)
        state.previous_residual = residual
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


_HEAD_HOOK, _TAIL_HOOK = "bindweave_mag_calibration_head", "bindweave_mag_calibration_tail"


def calibrate_mag_ratios(
    transformer: torch.nn.Module, run: Callable[[], Any], branch: str = "cond"
) -> list[float]:
    """Measure MagCache's per-step magnitude ratios of ``transformer`` over one uncached sampling run.

    Args:
        transformer: the BindWeave DiT (no step cache enabled).
        run: runs the sampling once, e.g. ``lambda: pipe(prompt, refs, num_inference_steps=50)``.
        branch: the cache context whose ratios to return (``cond``; ``cond_uncond`` with batched CFG).

    Returns:
        One ratio per step, the first 1.0; pass them to ``StepCacheSpec("mag", mag_ratios=...)``.
    """
    if getattr(transformer, "is_cache_enabled", False):
        raise ValueError("calibrate MagCache ratios without a step cache enabled")
    state_manager = StateManager(_ResidualState)
    head = HookRegistry.check_if_exists_or_initialize(transformer.blocks[0])
    tail = HookRegistry.check_if_exists_or_initialize(transformer.blocks[-1])
    recorder = _ResidualRatioHook(state_manager)
    head.register_hook(_HeadInputHook(state_manager), _HEAD_HOOK)
    tail.register_hook(recorder, _TAIL_HOOK)
    root = HookRegistry.check_if_exists_or_initialize(transformer)
    root.invalidate_child_registries_cache()  # so cache_context reaches the new hooks
    try:
        run()
    finally:
        head.remove_hook(_HEAD_HOOK, recurse=False)
        tail.remove_hook(_TAIL_HOOK, recurse=False)
        root.invalidate_child_registries_cache()
    ratios = recorder.ratios.get(branch)
    if not ratios:
        raise ValueError(f"no forward ran in cache context {branch!r}; recorded: {sorted(recorder.ratios)}")
    return ratios
