"""The samplers a video can be generated with: the released UniPC, and few-step samplers for distillation LoRAs.

A torch-free leaf module: the CLI offers :data:`SamplerKind` as the ``--sampler`` choices without importing
torch. The math is in :mod:`bindweave.flow`; :meth:`bindweave.BindWeavePipeline.denoise` runs it.

- ``unipc`` (default): the released sampler, UniPC (bh2, order 2) on the released sigma table (spec 3),
  at the scheduler's ``flow_shift`` (3). Steps and guidance: the model's own (50 and 5.0 when released).
- ``euler``: flow-matching Euler on the same table: the same timesteps as ``unipc``, a first-order update.
  The baseline that tells the sampler's share of a few-step result from the table's.
- ``lightx2v``: the sampler LightX2V runs its Wan2.1 step- and CFG-distillation LoRAs with
  (``wan2.1_i2v_lora_rank64_lightx2v_4step`` and the repackaged rank 4-256 variants): the timesteps of the
  step list ``[1000, 750, 500, 250]`` on LightX2V's training table at shift 5 (sigmas 1, 0.9375, 0.8333,
  0.625), an Euler update, and no CFG (guidance 1). Default 4 steps; ``n`` steps take the step list
  ``1000 * (n - i) // n``. Sources: LightX2V's ``configs/distill/wan21/wan_i2v_distill_lora_4step_cfg.json``
  (``denoising_step_list``, ``sample_shift: 5``, ``enable_cfg: false``) and
  ``lightx2v/models/schedulers/wan/step_distill/scheduler.py`` (``WanStepDistillScheduler``; its update is
  the Euler step since November 2025, commit 753a494).
- ``lightx2v-lcm``: the same table and guidance with the consistency ("LCM") update: predict the clean
  latents, then noise them afresh to the next sigma. What LightX2V's scheduler did from July to November
  2025 (commit 6af1958, "Use CM scheduler for distill_models as default") and what its documentation
  still recommends ("we recommend using LCM Scheduler"); ComfyUI's ``lcm`` sampler computes the same
  update. The fresh noise is drawn from the run's generator, so a seed still gives one video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LIGHTX2V_SHIFT", "LIGHTX2V_STEPS", "SAMPLERS", "Sampler", "SamplerKind", "get_sampler"]

SamplerKind = Literal["unipc", "euler", "lightx2v", "lightx2v-lcm"]

#: LightX2V's Wan2.1 distillation settings (``sample_shift``, the length of ``denoising_step_list``).
LIGHTX2V_SHIFT = 5.0
LIGHTX2V_STEPS = 4


@dataclass(frozen=True)
class Sampler:
    """How a sampler steps, on which table, and the steps and guidance it defaults to."""

    name: str
    update: Literal["unipc", "euler", "lcm"]
    table: Literal["released", "lightx2v"]
    default_steps: int | None  # None: the model's own (default_num_inference_steps)
    default_guidance: float | None  # None: the model's own; 1.0 for samplers of CFG-distilled LoRAs
    summary: str

    @property
    def cfg_distilled(self) -> bool:
        """Made for LoRAs distilled without CFG: guidance above 1 is not what they were trained for."""
        return self.default_guidance == 1.0


SAMPLERS: dict[str, Sampler] = {
    "unipc": Sampler("unipc", "unipc", "released", None, None, "the released UniPC"),
    "euler": Sampler("euler", "euler", "released", None, None, "Euler on the released table"),
    "lightx2v": Sampler(
        "lightx2v", "euler", "lightx2v", LIGHTX2V_STEPS, 1.0, "LightX2V's 4-step Euler, shift 5, no CFG"
    ),
    "lightx2v-lcm": Sampler(
        "lightx2v-lcm", "lcm", "lightx2v", LIGHTX2V_STEPS, 1.0, "LightX2V's 4-step LCM, shift 5, no CFG"
    ),
}


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; a ``ValueError`` naming the choices for any other name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
