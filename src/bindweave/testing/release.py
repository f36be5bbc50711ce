"""A tiny, randomly initialised BindWeave release, written in the real on-disk layouts.

:func:`build_tiny_release` writes the three folders a BindWeave run loads, so tests and the demo exercise
the real ``from_pretrained`` code paths of diffusers and transformers without any download:

- ``wan-i2v``: like ``Wan2.1-I2V-14B-720P-Diffusers`` (a ``WanImageToVideoPipeline`` folder);
- ``bindweave-transformer``: the BindWeave DiT as released: sharded safetensors plus their index and,
  by default, no ``config.json``;
- ``qwen2.5-vl``: like ``Qwen2.5-VL-7B-Instruct`` (model, tokenizer, chat template, image processor).

Weights are seeded: the same ``seed`` gives byte-identical safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

from bindweave.conditioning.clip import CLIP_MEAN, CLIP_STD
from bindweave.testing.seeding import seeded
from bindweave.testing.tiny_qwen import TINY_HEADS, TINY_MLLM_DIM, write_qwen2_5_vl
from bindweave.testing.tokenizers import CORPUS, build_umt5_tokenizer

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TINY_CLIP_DIM",
    "TINY_CLIP_IMAGE_SIZE",
    "TINY_CLIP_TOKENS",
    "TINY_MLLM_DIM",
    "TINY_TEXT_DIM",
    "ReleaseFolders",
    "build_tiny_release",
    "tiny_transformer_kwargs",
    "write_bindweave_transformer",
    "write_qwen2_5_vl",
    "write_wan_i2v",
]

TINY_TEXT_DIM = 32  # umT5 d_model (real: 4096)
TINY_CLIP_DIM = 32  # CLIP vision hidden size (real: 1280)
TINY_CLIP_IMAGE_SIZE = 32  # (real: 224)
TINY_CLIP_PATCH_SIZE = 8  # (real: 14)
TINY_CLIP_TOKENS = (TINY_CLIP_IMAGE_SIZE // TINY_CLIP_PATCH_SIZE) ** 2 + 1  # 17 incl. CLS (real: 257)

_DIT_SHARDS = 3  # the BindWeave DiT is split into (about) this many safetensors shards


@dataclass(frozen=True)
class ReleaseFolders:
    """Where :func:`build_tiny_release` wrote each released folder."""

    wan: Path  # Wan2.1-I2V diffusers pipeline folder
    transformer: Path  # BindWeave DiT (sharded safetensors + index)
    mllm: Path  # Qwen2.5-VL model + tokenizer + image processor


def tiny_transformer_kwargs(
    text_dim: int = TINY_TEXT_DIM,
    image_dim: int = TINY_CLIP_DIM,
    mllm_dim: int = TINY_MLLM_DIM,
    *,
    image_context_tokens: int = TINY_CLIP_TOKENS,
) -> dict[str, Any]:
    """Constructor kwargs of the tiny ``BindWeaveTransformer3DModel`` (the released 14B config, shrunk).

    Drop ``mllm_dim``, ``image_context_tokens`` and ``num_reference_slots`` to get the stock Wan I2V
    ``WanTransformer3DModel`` of the same size.
    """
    num_heads, head_dim = 2, 8
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": num_heads,
        "attention_head_dim": head_dim,
        "in_channels": 36,
        "out_channels": 16,
        "text_dim": text_dim,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": image_dim,
        "added_kv_proj_dim": num_heads * head_dim,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
        "mllm_dim": mllm_dim,
        "image_context_tokens": image_context_tokens,
        "num_reference_slots": 4,
    }


_BINDWEAVE_ONLY_KWARGS = ("mllm_dim", "image_context_tokens", "num_reference_slots")


def build_tiny_release(
    root: Path,
    *,
    mllm_dim: int = TINY_MLLM_DIM,
    seed: int = 0,
    with_transformer_config: bool = False,
    text_dim: int = TINY_TEXT_DIM,
    corpus: Sequence[str] = CORPUS,
) -> ReleaseFolders:
    """Write the tiny Wan I2V, BindWeave DiT and Qwen2.5-VL folders under ``root``.

    The BindWeave DiT starts from the tiny Wan I2V transformer's weights (as the real one was
    fine-tuned from Wan2.1-I2V) plus a seeded random connector. Set ``with_transformer_config`` to
    also write its ``config.json``; the released folder has none. Both tokenizers are trained on
    ``corpus``.
    """
    root = Path(root)
    folders = ReleaseFolders(
        wan=root / "wan-i2v", transformer=root / "bindweave-transformer", mllm=root / "qwen2.5-vl"
    )
    wan_transformer = write_wan_i2v(folders.wan, text_dim=text_dim, seed=seed, corpus=corpus)
    write_bindweave_transformer(
        folders.transformer,
        wan_transformer,
        mllm_dim=mllm_dim,
        seed=seed,
        with_config=with_transformer_config,
    )
    write_qwen2_5_vl(folders.mllm, mllm_dim=mllm_dim, seed=seed, corpus=corpus)
    return folders


# ---------------------------------------------------------------------------------------------- Wan I2V


def write_wan_i2v(
    folder: Path, *, text_dim: int = TINY_TEXT_DIM, seed: int = 0, corpus: Sequence[str] = CORPUS
) -> WanTransformer3DModel:
    """Write a tiny ``Wan2.1-I2V-14B-720P-Diffusers`` folder; returns its transformer."""
    tokenizer = build_umt5_tokenizer(corpus=corpus)
    with seeded(seed, "text_encoder"):
        text_encoder = _tiny_umt5_encoder(len(tokenizer), text_dim)
    with seeded(seed, "image_encoder"):
        image_encoder = _tiny_clip_vision()
    with seeded(seed, "vae"):
        vae = _tiny_wan_vae(seed)
    stock_kwargs = {
        k: v
        for k, v in tiny_transformer_kwargs(text_dim, TINY_CLIP_DIM).items()
        if k not in _BINDWEAVE_ONLY_KWARGS
    }
    with seeded(seed, "transformer"):
        transformer = WanTransformer3DModel(**stock_kwargs)
    pipeline = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        image_processor=_tiny_clip_image_processor(),
        image_encoder=image_encoder,
        transformer=transformer,
    )
    pipeline.save_pretrained(folder)
    _use_released_class_names(folder / "model_index.json")
    return transformer


def _tiny_umt5_encoder(vocab_size: int, text_dim: int) -> UMT5EncoderModel:
    """umT5-XXL's encoder structure (gated-GELU FFN, per-layer relative bias), with tiny sizes."""
    if text_dim % TINY_HEADS:
        raise ValueError(f"text_dim must be divisible by {TINY_HEADS}, got {text_dim}")
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=text_dim,
        d_kv=text_dim // TINY_HEADS,
        d_ff=64,
        num_layers=2,
        num_heads=TINY_HEADS,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    return UMT5EncoderModel(config).eval()


