"""Q-Align ("q-future/one-align"), the MotionSmoothness quality model, ported natively to transformers 5.

The released model is mPLUG-Owl2 (LLaMA-2-7B + a ViT-L/14 at 448 px + a visual abstractor), whose own code
(the ``q_align`` package) needs transformers 4.36. This module rebuilds its inference path from standard
blocks, reusing transformers' LLaMA RMSNorm, MLP and rotary embedding, and loads the released folder's
weights (same parameter names) strictly:

* vision: patch conv (no bias) + class token + learnt positions, pre-LN; pre-norm layers with a fused
  QKV projection laid out per head ``(heads, 3, head_dim)``, QuickGELU MLP; post-LN on every token;
* abstractor: learnt queries cross-attend (with their own keys prepended) to the vision tokens, with 1-D
  sin-cos positions on the queries and 2-D sin-cos positions (class token first) on the keys; residuals
  on the *normed* queries; SwiGLU MLP with an inner LayerNorm; then ``visual_fc`` and an end-of-image
  token (``vit_eos``): ``num_queries + 1`` tokens per frame;
* language model: LLaMA whose input/post-attention RMSNorms and K/V projections have two copies
  ("multiway"), one for text tokens and one for image tokens; the causal self-attention as
  ``attn_implementation`` says (below).

Attention **(the benchmark's environment)**: OpenS2V-Eval v1.1 bundles its own Q-Align
(``eval/utils/Q-Align`` of PKU-YuanGroup/OpenS2V-Nexus at 8cb7427ed56b, "update opens2v-eval-v1.1") and
installs it with torch 2.5.1 (``eval/README.md``, "Prepare Environment for Q-Align") under q_align's pin
transformers 4.36.1. That transformers picks ``sdpa`` by itself when torch >= 2.1.1 (``from_pretrained``
-> ``_autoset_attn_implementation`` -> ``_check_and_enable_sdpa``; LLaMA has ``_supports_sdpa``), and the
bundled ``q_align/model/modeling_llama2.py`` differs from upstream Q-Align (Q-Future/Q-Align 14dfdff) by
exactly the import of ``_prepare_4d_causal_attention_mask_for_sdpa`` that its SDPA branch needs. The
scorer passes no padding mask, so that helper returns ``None`` and each layer calls
``scaled_dot_product_attention(q, k, v, is_causal=True)`` on the fp16 q/k/v. So ``"sdpa"`` (the default)
is what the benchmark runs; ``"eager"`` (fp16 scores, fp32 softmax cast back to fp16, as
``LlamaAttention``) is upstream Q-Align's path under its pinned torch 2.0.1, where transformers 4.36
cannot pick SDPA. The two differ by fp16 rounding: up to ~0.014 in the level logits of a tiny model.
The vision tower and the abstractor are eager in both (the bundled ViT's flash-attn branch is ``if False``).

Scoring (the benchmark's ``QAlignVideoScorer``): each window of frames is padded to a square with the
image mean colour, preprocessed by the folder's CLIP image processor and cast to fp16; the prompt
``USER: How would you rate the quality of this video?\\n<|image|>\\nASSISTANT: The quality of the video is``
(its ``<|image|>`` replaced by the window's frame tokens); the logits of the first tokens of "excellent",
"good", "fair", "poor", "bad" at the last position, softmax and weights 1, 0.75, 0.5, 0.25, 0, all in fp16.

Checked against the ``q_align`` code and the benchmark's scorer under transformers 4.36.1 on a tiny random
checkpoint in the one-align layout, eager attention (``tests/eval/fixtures/make_qalign_fixture.py``,
``tests/eval/test_eval_qalign_port.py``); the SDPA path against the bundled code's arithmetic written out
in that test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .mplug_owl2_vision import Abstractor, AbstractorAttention, VisionModel

__all__ = [
    "QALIGN_ATTENTION",
    "QALIGN_ATTENTION_IMPLEMENTATIONS",
    "QALIGN_PROMPT",
    "MplugOwl2QualityModel",
    "qalign_input_ids",
]

QALIGN_PROMPT = (
    "USER: How would you rate the quality of this video?\n<|image|>\nASSISTANT: The quality of the video is"
)
IMAGE_PLACEHOLDER = "<|image|>"
IMAGE_TOKEN_INDEX = -200
QALIGN_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
QALIGN_ATTENTION = "sdpa"  # what OpenS2V-Eval v1.1's environment runs (module docstring)


# ---------------------------------------------------------------------------------- language model


class _Multiway(nn.Module):
    """Two copies of a module: ``multiway.0`` for text tokens, ``multiway.1`` for image tokens."""

    def __init__(self, make) -> None:
        super().__init__()
        self.multiway = nn.ModuleList([make(), make()])

    def forward(self, x: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        return torch.where(image_mask[..., None], self.multiway[1](x), self.multiway[0](x))


class _TextAttention(nn.Module):
    def __init__(self, config, attn_implementation: str) -> None:
        super().__init__()
        self.attn_implementation = attn_implementation
        dim, self.heads = config.hidden_size, config.num_attention_heads
        self.head_dim = dim // self.heads
        self.kv_heads = config.num_key_value_heads
        kv = self.kv_heads * self.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = _Multiway(lambda: nn.Linear(dim, kv, bias=bias))
        self.v_proj = _Multiway(lambda: nn.Linear(dim, kv, bias=bias))
        self.o_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x, image_mask, cos, sin, causal_mask) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, image_mask).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, image_mask).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        groups = self.heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        if self.attn_implementation == "sdpa":  # no padding: the benchmark's mask is None, is_causal=True
            out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim) + causal_mask  # (B, H, S, S)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # eager: fp32 softmax
            out = probs @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class _TextLayer(nn.Module):
    def __init__(self, config, attn_implementation: str) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        self.self_attn = _TextAttention(config, attn_implementation)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = _Multiway(lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps))
        self.post_attention_layernorm = _Multiway(
            lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        )

    def forward(self, x, image_mask, cos, sin, causal_mask) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x, image_mask), image_mask, cos, sin, causal_mask)
        return x + self.mlp(self.post_attention_layernorm(x, image_mask))


class _MplugOwl2Model(nn.Module):
    def __init__(self, config, visual: Mapping, attn_implementation: str) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [_TextLayer(config, attn_implementation) for _ in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.vision_model = VisionModel(visual["visual_model"])
        self.visual_abstractor = Abstractor(visual["visual_abstractor"], config.hidden_size)


class MplugOwl2QualityModel(nn.Module):
    """mPLUG-Owl2 for Q-Align's scoring: the next-token logits after a prompt with image windows.

    ``attn_implementation``: ``"sdpa"`` (the benchmark's, default) or ``"eager"`` (see the module docstring).
    """

    def __init__(self, config: Mapping, attn_implementation: str = QALIGN_ATTENTION) -> None:
        super().__init__()
        from transformers import LlamaConfig

        if attn_implementation not in QALIGN_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation {attn_implementation!r}: expected one of {QALIGN_ATTENTION_IMPLEMENTATIONS}"
            )
        self.attn_implementation = attn_implementation
        text = {k: v for k, v in config.items() if k != "visual_config"}
        for key in ("architectures", "model_type", "transformers_version", "torch_dtype", "auto_map"):
            text.pop(key, None)
        self.text_config = LlamaConfig(**text)
        self.model = _MplugOwl2Model(self.text_config, config["visual_config"], attn_implementation)
        self.lm_head = nn.Linear(self.text_config.hidden_size, self.text_config.vocab_size, bias=False)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        dtype: torch.dtype = torch.float16,
        attn_implementation: str = QALIGN_ATTENTION,
    ) -> MplugOwl2QualityModel:
        """Build from ``config.json`` and load the folder's weights strictly (safetensors or ``.bin``, sharded
        or not). The abstractor's fixed sin-cos positions are recomputed when a checkpoint lacks them."""
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "mplug_owl2":
            raise ValueError(
                f"{folder / 'config.json'}: model_type {config.get('model_type')!r}, expected 'mplug_owl2'"
            )
        with torch.device("meta"):
            model = cls(config, attn_implementation)
        result = model.load_state_dict(_read_state_dict(folder), strict=False, assign=True)
        missing = [k for k in result.missing_keys if not k.endswith(("q_pos_embed", "k_pos_embed"))]
        if missing or result.unexpected_keys:
            raise KeyError(
                f"{folder}: not a one-align (mPLUG-Owl2) checkpoint: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        for module in model.modules():  # what the checkpoint lacks is rebuilt off the meta device
            if isinstance(module, AbstractorAttention) and module.q_pos_embed.is_meta:
                module.reset_positions()
        model = model.to(dtype)
        # RoPE frequencies stay float32 (cast to fp16 they would shift the angles), as in transformers 4.36.
        model.model.rotary_emb = type(model.model.rotary_emb)(model.text_config)
        return model.eval().requires_grad_(False)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(F, 3, S, S)`` frames -> ``(F * (Q + 1), D)`` image tokens, in frame order."""
        return self.model.visual_abstractor(self.model.vision_model(pixels)).flatten(0, 1)

    @torch.inference_mode()
    def last_logits(self, input_ids: torch.Tensor, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, V)`` at the last position for ``input_ids`` (one ``-200`` placeholder) and one window
        of frames ``(F, 3, S, S)`` per batch row."""
        return self.decode(*self.inputs_embeds(input_ids, windows))

    @torch.inference_mode()
    def inputs_embeds(
        self, input_ids: torch.Tensor, windows: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's input ``(B, L, D)`` (text embeddings with each window's image tokens at the
        placeholder) and the image-token mask ``(B, L)`` that picks the multiway copies."""
        embed = self.model.embed_tokens
        (split,) = (input_ids == IMAGE_TOKEN_INDEX).nonzero()[:, 0].tolist()
        before, after = embed(input_ids[:split]), embed(input_ids[split + 1 :])
        images = self.image_tokens(torch.cat(list(windows))).split(
            [len(w) * (self.image_tokens_per_frame) for w in windows]
        )
        x = torch.stack([torch.cat([before, img.to(before.dtype), after]) for img in images])  # (B, L, D)
        image_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        image_mask[:, split : split + images[0].shape[0]] = True
        return x, image_mask

    @torch.inference_mode()
    def decode(self, x: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, V)`` at the last position of the unpadded input ``x`` ``(B, L, D)``."""
        positions = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        cos, sin = self.model.rotary_emb(x, positions)
        causal = None  # SDPA takes is_causal instead, as the benchmark's call does
        if self.attn_implementation == "eager":
            causal = torch.full(
                (x.shape[1], x.shape[1]), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device
            )
            causal = torch.triu(causal, diagonal=1)[None, None]
        for layer in self.model.layers:
            x = layer(x, image_mask, cos, sin, causal)
        return self.lm_head(self.model.norm(x[:, -1]))

    @property
    def image_tokens_per_frame(self) -> int:
        return self.model.visual_abstractor.query_embeds.shape[1] + 1


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model*.bin) in {folder}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(path))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def qalign_input_ids(sp_model, prompt: str = QALIGN_PROMPT) -> list[int]:
    """The benchmark's ``tokenizer_image_token``: BOS, each text chunk's pieces, ``-200`` between chunks.

    ``sp_model`` is the folder's sentencepiece model (what transformers 4.36's slow ``LlamaTokenizer``
    encodes plain text with).
    """
    ids = [sp_model.bos_id()]
    for i, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(sp_model.encode(chunk))
    return ids


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Pad to a square with ``fill``, content centred (Q-Align's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
