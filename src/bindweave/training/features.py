"""Training features: what the frozen encoders make of a clip, with the inference code.

A clip becomes the DiT's target latents and its four conditioning streams (spec 2) through the same
:class:`~bindweave.pipeline.BindWeavePipeline` methods that inference uses (``prepare_references``,
``encode_text``, ``encode_clip_tokens``, ``prepare_condition``, and ``encode_mllm_states`` or its
:func:`~bindweave.conditioning.mllm.encode_mllm`) and :func:`~bindweave.conditioning.latents.encode_video`
for the clip itself. The same :class:`FeatureEncoder` serves online training and the precomputed cache, so
the two cannot drift apart.

- MLLM states keep their full length, as in the released training features (spec 2.5). A micro-batch
  pads them to its longest clip (:func:`collate_features`) and records where the padding rows are
  (:class:`~bindweave.perf.cross_attention.ContextPadding`): each clip's cross-attention skips its own
  padding rows, so a clip trains on exactly what it would see alone, and what inference gives it.
- The MLLM's input (``data.mllm_input``): ``released`` (default) is the release's training quirk
  (spec 4): the reference canvases downsampled x0.5 (bilinear, :func:`released_mllm_images`), without the
  inference pre-scale; ``inference`` is the inference input (pre-scaled x0.3 / x0.75).
- With condition dropout (``data.condition_dropout`` > 0; not in the release) each clip also carries the
  MLLM states of the negative prompt read with its own references: what the unconditional branch of CFG
  feeds the DiT at inference (spec 3). The negative prompt's umT5 states are the same for every clip and
  are encoded once by the trainer (:meth:`FeatureEncoder.negative_text`).
- Optionally (``data.first_frame_condition``, off by default; an extra, not in the release, whose
  training registers a first-frame I2V processor but never applies it) the clip's first frame is an I2V
  condition: its CLIP tokens follow the references' tokens, and the video part of the VAE condition
  holds its latent with mask 1 on latent frame 0 (Wan I2V style), instead of the grey video.
- A clip with a subject mask (manifest ``subject_mask``) carries it at the latents' resolution
  (:func:`latent_subject_mask`), for ``objective.subject_weight``.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from bindweave.conditioning.clip import clip_pixel_values, encode_clip, pack_clip_tokens
from bindweave.conditioning.latents import (
    MASK_CHANNELS,
    build_condition,
    encode_references,
    encode_video,
    reference_slots,
)
from bindweave.conditioning.mllm import MLLM_NEGATIVE_SUFFIX, encode_mllm, load_mllm_states
from bindweave.conditioning.references import Letterboxed
from bindweave.conditioning.text import DEFAULT_NEGATIVE_PROMPT
from bindweave.denoiser import Conditioning, batch_conditionings
from bindweave.perf.cross_attention import ContextPadding, padded_context
from bindweave.pipeline import BindWeavePipeline

from .config import DataConfig
from .data import RawClip

__all__ = [
    "ClipFeatures",
    "FeatureBatch",
    "FeatureEncoder",
    "collate_features",
    "condition_dropped",
    "latent_subject_mask",
    "released_mllm_images",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ClipFeatures:
    """One clip's training inputs (no batch dimension).

    Attributes:
        latents: ``(z, F', h, w)`` normalised VAE latents of the clip: the flow-matching ``x_0``.
        text: ``(512, text_dim)`` umT5 states, zero past the prompt.
        image: ``(slots * T, image_dim)`` CLIP tokens of the references, zero-padded
            (``(slots + 1) * T`` with the first-frame condition).
        mllm: ``(L, mllm_dim)`` MLLM states, full length.
        condition: ``(4 + z, slots + F', h, w)`` reference slots and video part of the VAE condition.
        negative_mllm: ``(L', mllm_dim)`` MLLM states of the negative prompt with the same references
            (only with condition dropout), else ``None``.
        subject_mask: ``(F', h, w)`` 1 on the latent elements a subject touches, 0 elsewhere (only for a
            clip with a subject mask), else ``None``.
    """

    latents: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    mllm: torch.Tensor
    condition: torch.Tensor
    negative_mllm: torch.Tensor | None = None
    subject_mask: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by field name; an absent ``negative_mllm`` or ``subject_mask`` is left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def cast(self, dtype: torch.dtype) -> ClipFeatures:
        """Tensors to ``dtype``, contiguous, on the CPU."""
        return ClipFeatures(
            **{name: t.detach().to("cpu", dtype).contiguous() for name, t in self.tensors().items()}
        )

    def unconditional(self, negative_text: torch.Tensor) -> ClipFeatures:
        """This clip as CFG's unconditional branch sees it: the negative prompt's umT5 states
        ``negative_text`` ``(512, text_dim)`` and its MLLM states, the same references and target."""
        if self.negative_mllm is None:
            raise ValueError(
                "these features have no negative_mllm: condition dropout needs features encoded with "
                "data.condition_dropout > 0 (re-run `bindweave precompute` into a new folder)"
            )
        return dataclasses.replace(self, text=negative_text.to(self.text.dtype), mllm=self.negative_mllm)

    def conditioning(self) -> Conditioning:
        """The conditioning of this clip alone, batch of 1."""
        return Conditioning(
            text=self.text[None], image=self.image[None], mllm=self.mllm[None], condition=self.condition[None]
        )


@dataclass
class FeatureBatch:
    """A batch of :class:`ClipFeatures`, ready for :func:`bindweave.denoiser.predict_velocity`.

    ``padding`` names each clip's MLLM padding rows (``None`` when all clips have the same length): the
    forward, and the backward (where gradient checkpointing recomputes the blocks), must run inside
    :func:`~bindweave.perf.cross_attention.padded_context` for each clip to see only its own tokens.
    """

    latents: torch.Tensor  # (B, z, F', h, w)
    cond: Conditioning  # MLLM states (B, L_max, mllm_dim), zero-padded at the end
    padding: ContextPadding | None
    lines: list[int]  # manifest lines of the clips
    positions: list[int]  # positions of the clips in the stage's sample stream (they key the noise)
    subject_mask: torch.Tensor | None = None  # (B, F', h, w) when every clip has one

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch(
            latents=self.latents.to(device),
            cond=self.cond.to(device),
            padding=self.padding,
            lines=self.lines,
            positions=self.positions,
            subject_mask=None if self.subject_mask is None else self.subject_mask.to(device),
        )

    def padded(self, transformer: torch.nn.Module) -> AbstractContextManager:
        """The scope of this batch's forward and backward: each clip skips its own MLLM padding rows."""
        return nullcontext() if self.padding is None else padded_context(transformer, self.padding)


def collate_features(
    items: list[ClipFeatures], lines: list[int], positions: list[int], need_subject_mask: bool = False
) -> FeatureBatch:
    """Stack clips; MLLM states of unequal length are zero-padded to the longest (see :class:`FeatureBatch`).

    The batch has a subject mask when every clip has one.

    Raises:
        ValueError: when ``need_subject_mask`` and a clip has none (the message names its manifest lines).
    """
    cond, padding = batch_conditionings([item.conditioning() for item in items])
    masks = [item.subject_mask for item in items]
    missing = [line for line, mask in zip(lines, masks, strict=True) if mask is None]
    if need_subject_mask and missing:
        raise ValueError(
            f"objective.subject_weight needs a subject mask for every clip, but the clips on manifest "
            f"line(s) {missing} have none: add 'subject_mask' to their lines and precompute into a new "
            "cache folder, or set objective.subject_weight to 1"
        )
    return FeatureBatch(
        latents=torch.stack([item.latents for item in items]),
        cond=cond,
        padding=padding,
        lines=list(lines),
        positions=list(positions),
        subject_mask=torch.stack(masks) if all(m is not None for m in masks) else None,
    )


def latent_subject_mask(mask: torch.Tensor, temporal: int, spatial: int) -> torch.Tensor:
    """A clip's subject mask ``(F, H, W)`` on its latent grid ``(F', H / spatial, W / spatial)``, float 0/1.

    A latent element is marked when any pixel it encodes is: the Wan VAE encodes frame 0 alone and then
    ``temporal`` frames per latent frame, each ``spatial`` x ``spatial`` pixels per element.
    """
    frames, height, width = mask.shape
    if (frames - 1) % temporal or height % spatial or width % spatial:
        raise ValueError(
            f"subject mask of {frames} x {height} x {width}: expected {temporal}k + 1 frames and a size "
            f"divisible by {spatial}"
        )
    pooled = F.max_pool2d(mask.float()[:, None], spatial)[:, 0]  # (F, h, w)
    rest = pooled[1:].unflatten(0, (-1, temporal)).amax(dim=1)  # (F' - 1, h, w)
    return torch.cat([pooled[:1], rest])  # (F', h, w)


def condition_dropped(seed: int, stage: int, position: int, probability: float) -> bool:
    """Whether the sample at ``position`` of stage ``stage``'s stream trains unconditionally (condition
    dropout). Keyed like the noise, so it does not depend on the number of processes and a resumed run
    draws the same."""
    if probability <= 0:
        return False
    state = np.random.SeedSequence([seed, stage, position, 0xD209]).generate_state(1, dtype=np.uint64)[0]
    return float(state >> np.uint64(11)) / 2**53 < probability  # 53 random bits: uniform in [0, 1)


def released_mllm_images(canvases: torch.Tensor) -> list[PIL.Image.Image]:
    """The MLLM's images in the released training features (spec 4, quirk).

    ``canvases``: ``(N, 3, H, W)`` reference canvases, floats in [0, 1]. Downsampled x0.5 (bilinear,
    ``align_corners=False``, the scale recomputed from the output size) and converted to uint8 by
    ``x * 255`` then truncation, as the release did; they then go to the MLLM without the inference
    pre-scale.
    """
    small = F.interpolate(
        canvases.float(), scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=True
    )  # (N, 3, H // 2, W // 2)
    pixels = (small.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)  # truncation, like the release
    return [PIL.Image.fromarray(p, mode="RGB") for p in pixels]


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

        mllm, negative_mllm = self._mllm_states(clip.prompt, images, boxes)  # (L, D), full length
        text, _ = pipe.encode_text(clip.prompt, "", do_cfg=False)  # (1, 512, text_dim)
        latents = encode_video(pipe.vae, clip.video[None])[0]  # (z, F', h, w)

        if data.first_frame_condition:
            image, condition = self._with_first_frame(clip.video, boxes)
        else:
            image = pipe.encode_clip_tokens(boxes)[0]  # (slots * T, image_dim)
            condition = pipe.prepare_condition(boxes, num_frames, height, width)[0]  # (4+z, S+F', h, w)
        subject_mask = None
        if clip.subject_mask is not None:
            subject_mask = latent_subject_mask(
                clip.subject_mask, pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
            )  # (F', h, w)
        features = ClipFeatures(
            latents=latents,
            text=text[0],
            image=image,
            mllm=mllm,
            condition=condition,
            negative_mllm=negative_mllm,
            subject_mask=subject_mask,
        )
        return features.cast(self.dtype)

    @torch.no_grad()
    def negative_text(self) -> torch.Tensor:
        """``(512, text_dim)`` umT5 states of the negative prompt (condition dropout's text), feature dtype."""
        return self.pipe.encode_text(DEFAULT_NEGATIVE_PROMPT, "", do_cfg=False)[0][0].to("cpu", self.dtype)

    def _mllm_states(
        self, prompt: str, images: list[PIL.Image.Image], boxes: list[Letterboxed]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(L, mllm_dim)`` MLLM states of the prompt and references, from the configured input, and those
        of the negative prompt with the same references under condition dropout (else ``None``)."""
        pipe, negative = self.pipe, self.data.condition_dropout > 0
        if self.data.mllm_input == "inference":
            positive, negative_states = pipe.encode_mllm_states(
                prompt, DEFAULT_NEGATIVE_PROMPT, images, None, None, do_cfg=negative
            )  # as the pipeline's two branches
            return positive[0], None if negative_states is None else negative_states[0]
        if pipe.mllm is None or pipe.mllm_processor is None:
            raise ValueError("the pipeline has no mllm / mllm_processor to encode the training clips with")
        pictures = released_mllm_images(torch.stack([b.canvas for b in boxes]))  # (W/2) x (H/2) each
        texts = [prompt, DEFAULT_NEGATIVE_PROMPT + MLLM_NEGATIVE_SUFFIX] if negative else [prompt]
        states = [
            load_mllm_states(
                encode_mllm(pipe.mllm, pipe.mllm_processor, text, pictures, prescale=False),
                pipe.transformer.config.mllm_dim,
                name="MLLM states",
            )[0]
            for text in texts
        ]
        return states[0], states[1] if negative else None

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
