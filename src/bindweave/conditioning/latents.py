"""VAE stream: the channel-concatenated condition ``y`` (spec 2.3).

``y = concat over time [slot_0 .. slot_{S-1}, video]`` with 4 mask channels then ``z`` latent channels:
a reference slot holds its canvas mask (channel 0) and its normalised single-frame latent; an empty slot
is all zeros; the video part is the normalised latent of an all-zero (mid-grey) video with zero masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

MASK_CHANNELS = 4


def latent_frame_count(num_frames: int, temporal_compression: int = 4) -> int:
    """Latent frames of a ``t k + 1``-frame video, ``t`` the VAE's temporal compression:
    ``(num_frames - 1) / t + 1``."""
    if num_frames < 1 or (num_frames - 1) % temporal_compression != 0:
        raise ValueError(f"num_frames must be {temporal_compression}k + 1 (e.g. 81), got {num_frames}")
    return (num_frames - 1) // temporal_compression + 1


def _latent_stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def normalize_latents(latents: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    """``(z - mean) / std`` per channel, for ``(B, z, F, h, w)`` latents."""
    mean, std = _latent_stats(vae, latents)
    return (latents - mean) / std


def denormalize_latents(latents: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    """``z * std + mean`` per channel: the inverse of :func:`normalize_latents`."""
    mean, std = _latent_stats(vae, latents)
    return latents * std + mean


@torch.no_grad()
def encode_video(
    vae: AutoencoderKLWan, video: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """``(B, 3, F, H, W)`` pixels in [-1, 1] -> ``(B, z, F', h, w)`` normalised latents (posterior mode).

    ``device``: where the VAE runs (default: where its weights are; pass it when offloading hooks move them).
    """
    param = next(vae.parameters())
    latents = vae.encode(video.to(device or param.device, param.dtype)).latent_dist.mode()
    return normalize_latents(latents.float(), vae)


def encode_references(
    vae: AutoencoderKLWan, canvases: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """``(N, 3, H, W)`` canvases in [0, 1], each encoded alone as a one-frame video -> ``(N, z, 1, h, w)``."""
    return encode_video(vae, canvases[:, :, None] * 2.0 - 1.0, device)


def reference_slots(latents: torch.Tensor, masks: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Pack reference latents and masks into ``num_slots`` condition frames.

    Args:
        latents: ``(N, z, 1, h, w)`` normalised reference latents.
        masks: ``(N, H, W)`` canvas masks (1 on the pasted image).

    Returns:
        ``(4 + z, num_slots, h, w)``: slot k < N is ``[mask_k resized (nearest) ; 0 ; 0 ; 0 ; latent_k]``,
        the remaining slots are zero.
    """
    n, z, _, h, w = latents.shape
    if n > num_slots:
        raise ValueError(f"{n} references do not fit in {num_slots} slots")
    slots = latents.new_zeros(MASK_CHANNELS + z, num_slots, h, w)
    small_masks = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0]  # (N, h, w)
    slots[0, :n] = small_masks.to(slots.dtype)
    slots[MASK_CHANNELS:, :n] = latents[:, :, 0].transpose(0, 1)
    return slots


def zero_video_condition(
    vae: AutoencoderKLWan, num_frames: int, height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """The video part of ``y``: an all-zero (mid-grey) video's latents with zero masks.

    Returns ``(4 + z, F', h, w)``. The causal VAE makes each latent frame differ, so it is encoded for real.
    """
    latent_frame_count(num_frames, vae.config.scale_factor_temporal)
    param = next(vae.parameters())
    video = torch.zeros(1, 3, num_frames, height, width, device=device or param.device, dtype=param.dtype)
    latents = encode_video(vae, video, device)[0]  # (z, F', h, w)
    masks = latents.new_zeros(MASK_CHANNELS, *latents.shape[1:])
    return torch.cat([masks, latents], dim=0)


def build_condition(slots: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """``(4 + z, S, h, w)`` and ``(4 + z, F', h, w)`` -> ``(1, 4 + z, S + F', h, w)``."""
    return torch.cat([slots, video.to(slots.device, slots.dtype)], dim=1)[None]
