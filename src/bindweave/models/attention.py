"""BindWeave's cross-attention processor (spec 2.7).

The cross-attention context is ``[image (slots*257) ; MLLM (L) ; T5 (512)]``. The released model's
image branch (``add_k_proj`` / ``add_v_proj`` / ``norm_added_k``) sees only the first
``image_context_tokens`` tokens, i.e. the first reference's CLIP tokens; the text branch
(``to_k`` / ``to_v`` / ``norm_k``) sees everything after them, including the other references' CLIP
tokens. diffusers' stock ``WanAttnProcessor`` splits at ``len(context) - 512`` instead, which is only
right for plain Wan I2V, so BindWeave needs its own split. Everything else is the stock computation.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    _get_added_kv_projections,
    _get_qkv_projections,
)


class BindWeaveAttnProcessor:
    """Wan cross-attention whose image branch takes a fixed number of leading context tokens.

    Args:
        image_context_tokens: how many leading context tokens the image branch attends to
            (257, one CLIP ViT-H/14 image, in the released model).
    """

    # Set by diffusers' ``set_attention_backend`` / ``enable_parallelism`` on every processor.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, image_context_tokens: int = 257):
        if image_context_tokens < 1:
            raise ValueError(f"image_context_tokens must be >= 1, got {image_context_tokens}")
        self.image_context_tokens = image_context_tokens

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or attn.add_k_proj is None:
            raise ValueError(
                "BindWeaveAttnProcessor is a cross-attention processor for blocks with added K/V"
            )
        if attention_mask is not None:
            raise ValueError("BindWeave's cross-attention uses no attention mask (spec 2.7)")
        n_image = self.image_context_tokens
        if encoder_hidden_states.shape[1] <= n_image:
            raise ValueError(
                f"cross-attention context has {encoder_hidden_states.shape[1]} tokens; expected more than the "
                f"{n_image} image-branch tokens"
            )
        image_context = encoder_hidden_states[:, :n_image]  # (B, 257, D)
        text_context = encoder_hidden_states[:, n_image:]  # (B, (slots-1)*257 + L + 512, D)

        # Text branch: the stock Q/K/V projections and norms, over every token after the split.
        query, key, value = _get_qkv_projections(attn, hidden_states, text_context)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # (B, N, H, Dh)
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))  # (B, T, H, Dh)
        value = value.unflatten(2, (attn.heads, -1))

        # Image branch: the added K/V projections over the leading tokens, sharing the query.
        key_img, value_img = _get_added_kv_projections(attn, image_context)
        key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))  # (B, 257, H, Dh)
        value_img = value_img.unflatten(2, (attn.heads, -1))

        # Cross-attention is never sequence-parallel: every rank holds the whole context.
        out_img = dispatch_attention_fn(
            query, key_img, value_img, backend=self._attention_backend, parallel_config=None
        )
        out_text = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=None
        )
        hidden_states = out_text.flatten(2, 3).type_as(query) + out_img.flatten(2, 3).type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)  # (B, N, D)
