"""The sampling loop's schedule: which timesteps a sampler visits and how it moves the latents between them.

:mod:`bindweave.samplers` names the samplers (torch-free, for the CLI); :mod:`bindweave.flow` has their
math; :meth:`bindweave.BindWeavePipeline.denoise` runs the loop with a :class:`SamplingPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from .flow import (
    euler_step,
    lcm_step,
    lightx2v_sampling_sigmas,
    released_sampling_sigmas,
    released_sigma_grid,
)
from .samplers import LIGHTX2V_SHIFT, Sampler

__all__ = ["SamplingPlan", "sampling_table", "set_released_timesteps"]


def set_released_timesteps(
    scheduler: UniPCMultistepScheduler, num_inference_steps: int, device: torch.device | None = None
) -> None:
    """Set ``scheduler`` to the released sigma table (diffusers 0.33.1's, spec 3) for this many steps.

    The grid is passed explicitly, so the table does not change with the installed diffusers; the table
    the scheduler ends up with is checked, so a diffusers that treats explicit sigmas differently fails
    here instead of silently sampling another table.
    """
    shift, train_steps = scheduler.config.flow_shift, scheduler.config.num_train_timesteps
    scheduler.set_timesteps(sigmas=released_sigma_grid(num_inference_steps, train_steps), device=device)
    sigmas, timesteps = released_sampling_sigmas(num_inference_steps, shift, train_steps)
    if not (
        torch.equal(scheduler.sigmas.cpu(), sigmas) and torch.equal(scheduler.timesteps.cpu(), timesteps)
    ):
        raise RuntimeError(
            f"{type(scheduler).__name__} of the installed diffusers did not take the released sigma "
            f"table (first timesteps {scheduler.timesteps[:3].tolist()}, expected "
            f"{timesteps[:3].tolist()}): the scheduler must shift explicit flow sigmas with flow_shift"
        )


def sampling_table(
    scheduler: UniPCMultistepScheduler, sampler: Sampler, num_inference_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas, timesteps)`` of a non-UniPC sampler: ``(steps + 1,)`` sigmas ending in 0, ``(steps,)``.

    The released table at the scheduler's ``flow_shift`` (the timesteps UniPC takes), or LightX2V's at
    shift 5 (:func:`bindweave.flow.lightx2v_sampling_sigmas`).
    """
    config = scheduler.config
    if sampler.table == "lightx2v":
        return lightx2v_sampling_sigmas(num_inference_steps, LIGHTX2V_SHIFT, config.num_train_timesteps)
    return released_sampling_sigmas(num_inference_steps, config.flow_shift, config.num_train_timesteps)


@dataclass
class SamplingPlan:
    """The timesteps ``sampler`` visits, and its update from one to the next.

    UniPC keeps its own sigmas and history in ``scheduler``; the Euler and LCM updates read ``sigmas``.
    """

    sampler: Sampler
    scheduler: UniPCMultistepScheduler
    timesteps: torch.Tensor  # (steps,) on the sampling device
    sigmas: torch.Tensor | None  # (steps + 1,) ending in 0; None for UniPC

    @classmethod
    def build(
        cls,
        sampler: Sampler,
        scheduler: UniPCMultistepScheduler,
        num_inference_steps: int,
        device: torch.device | None = None,
    ) -> SamplingPlan:
        if sampler.update == "unipc":
            set_released_timesteps(scheduler, num_inference_steps, device)
            return cls(sampler, scheduler, scheduler.timesteps, None)
        sigmas, timesteps = sampling_table(scheduler, sampler, num_inference_steps)
        return cls(sampler, scheduler, timesteps.to(device), sigmas)

    def step(
        self,
        i: int,
        latents: torch.Tensor,
        velocity: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The latents at step ``i + 1`` from those at step ``i`` and the velocity predicted there.

        ``generator`` draws the LCM update's fresh noise (unused by the others).
        """
        if self.sampler.update == "unipc":
            return self.scheduler.step(velocity, self.timesteps[i], latents, return_dict=False)[0]
        sigma, sigma_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        if self.sampler.update == "euler":
            return euler_step(latents, velocity, sigma, sigma_next)
        # LCM: fresh float32 noise for the next sigma, none after the last step (LightX2V's).
        last = i == len(self.timesteps) - 1
        noise = None if last else randn_tensor(
            latents.shape, generator=generator, device=latents.device, dtype=torch.float32
        )  # fmt: skip
        return lcm_step(latents, velocity, sigma, sigma_next, noise)
