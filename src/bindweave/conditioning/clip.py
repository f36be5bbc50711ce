"""CLIP stream: penultimate ViT features of each letterboxed reference, packed into slots (spec 2.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixel_values(
    canvases: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """``(N, 3, H, W)`` canvases in [0, 1] -> ``(N, 3, size, size)`` normalised CLIP input.

    The whole canvas is squashed to a square, aspect not kept (a quirk of the release, spec 2.2),
    with an antialiased bilinear resize.
    """
    pixels = F.interpolate(
        canvases.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


@torch.no_grad()
def encode_clip(
    image_encoder: torch.nn.Module, pixel_values: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """Penultimate hidden states of a CLIP vision tower: ``(N, tokens, dim)`` (257 x 1280 for ViT-H/14).

    ``device``: where the encoder runs (default: where its weights are).
    """
    param = next(image_encoder.parameters())
    pixel_values = pixel_values.to(device or param.device, param.dtype)
    output = image_encoder(pixel_values=pixel_values, output_hidden_states=True)
    return output.hidden_states[-2]


def pack_clip_tokens(features: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Concatenate per-reference tokens in order and zero-pad to ``num_slots`` references.

    ``(N, T, D)`` -> ``(1, num_slots * T, D)``.
    """
    n, tokens, dim = features.shape
    if n > num_slots:
        raise ValueError(f"{n} references do not fit in {num_slots} slots")
    packed = features.new_zeros(1, num_slots * tokens, dim)
    packed[0, : n * tokens] = features.reshape(n * tokens, dim)
    return packed


def encode_reference_tokens(
    image_encoder: torch.nn.Module,
    image_processor,
    canvases: torch.Tensor,
    transformer_config,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The DiT's image context from letterboxed canvases ``(N, 3, H, W)`` in [0, 1] (spec 2.2).

    Resized to the encoder's input size and normalised with ``image_processor``'s mean and std, encoded,
    and packed into ``transformer_config.num_reference_slots`` slots: ``(1, 4 * 257, 1280)`` when released.
    """
    pixels = clip_pixel_values(
        canvases,
        size=image_encoder.config.image_size,
        mean=image_processor.image_mean,
        std=image_processor.image_std,
    )  # (N, 3, 224, 224)
    features = encode_clip(image_encoder, pixels, device)  # (N, 257, 1280)
    if features.shape[1] != transformer_config.image_context_tokens:
        raise ValueError(
            f"the image encoder gives {features.shape[1]} tokens per image but the transformer's "
            f"image_context_tokens is {transformer_config.image_context_tokens}"
        )
    return pack_clip_tokens(features, transformer_config.num_reference_slots)
