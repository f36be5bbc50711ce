"""Rectified-flow math shared by sampling and training (spec 3 and 4), as small pure functions.

Convention: ``x_t = (1 - s) x_0 + s * eps`` with ``s`` in [0, 1] (``s = 1`` is pure noise), the model
predicts the velocity ``v = eps - x_0``, and timesteps are ``1000 * s``.

The sampler's sigma table is the one of diffusers 0.33.1, the version the release pins (spec 3): newer
diffusers space the flow sigmas differently (at 50 steps, 40 of the 50 timesteps differ by 1-3), so the
pipeline passes the released grid to the scheduler explicitly (:func:`released_sigma_grid`) and checks the
table it gets against :func:`released_sampling_sigmas`.

The few-step samplers of distillation LoRAs (:mod:`bindweave.samplers`) run on LightX2V's table
(:func:`lightx2v_sampling_sigmas`) with an Euler (:func:`euler_step`) or consistency (:func:`lcm_step`)
update; ``euler`` also runs on the released table.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

NUM_TRAIN_TIMESTEPS = 1000
SAMPLING_SHIFT = 3.0
TRAINING_SHIFT = 5.0


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift of flow sigmas: ``shift * s / (1 + (shift - 1) * s)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def training_sigmas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = TRAINING_SHIFT) -> torch.Tensor:
    """The training table: ``num_timesteps`` sigmas from 1 towards 0 (the final 0 dropped), shifted."""
    sigmas = torch.linspace(1.0, 0.0, num_timesteps + 1, dtype=torch.float64)[:-1]
    return shift_sigmas(sigmas, shift)


def released_sigma_grid(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """diffusers 0.33.1's unshifted flow-sigma grid for UniPC: ``num_steps`` values from ``1 - 1/T`` down.

    0.33.1 spaces ``alpha`` evenly over ``[1, 1/T]`` and takes ``1 - alpha`` (flipped, the final 0 dropped);
    diffusers >= 0.42 spaces the sigmas themselves over ``[1, 1/T]``. float64, as diffusers computes it.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    alphas = np.linspace(1, 1 / num_train_timesteps, num_steps + 1)
    return np.flip(1.0 - alphas)[:-1].copy()  # (num_steps,)


def released_sampling_sigmas(
    num_steps: int, shift: float = SAMPLING_SHIFT, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The released sampler's table (diffusers 0.33.1, spec 3): ``(sigmas, timesteps)``.

    ``sigmas``: ``(num_steps + 1,)`` float32, the shifted grid then a final 0; ``timesteps``: ``(num_steps,)``
    int64, ``T * sigma`` truncated. 50 steps at shift 3: 999, 992, 985, ..., 111, 57.
    """
    grid = released_sigma_grid(num_steps, num_train_timesteps)
    shifted = shift * grid / (1 + (shift - 1) * grid)  # float64, as diffusers' shift_sigmas
    sigmas = torch.from_numpy(np.append(shifted, 0.0).astype(np.float32))
    timesteps = torch.from_numpy((shifted * num_train_timesteps).astype(np.int64))
    return sigmas, timesteps


def lightx2v_step_list(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """LightX2V's ``denoising_step_list`` for ``num_steps``: ``[1000, 750, 500, 250]`` for 4, ``T (n - i) // n``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [num_train_timesteps * (num_steps - i) // num_steps for i in range(num_steps)]


def lightx2v_sampling_sigmas(
    num_steps: int, shift: float = 5.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The table LightX2V samples its Wan2.1 distillation LoRAs on: ``(sigmas, timesteps)``.

    LightX2V's ``WanStepDistillScheduler``: the training table (``T`` sigmas from 1 down, shifted), indexed
    at ``T - step`` for each step of :func:`lightx2v_step_list`, in float32 as there. ``sigmas``:
    ``(num_steps + 1,)`` float32 with a final 0; ``timesteps``: ``(num_steps,)`` float32, ``T * sigma``.
    4 steps at shift 5: sigmas 1, 0.9375, 0.8333, 0.625, 0.
    """
    table = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float32)[:-1]
    table = shift * table / (1 + (shift - 1) * table)
    index = [num_train_timesteps - step for step in lightx2v_step_list(num_steps, num_train_timesteps)]
    sigmas = table[index]
    return torch.cat([sigmas, sigmas.new_zeros(1)]), sigmas * num_train_timesteps


def predicted_sample(sample: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clean latents a velocity predicts at ``sigma``: ``x_0 = x_t - s * v``."""
    return sample - sigma * velocity


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One flow-matching Euler step from ``sigma`` to ``sigma_next``: ``x_0 + s' v``, i.e. ``x_t + (s' - s) v``.

    Computed in float32 as LightX2V does (``x_0`` first), returned in the sample's dtype.
    """
    v = velocity.float()
    return (predicted_sample(sample.float(), v, sigma) + sigma_next * v).to(sample.dtype)


def lcm_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float,
    sigma_next: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One consistency (LCM) step: the predicted ``x_0`` noised afresh to ``sigma_next`` with ``noise``.

    ``(1 - s') x_0 + s' eps``; the last step (``noise=None``) returns ``x_0``. All in float32 (LightX2V draws
    ``eps`` in float32 too), rounded once to the sample's dtype.
    """
    x0 = predicted_sample(sample.float(), velocity.float(), sigma)
    if noise is None:
        return x0.to(sample.dtype)
    return add_noise(x0, noise.float(), torch.tensor(sigma_next)).to(sample.dtype)


def sigma_to_timestep(sigmas: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    return sigmas * num_train_timesteps


def loss_weights(timesteps: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The released per-timestep loss weight over a timestep table.

    ``w(t) = exp(-2 ((t - T/2) / T)^2)``, minus its minimum over the table, scaled to sum to ``T``.
    """
    half = num_train_timesteps / 2
    weights = torch.exp(-2 * ((timesteps - half) / num_train_timesteps) ** 2)
    weights = weights - weights.min()
    return weights * (num_train_timesteps / weights.sum())


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - s) x_0 + s * eps``; ``sigma`` broadcasts over the batch dimension."""
    sigma = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target ``v = eps - x_0``."""
    return noise - x0


def apply_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_uncond + scale * (v_cond - v_uncond)``."""
    return uncond + scale * (cond - uncond)


def sampling_scheduler(flow_shift: float = SAMPLING_SHIFT) -> UniPCMultistepScheduler:
    """The released sampler: UniPC multistep (bh2, order 2) on shifted flow sigmas, final sigma 0.

    Its own ``set_timesteps(n)`` gives the installed diffusers' table; the pipeline sets the released one
    (:func:`bindweave.sampling.set_released_timesteps`).
    """
    return UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