def _tiny_clip_vision() -> CLIPVisionModel:
    """A 2-layer CLIP vision tower: ``hidden_states[-2]`` is the penultimate layer, as for ViT-H/14."""
    config = CLIPVisionConfig(
        hidden_size=TINY_CLIP_DIM,
        intermediate_size=64,
        projection_dim=TINY_CLIP_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_CLIP_IMAGE_SIZE,
        patch_size=TINY_CLIP_PATCH_SIZE,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    return CLIPVisionModel(config).eval()


def _tiny_clip_image_processor() -> CLIPImageProcessorPil:
    """The Wan folder's CLIP preprocessor, at the tiny image size."""
    size = TINY_CLIP_IMAGE_SIZE
    return CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def _tiny_wan_vae(seed: int) -> AutoencoderKLWan:
    """A tiny Wan 2.1 VAE keeping the real 8x spatial / 4x temporal compression and z_dim 16.

    Its ``latents_mean`` / ``latents_std`` are seeded random values far from (0, 1), so that a
    missing or inverted normalisation changes results visibly.
    """
    rng = np.random.default_rng(seed)
    latents_mean = [round(float(x), 4) for x in rng.normal(0.0, 0.5, size=16)]
    latents_std = [round(float(x), 4) for x in rng.uniform(0.5, 2.0, size=16)]
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],  # 3 spatial downsamples: 8x
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],  # 2 temporal downsamples: 4x
        latents_mean=latents_mean,
        latents_std=latents_std,
    ).eval()


def _wan_scheduler() -> UniPCMultistepScheduler:
    """The scheduler settings of the Wan2.1-I2V-14B-720P-Diffusers folder."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)


def _use_released_class_names(model_index: Path) -> None:
    """Name the classes as the released ``model_index.json`` does.

    Without torchvision transformers 5 saves ``CLIPImageProcessorPil`` and names the tokenizer by its
    v5 class ``T5Tokenizer``; the released file says ``CLIPImageProcessor`` and ``T5TokenizerFast``,
    and loaders must cope with that.
    """
    index = json.loads(model_index.read_text())
    index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    model_index.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------- BindWeave DiT


def write_bindweave_transformer(
    folder: Path,
    wan_transformer: WanTransformer3DModel,
    *,
    mllm_dim: int = TINY_MLLM_DIM,
    seed: int = 0,
    with_config: bool = False,
) -> None:
    """Write the BindWeave DiT as released: >= 2 safetensors shards + index, ``config.json`` optional."""
    from bindweave.models import BindWeaveTransformer3DModel  # the lead's module; imported late on purpose

    config = wan_transformer.config
    kwargs = tiny_transformer_kwargs(config.text_dim, config.image_dim, mllm_dim)
    with seeded(seed, "connector"):
        model = BindWeaveTransformer3DModel(**kwargs)
    missing, unexpected = model.load_state_dict(wan_transformer.state_dict(), strict=False)
    if unexpected or any(not key.startswith("condition_embedder.text_projector.") for key in missing):
        raise RuntimeError(
            f"Wan I2V weights do not fit BindWeave: missing={missing}, unexpected={unexpected}"
        )

    total_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(folder, max_shard_size=math.ceil(total_bytes / _DIT_SHARDS))
    if len(list(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))) < 2:
        raise RuntimeError(f"expected a sharded checkpoint in {folder}")
    if not with_config:
        (folder / "config.json").unlink()
