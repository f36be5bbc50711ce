"""The one denoiser call used by sampling and training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.cache_utils import CacheMixin

from .flow import apply_guidance
from .models import BindWeaveTransformer3DModel
from .perf.cross_attention import ContextPadding, padded_context


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

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]


def batch_conditionings(conds: Sequence[Conditioning]) -> tuple[Conditioning, ContextPadding | None]:
    """Concatenate conditionings along the batch; MLLM states of unequal length are zero-padded at the end.

    The DiT's cross-attention context is ``[image (I) ; connector(MLLM) (L) ; umT5 (512)]``, so a sample
    with ``L_b`` MLLM tokens padded to ``L_max`` holds padding rows at context tokens
    ``[I + L_b, I + L_max)``: the returned :class:`ContextPadding` (``None`` when no row is padding).
    """
    lengths = [c.mllm.shape[1] for c in conds]
    longest = max(lengths)
    mllm = torch.cat(
        [F.pad(c.mllm, (0, 0, 0, longest - length)) for c, length in zip(conds, lengths, strict=True)]
    )  # (sum B, L_max, mllm_dim)
    batched = Conditioning(
        text=torch.cat([c.text for c in conds]),
        image=torch.cat([c.image for c in conds]),
        mllm=mllm,
        condition=torch.cat([c.condition for c in conds]),
    )
    if all(length == longest for length in lengths):
        return batched, None
    image_tokens = conds[0].image.shape[1]
    starts = [
        image_tokens + length for c, length in zip(conds, lengths, strict=True) for _ in range(c.batch_size)
    ]
    return batched, ContextPadding(starts=tuple(starts), stop=image_tokens + longest)


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


def predict_velocities(
    transformer: BindWeaveTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conds: Sequence[Conditioning],
) -> list[torch.Tensor]:
    """One forward for several conditionings of the same latents: ``[velocity under conds[i]]``.

    Exactly what separate :func:`predict_velocity` calls give: when MLLM lengths differ, each sample's
    cross-attention ignores its padding rows (:func:`~bindweave.perf.cross_attention.padded_context`,
    which needs the fast cross-attention processor installed).
    """
    batched, padding = batch_conditionings(conds)
    copies = len(conds)
    scope = padded_context(transformer, padding) if padding is not None else contextlib.nullcontext()
    with scope:
        velocity = predict_velocity(
            transformer, latents.repeat(copies, 1, 1, 1, 1), timestep.repeat(copies), batched
        )  # (copies * B, z, F, h, w)
    return list(velocity.chunk(copies))


def guided_velocity(
    transformer: BindWeaveTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
    *,
    batch_cfg: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Velocity with classifier-free guidance; a single forward when guidance is off.

    The guidance combination runs in ``dtype``: float32, or bf16 as the release does (spec 3).
    With ``batch_cfg`` both branches run as one batch (:func:`predict_velocities`). Each forward runs in
    a named diffusers cache context (``cond`` / ``uncond`` / ``cond_uncond``), so step caches keep one
    state per branch.
    """
    if uncond is None or guidance_scale == 1.0:
        with _cache_context(transformer, "cond"):
            return predict_velocity(transformer, latents, timestep, cond)
    if batch_cfg:
        with _cache_context(transformer, "cond_uncond"):
            v_cond, v_uncond = predict_velocities(transformer, latents, timestep, [cond, uncond])
    else:
        with _cache_context(transformer, "cond"):
            v_cond = predict_velocity(transformer, latents, timestep, cond)
        with _cache_context(transformer, "uncond"):
            v_uncond = predict_velocity(transformer, latents, timestep, uncond)
    return apply_guidance(v_uncond.to(dtype), v_cond.to(dtype), guidance_scale)


@contextlib.contextmanager
def _cache_context(transformer: torch.nn.Module, name: str) -> Iterator[None]:
    """diffusers' per-branch cache context; a no-op for a model without diffusers' cache hooks."""
    if not isinstance(transformer, CacheMixin):
        yield
        return
    with transformer.cache_context(name):
        yield
