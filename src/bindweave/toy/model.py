"""The small BindWeave of the toy world: component sizes and the untrained base pipeline.

Every component is the real class (umT5, CLIP vision, Wan VAE, BindWeave DiT, Qwen2.5-VL), shrunk:

- VAE: ``AutoencoderKLWan``, z_dim 16, with 4x spatial (not 8x) and the real 4x temporal compression, so
  a 64 x 64 frame is 16 x 16 latents and a 14-20 px sprite spans 4-5 latent pixels: 12 pixel values per
  latent value, which loses most of a sprite's look (``toy-eval``'s ``vae-recon``: fidelity 0.36).
  ``toy base`` can make one that compresses 2x in space and 2x or not at all in time, with fewer latent
  channels (``z_dim`` 4: 6 pixel values per latent value, 3 without time compression); the 2x-in-space,
  1x-in-time ones keep the sprites (``vae-recon`` fidelity 0.91 with 16 channels, 0.88 with 4;
  docs/toy-world.md). It is the one component trained before
  the DiT (:mod:`bindweave.toy.vae`): a random VAE decodes nothing.
- umT5 / CLIP / Qwen2.5-VL: the tiny random encoders of :mod:`bindweave.testing`, frozen, as the paper
  freezes them; their tokenizers are also trained on toy prompts (a 48-word toy prompt: 106 umT5
  pieces instead of 129).
  Random frozen encoders still give distinct, deterministic features per word and image. The umT5 and
  CLIP features are of unit scale, and so are the Qwen2.5-VL states: taken after its final RMSNorm
  (whose weight is all ones here), every token has an RMS of 1.0 (mean magnitude 0.81 per element on the
  demo prompt; before the norm they were about 0.02).
- DiT: 4 blocks of width 128 (4 heads of 32), patches of 8 x 8 pixels (2 x 2 latents of the 4x VAE, 4 x 4
  of a 2x one, so the tokens per frame do not grow with the latents); trained with ``bindweave train``.
  A token holds z x p x p noisy latent values (64 with the 4x VAE, 64 with a 2x one of 4 channels); the
  DiT's input and output channels follow the VAE's. Its output head emits at most its width (128) values
  a token, so ``toy base`` refuses a VAE that needs more (a 2x one of 16 channels: 256), whose samples
  keep half their starting noise (docs/toy-world.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan

from bindweave.conditioning.latents import MASK_CHANNELS
from bindweave.testing.release import build_tiny_release, tiny_transformer_kwargs
from bindweave.testing.tokenizers import CORPUS

from .config import TOY_DIT_WIDTH
from .world import FRAME_SIZE, NUM_FRAMES, sample_scene, scene_rng

__all__ = [
    "TOY_GUIDANCE",
    "TOY_STEPS",
    "TOY_SIZE",
    "build_toy_pipeline",
    "tie_reference_embedding",
    "toy_corpus",
    "toy_transformer_kwargs",
    "toy_vae",
]

TOY_SIZE = {"height": FRAME_SIZE, "width": FRAME_SIZE, "num_frames": NUM_FRAMES}
# Trained without condition dropout, the toy DiT has never seen the negative prompt: guiding away from it
# lowers every score but direction accuracy (docs/toy-world.md), so the toy samples unguided.
TOY_GUIDANCE = 1.0
TOY_STEPS = 20  # the step count the demo has always used with it
_CORPUS_SCENES = 400  # toy prompts added to the tokenizers' training text


def toy_vae(
    latents_mean: list[float] | None = None,
    latents_std: list[float] | None = None,
    *,
    spatial_compression: int = 4,
    temporal_compression: int = 4,
    width: int = 8,
    latent_channels: int = 16,
) -> AutoencoderKLWan:
    """The toy Wan VAE (untrained) of ``latent_channels`` (``z_dim``); ``latents_mean`` / ``latents_std``
    default to 0 / 1.

    Each Wan encoder level but the last halves the frame, and halves time too where asked (frames then
    stay ``k * temporal_compression + 1``), so ``spatial_compression`` sets the levels.
    """
    levels = {2: 1, 4: 2}.get(spatial_compression)
    time_levels = {1: 0, 2: 1, 4: 2}.get(temporal_compression)
    if levels is None or time_levels is None or time_levels > levels:
        raise ValueError(
            f"toy VAE compression must be 2 or 4 in space and 1, 2 or 4 (at most the spatial one) in time, "
            f"got {spatial_compression} and {temporal_compression}"
        )
    return AutoencoderKLWan(
        base_dim=width,
        z_dim=latent_channels,
        dim_mult=[1, 2, 4][: levels + 1],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[i < time_levels for i in range(levels)],
        latents_mean=latents_mean or [0.0] * latent_channels,
        latents_std=latents_std or [1.0] * latent_channels,
        scale_factor_spatial=spatial_compression,
        scale_factor_temporal=temporal_compression,
    )


def toy_transformer_kwargs(patch: int = 2, latent_channels: int = 16) -> dict[str, Any]:
    """The toy DiT: the tiny BindWeave config, 4 blocks of width 128, ``patch x patch`` latent patches of a
    VAE with ``latent_channels`` (input: noise + the condition's 4 mask and z latent channels)."""
    kwargs = tiny_transformer_kwargs()
    heads = 4
    head_dim = TOY_DIT_WIDTH // heads
    kwargs.update(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        added_kv_proj_dim=heads * head_dim,
        ffn_dim=512,
        num_layers=4,
        patch_size=(1, patch, patch),
        in_channels=2 * latent_channels + 4,
        out_channels=latent_channels,
    )
    return kwargs


def toy_corpus(seed: int = 0) -> list[str]:
    """Tokenizer training text: the generic tiny corpus plus toy prompts (from their own split)."""
    prompts = [sample_scene(scene_rng(seed, "demo", 10_000 + i)).prompt for i in range(_CORPUS_SCENES)]
    return [*CORPUS, *prompts]


def tie_reference_embedding(transformer: torch.nn.Module) -> None:
    """Set the DiT's patch-embedding weights that read the condition's latent channels equal to those that
    read the noisy latents, in place: a reference slot then embeds as the video's clean drawing of the same
    subject would. An initialisation for a DiT trained from scratch (the released one comes trained)."""
    z = transformer.config.out_channels
    weight = transformer.patch_embedding.weight  # (width, z + 4 + z, pt, ph, pw): noise, masks, latents
    with torch.no_grad():
        weight[:, z + MASK_CHANNELS :] = weight[:, :z]


def build_toy_pipeline(vae: AutoencoderKLWan, *, seed: int = 0, tie_references: bool = False):
    """The untrained toy ``BindWeavePipeline`` around a trained ``vae`` (float32, on CPU).

    The DiT's patches cover 8 x 8 pixels whatever the VAE's spatial compression; its channels follow the
    VAE's. ``tie_references``: :func:`tie_reference_embedding` on the new DiT.
    """
    from bindweave.models import BindWeaveTransformer3DModel
    from bindweave.pipeline import BindWeavePipeline

    with tempfile.TemporaryDirectory() as tmp:
        release = build_tiny_release(Path(tmp), seed=seed, corpus=toy_corpus(seed))
        stock = BindWeavePipeline.from_released(
            release.wan,
            release.transformer,
            release.mllm,
            torch_dtype=torch.float32,
            **tiny_transformer_kwargs(),
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = BindWeaveTransformer3DModel(
            **toy_transformer_kwargs(8 // vae.config.scale_factor_spatial, vae.config.z_dim)
        )
    if tie_references:
        tie_reference_embedding(transformer)
    components = {**stock.components, "vae": vae.eval(), "transformer": transformer}
    defaults = {f"default_{k}": v for k, v in TOY_SIZE.items()}
    return BindWeavePipeline(
        **components, **defaults, default_guidance_scale=TOY_GUIDANCE, default_num_inference_steps=TOY_STEPS
    )
