"""The one denoiser call used by sampling and training."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .flow import apply_guidance
from .models import BindWeaveTransformer3DModel


@dataclass(frozen=True)
class Conditioning:
    """Everything the DiT is conditioned on, batched.

    Attributes:
        text: ``(B, 512, text_dim)`` umT5 states, zero-padded.
        image: ``(B, slots * clip_tokens, image_dim)`` CLIP penultimate states, zero-padded.
        mllm: ``(B, L, mllm_dim)`` MLLM states.
        condition: ``(B, 4 + z, slots + F, h, w)`` reference-slot and video masks and latents.
    """

    text: torch.Tensor
    image: torch.Tensor
    mllm: torch.Tensor
    condition: torch.Tensor

    def to(self, device: torch.device) -> Conditioning:
        return Conditioning(*(t.to(device) for t in (self.text, self.image, self.mllm, self.condition)))

    def with_prompt(self, text: torch.Tensor, mllm: torch.Tensor) -> Conditioning:
        """The same references with other prompt states (the unconditional branch of CFG)."""
        return replace(self, text=text, mllm=mllm)


def predict_velocity(
    transformer: BindWeaveTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: Conditioning,
) -> torch.Tensor:
    """``(B, z, F, h, w)`` noisy latents at ``timestep`` (``(B,)``, in [0, 1000]) -> velocity, same shape."""
    dtype = transformer.dtype
    return transformer(
        hidden_states=latents.to(dtype),
        timestep=timestep,
        encoder_hidden_states=cond.text.to(dtype),
        encoder_hidden_states_image=cond.image.to(dtype),
        mllm_hidden_states=cond.mllm.to(dtype),
        condition=cond.condition.to(dtype),
        return_dict=False,
    )[0]


def guided_velocity(
    transformer: BindWeaveTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Velocity with classifier-free guidance; a single forward when guidance is off."""
    v_cond = predict_velocity(transformer, latents, timestep, cond)
    if uncond is None or guidance_scale == 1.0:
        return v_cond
    v_uncond = predict_velocity(transformer, latents, timestep, uncond)
    return apply_guidance(v_uncond.float(), v_cond.float(), guidance_scale)
