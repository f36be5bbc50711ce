"""The small BindWeave of the toy world: component sizes and the untrained base pipeline.

Every component is the real class (umT5, CLIP vision, Wan VAE, BindWeave DiT, Qwen2.5-VL), shrunk:

- VAE: ``AutoencoderKLWan`` with 4x spatial (not 8x) and the real 4x temporal compression, z_dim 16, so
  a 64 x 64 frame is 16 x 16 latents and a 14-20 px sprite still spans 4-5 latent pixels. It is the one
  component trained before the DiT (:mod:`bindweave.toy.vae`): a random VAE decodes nothing.
- umT5 / CLIP / Qwen2.5-VL: the tiny random encoders of :mod:`bindweave.testing`, frozen, as the paper
  freezes them; their tokenizers are also trained on toy prompts (a 48-word toy prompt: 106 umT5
  pieces instead of 129).
  Random frozen encoders still give distinct, deterministic features per word and image. The umT5 and
  CLIP features are of unit scale, and so are the Qwen2.5-VL states: taken after its final RMSNorm
  (whose weight is all ones here), every token has an RMS of 1.0 (mean magnitude 0.81 per element on the
  demo prompt; before the norm they were about 0.02).
- DiT: 4 blocks of width 128 (4 heads of 32), 2 x 2 patches; trained with ``bindweave train``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan

from bindweave.testing.release import build_tiny_release, tiny_transformer_kwargs
from bindweave.testing.tokenizers import CORPUS

from .world import FRAME_SIZE, NUM_FRAMES, sample_scene, scene_rng

__all__ = [
    "TOY_GUIDANCE",
    "TOY_STEPS",
    "TOY_SIZE",
    "build_toy_pipeline",
    "toy_corpus",
    "toy_transformer_kwargs",
    "toy_vae",
]

TOY_SIZE = {"height": FRAME_SIZE, "width": FRAME_SIZE, "num_frames": NUM_FRAMES}
# Trained without condition dropout, the toy DiT has never seen the negative prompt: guiding away from it
# lowers every score but direction accuracy (README, "The toy world"), so the toy samples unguided.
TOY_GUIDANCE = 1.0
TOY_STEPS = 20  # the step count the demo has always used with it
_CORPUS_SCENES = 400  # toy prompts added to the tokenizers' training text


def toy_vae(
    latents_mean: list[float] | None = None, latents_std: list[float] | None = None
) -> AutoencoderKLWan:
    """The toy Wan VAE (untrained); ``latents_mean`` / ``latents_std`` default to 0 / 1."""
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4],  # 2 spatial downsamples: 4x
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[True, True],  # 2 temporal downsamples: 4x, frames 4k + 1
        latents_mean=latents_mean or [0.0] * 16,
        latents_std=latents_std or [1.0] * 16,
        scale_factor_spatial=4,
        scale_factor_temporal=4,
    )


def toy_transformer_kwargs() -> dict[str, Any]:
    """The toy DiT: the tiny BindWeave config, 4 blocks of width 128."""
    kwargs = tiny_transformer_kwargs()
    heads, head_dim = 4, 32
    kwargs.update(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        added_kv_proj_dim=heads * head_dim,
        ffn_dim=512,
        num_layers=4,
    )
    return kwargs


def toy_corpus(seed: int = 0) -> list[str]:
    """Tokenizer training text: the generic tiny corpus plus toy prompts (from their own split)."""
    prompts = [sample_scene(scene_rng(seed, "demo", 10_000 + i)).prompt for i in range(_CORPUS_SCENES)]
    return [*CORPUS, *prompts]


def build_toy_pipeline(vae: AutoencoderKLWan, *, seed: int = 0):
    """The untrained toy ``BindWeavePipeline`` around a trained ``vae`` (float32, on CPU)."""
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
        transformer = BindWeaveTransformer3DModel(**toy_transformer_kwargs())
    components = {**stock.components, "vae": vae.eval(), "transformer": transformer}
    defaults = {f"default_{k}": v for k, v in TOY_SIZE.items()}
    return BindWeavePipeline(
        **components, **defaults, default_guidance_scale=TOY_GUIDANCE, default_num_inference_steps=TOY_STEPS
    )
