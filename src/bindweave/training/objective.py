"""The training objective: rectified flow with the released timestep table and loss weights (spec 4),
and the stage's learning-rate schedule (linear warmup, then constant: :func:`build_lr_scheduler`).

- The table: 1000 sigmas from 1 to 0 shifted with shift 5 (:func:`bindweave.flow.training_sigmas`),
  timesteps ``1000 s'``; a sample's timestep is a uniformly drawn index into it. (``shift`` and
  ``loss_weighting`` change that for small models: :class:`~bindweave.training.config.ObjectiveConfig`.)
- ``x_t = (1 - s) x_0 + s eps`` and the target ``v = eps - x_0`` (:mod:`bindweave.flow`, shared with
  the sampler); the prediction is :func:`bindweave.denoiser.predict_velocity`, the sampler's call.
- Loss: the MSE over the video latents (the model already drops the reference slots), per sample,
  times the released weight of its timestep (:func:`bindweave.flow.loss_weights`; or 1), averaged.
  With ``subject_weight`` w != 1 (not in the release) each sample's MSE is a weighted mean instead: a
  latent element its subject mask marks counts w times a background one, so small subjects are not
  drowned by the background they sit on.
- A batch whose MLLM states were padded to its longest clip carries a
  :class:`~bindweave.perf.cross_attention.ContextPadding`; each sample's cross-attention must skip its
  padding rows, so the loss requires the caller to be inside ``padded_context`` for it (a scope the
  caller keeps open over the backward too, where gradient checkpointing recomputes the blocks).

Noise and timestep indices are drawn per sample from a generator keyed by (seed, stage, stream
position), so they do not depend on the number of processes, and a resumed run draws the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from bindweave.denoiser import Conditioning, predict_velocity
from bindweave.flow import add_noise, loss_weights, sigma_to_timestep, training_sigmas, velocity_target
from bindweave.perf.cross_attention import ContextPadding, fast_processors

from .config import StageConfig

__all__ = ["FlowMatchingObjective", "LossOutput", "build_lr_scheduler", "subject_weighted_mean"]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: weighted MSE averaged over the batch
    per_sample: torch.Tensor  # (B,) MSE of each sample (subject-weighted; no timestep weight)
    timesteps: torch.Tensor  # (B,)


class FlowMatchingObjective:
    """The timestep table and its loss weights, and the loss itself."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        shift: float = 5.0,
        loss_weighting: str = "released",
        subject_weight: float = 1.0,
    ):
        # float64 tables; each lookup is cast to float32 on the compute device.
        self.sigmas = training_sigmas(num_timesteps, shift)  # (T,) from 1 down, shifted
        self.timesteps = sigma_to_timestep(self.sigmas)  # (T,) in (0, 1000]
        if loss_weighting == "released":
            self.weights = loss_weights(self.timesteps)  # (T,) sums to 1000
        elif loss_weighting == "uniform":
            self.weights = torch.ones_like(self.timesteps)
        else:
            raise ValueError(f"loss_weighting: expected 'released' or 'uniform', got {loss_weighting!r}")
        if subject_weight <= 0:
            raise ValueError(f"subject_weight: must be > 0, got {subject_weight}")
        self.subject_weight = subject_weight

    def draw(
        self, shape: tuple[int, ...], seed: int, stage: int, positions: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(B, *shape)`` and timestep indices ``(B,)`` for the samples at ``positions``."""
        noises, indices = [], []
        for position in positions:
            key = np.random.SeedSequence([seed, stage, position, 0x7015E]).generate_state(2, dtype=np.uint64)
            generator = torch.Generator().manual_seed(int(key[0] >> np.uint64(1)))
            indices.append(torch.randint(0, len(self.sigmas), (1,), generator=generator))
            noises.append(torch.randn(shape, generator=generator))
        return torch.stack(noises), torch.cat(indices)

    def loss(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        cond: Conditioning,
        noise: torch.Tensor,
        index: torch.Tensor,
        padding: ContextPadding | None = None,
        subject_mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """Weighted flow-matching loss of ``latents`` ``(B, z, F', h, w)`` noised with ``noise`` at ``index``.

        ``padding``: the batch's MLLM padding rows (:attr:`FeatureBatch.padding
        <bindweave.training.features.FeatureBatch.padding>`); it must be the one active on the transformer.
        ``subject_mask``: ``(B, F', h, w)``, 1 where a subject is; needed when ``subject_weight`` != 1.

        Raises:
            ValueError: when ``padding`` is given but ``padded_context(transformer, padding)`` is not active,
                or ``subject_weight`` != 1 and no ``subject_mask`` is given.
        """
        if padding is not None:
            active = {processor.context_padding for processor in fast_processors(transformer)}
            if active != {padding}:
                raise ValueError(
                    "this batch's MLLM states are padded: run its forward and backward inside "
                    "bindweave.perf.cross_attention.padded_context(transformer, batch.padding), after "
                    "install_fast_cross_attention(transformer)"
                )
        device = latents.device
        x0, noise = latents.float(), noise.to(device, torch.float32)
        index = index.cpu()
        sigma = self.sigmas[index].to(device, torch.float32)  # (B,)
        timestep = self.timesteps[index].to(device, torch.float32)  # (B,)
        x_t = add_noise(x0, noise, sigma)
        target = velocity_target(x0, noise)
        prediction = predict_velocity(transformer, x_t, timestep, cond)  # (B, z, F', h, w)
        error = (prediction.float() - target).pow(2)  # (B, z, F', h, w)
        if self.subject_weight == 1:
            per_sample = error.flatten(1).mean(dim=1)  # (B,)
        else:
            if subject_mask is None:
                raise ValueError(
                    f"subject_weight is {self.subject_weight}, but the batch has no subject mask: every clip "
                    "needs one ('subject_mask' in its manifest line, precomputed into a new cache folder)"
                )
            per_sample = subject_weighted_mean(
                error, subject_mask.to(device, torch.float32), self.subject_weight
            )
        weights = self.weights[index].to(device, torch.float32)  # (B,)
        return LossOutput(
            loss=(per_sample * weights).mean(), per_sample=per_sample.detach(), timesteps=timestep
        )


def subject_weighted_mean(
    error: torch.Tensor, subject_mask: torch.Tensor, subject_weight: float
) -> torch.Tensor:
    """Per-sample mean of ``error`` ``(B, z, F', h, w)`` with weight ``subject_weight`` where ``subject_mask``
    ``(B, F', h, w)`` is 1 and 1 elsewhere (the same for every channel), normalised by the weights: ``(B,)``."""
    weight = 1.0 + (subject_weight - 1.0) * subject_mask[:, None]  # (B, 1, F', h, w)
    weight = weight.expand_as(error)
    return (weight * error).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> LambdaLR:
    """The stage's learning rate: linear warmup over ``warmup_steps``, then constant ``stage.lr``."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = stage.lr
    warmup = stage.warmup_steps
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
