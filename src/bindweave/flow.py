"""Rectified-flow math shared by sampling and training (spec 3 and 4), as small pure functions.

Convention: ``x_t = (1 - s) x_0 + s * eps`` with ``s`` in [0, 1] (``s = 1`` is pure noise), the model
predicts the velocity ``v = eps - x_0``, and timesteps are ``1000 * s``.
"""

from __future__ import annotations

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
    """The released sampler: UniPC multistep (bh2, order 2) on shifted flow sigmas, final sigma 0."""
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
