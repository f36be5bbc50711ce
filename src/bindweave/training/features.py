"""Training features: what the frozen encoders make of a clip, with exactly the inference code.

A clip becomes the DiT's target latents and its four conditioning streams (spec 2) through the same
:class:`~bindweave.pipeline.BindWeavePipeline` methods that inference uses (``prepare_references``,
``encode_mllm_states``, ``encode_text``, ``encode_clip_tokens``, ``prepare_condition``) and
:func:`~bindweave.conditioning.latents.encode_video` for the clip itself. The same :class:`FeatureEncoder`
serves online training and the precomputed cache, so the two cannot drift apart.

Two training-only differences, both from the released trainer:

- MLLM states are zero-padded (or truncated) to ``mllm_max_tokens`` (512) so clips batch together, with
  a mask of the real tokens. The DiT's cross-attention takes no mask (spec 2.7): the padded positions go
  through the connector as zeros and are attended to like any token, as in the released trainer. The mask
  is stored for reference only. (Inference uses the full, unpadded length.)
- Optionally (``data.first_frame_condition``, off by default) the clip's first frame is an extra I2V
  condition: its CLIP tokens follow the references' tokens, and the video part of the VAE condition
  holds its latent with mask 1 on latent frame 0 (Wan I2V style), instead of the grey video.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from bindweave.conditioning.clip import clip_pixel_values, encode_clip, pack_clip_tokens
from bindweave.conditioning.latents import (
    MASK_CHANNELS,
    build_condition,
    encode_references,
    encode_video,
    reference_slots,
)
from bindweave.denoiser import Conditioning
from bindweave.pipeline import BindWeavePipeline

from .config import DataConfig
from .data import RawClip

__all__ = ["ClipFeatures", "FeatureBatch", "FeatureEncoder", "collate_features", "pad_mllm_states"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ClipFeatures:
    """One clip's training inputs (no batch dimension).

    Attributes:
        latents: ``(z, F', h, w)`` normalised VAE latents of the clip: the flow-matching ``x_0``.
        text: ``(512, text_dim)`` umT5 states, zero past the prompt.
        image: ``(slots * T, image_dim)`` CLIP tokens of the references, zero-padded
            (``(slots + 1) * T`` with the first-frame condition).
        mllm: ``(mllm_max_tokens, mllm_dim)`` MLLM states, zero-padded or truncated.
        mllm_mask: ``(mllm_max_tokens,)`` bool, True on real MLLM tokens (not used by the DiT).
        condition: ``(4 + z, slots + F', h, w)`` reference slots and video part of the VAE condition.
    """

    latents: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    mllm: torch.Tensor
    mllm_mask: torch.Tensor
    condition: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def cast(self, dtype: torch.dtype) -> ClipFeatures:
        """Float tensors to ``dtype`` on the CPU (the mask stays bool)."""
        return ClipFeatures(
            **{
                name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
                for name, t in self.tensors().items()
            }
        )


@dataclass
class FeatureBatch:
    """A batch of :class:`ClipFeatures`, ready for :func:`bindweave.denoiser.predict_velocity`."""

    latents: torch.Tensor  # (B, z, F', h, w)
    cond: Conditioning
    mllm_mask: torch.Tensor  # (B, mllm_max_tokens)
    lines: list[int]  # manifest lines of the clips
    positions: list[int]  # positions of the clips in the stage's sample stream (they key the noise)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch(
            latents=self.latents.to(device),
            cond=self.cond.to(device),
            mllm_mask=self.mllm_mask.to(device),
            lines=self.lines,
            positions=self.positions,
        )


def collate_features(items: list[ClipFeatures], lines: list[int], positions: list[int]) -> FeatureBatch:
    def stack(name: str) -> torch.Tensor:
        return torch.stack([getattr(item, name) for item in items])

    return FeatureBatch(
        latents=stack("latents"),
        cond=Conditioning(
            text=stack("text"), image=stack("image"), mllm=stack("mllm"), condition=stack("condition")
        ),
        mllm_mask=stack("mllm_mask"),
        lines=list(lines),
        positions=list(positions),
    )


def pad_mllm_states(states: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, D)`` -> ``(max_tokens, D)`` zero-padded (or the first ``max_tokens``) and its ``(max_tokens,)`` mask."""
    length = min(states.shape[0], max_tokens)
    padded = states.new_zeros(max_tokens, states.shape[1])
    padded[:length] = states[:length]
    mask = torch.zeros(max_tokens, dtype=torch.bool)
    mask[:length] = True
    return padded, mask


class FeatureEncoder:
    """Runs a pipeline's frozen encoders on training clips, the way inference encodes its inputs.

    Args:
        pipe: the pipeline whose ``text_encoder``, ``image_encoder``, ``vae``, ``mllm`` (and
            processors) encode; its ``transformer`` is only read for its config.
        data: clip size and feature settings.
        device: where the encoders run; they are moved there (the transformer is left alone).
    """

    def __init__(self, pipe: BindWeavePipeline, data: DataConfig, device: torch.device):
        self.pipe = pipe
        self.data = data
        self.dtype = DTYPES[data.feature_dtype]
        for name in ("text_encoder", "image_encoder", "vae", "mllm"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, clip: RawClip) -> ClipFeatures:
        """Encode one clip: ``clip.video`` ``(3, F, H, W)`` in [-1, 1] and its reference subjects."""
        pipe, data = self.pipe, self.data
        height, width, num_frames = data.height, data.width, data.num_frames
        images, boxes = pipe.prepare_references(list(clip.references), height, width)

        mllm, _ = pipe.encode_mllm_states(clip.prompt, "", images, None, None, do_cfg=False)  # (1, L, D)
        mllm, mllm_mask = pad_mllm_states(mllm[0], data.mllm_max_tokens)  # (512, D), (512,)
        text, _ = pipe.encode_text(clip.prompt, "", do_cfg=False)  # (1, 512, text_dim)
        latents = encode_video(pipe.vae, clip.video[None])[0]  # (z, F', h, w)

        if data.first_frame_condition:
            image, condition = self._with_first_frame(clip.video, boxes)
        else:
            image = pipe.encode_clip_tokens(boxes)[0]  # (slots * T, image_dim)
            condition = pipe.prepare_condition(boxes, num_frames, height, width)[0]  # (4+z, S+F', h, w)
        features = ClipFeatures(
            latents=latents, text=text[0], image=image, mllm=mllm, mllm_mask=mllm_mask, condition=condition
        )
        return features.cast(self.dtype)

    def _with_first_frame(self, video: torch.Tensor, boxes: list) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP tokens and VAE condition with the clip's first frame as an extra I2V condition."""
        pipe = self.pipe
        slots = pipe.transformer.config.num_reference_slots
        first_frame = (video[:, 0].float() + 1.0) / 2.0  # (3, H, W) in [0, 1], a canvas like the references'
        canvases = torch.stack([b.canvas for b in boxes])  # (N, 3, H, W)
        pixels = clip_pixel_values(
            torch.cat([canvases, first_frame[None]]),
            size=pipe.image_encoder.config.image_size,
            mean=pipe.image_processor.image_mean,
            std=pipe.image_processor.image_std,
        )
        image = pack_clip_tokens(encode_clip(pipe.image_encoder, pixels), slots + 1)[0]  # ((S+1)*T, D)

        ref_slots = reference_slots(
            encode_references(pipe.vae, canvases), torch.stack([b.mask for b in boxes]), slots
        )  # (4+z, S, h, w)
        conditioned = torch.zeros_like(video)
        conditioned[:, 0] = video[:, 0]  # the first frame, then mid-grey (0 in [-1, 1])
        latents = encode_video(pipe.vae, conditioned[None])[0]  # (z, F', h, w)
        masks = latents.new_zeros(MASK_CHANNELS, *latents.shape[1:])
        masks[:, 0] = 1.0  # latent frame 0 stands for the 4 (repeated) conditioned pixel frames
        return image, build_condition(ref_slots, torch.cat([masks, latents]))[0]
