"""BindWeave's cross-attention processor (spec 2.7).

The cross-attention context is ``[image (slots*257) ; MLLM (L) ; T5 (512)]``. The released model's
image branch (``add_k_proj`` / ``add_v_proj`` / ``norm_added_k``) sees only the first
``image_context_tokens`` tokens, i.e. the first reference's CLIP tokens; the text branch
(``to_k`` / ``to_v`` / ``norm_k``) sees everything after them, including the other references' CLIP
tokens. diffusers' stock ``WanAttnProcessor`` splits at ``len(context) - 512`` instead, which is only
right for plain Wan I2V, so BindWeave needs its own split. Everything else is the stock computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention, _get_added_kv_projections


@dataclass(frozen=True)
class ContextKV:
    """One block's cross-attention keys and values of one context, each ``(B, T, H, Dh)``."""

    text_key: torch.Tensor  # (B, T_text, H, Dh), after norm_k
    text_value: torch.Tensor  # (B, T_text, H, Dh)
    image_key: torch.Tensor  # (B, T_image, H, Dh), after norm_added_k
    image_value: torch.Tensor  # (B, T_image, H, Dh)


class BindWeaveAttnProcessor:
    """Wan cross-attention whose image branch takes a fixed number of leading context tokens.

    Args:
        image_context_tokens: how many leading context tokens the image branch attends to
            (257, one CLIP ViT-H/14 image, in the released model).

    Subclasses change how the context is projected (:meth:`context_kv`) or how the text branch attends
    (:meth:`text_attention`); the rest is fixed.
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
        context = self._checked_context(attn, encoder_hidden_states, attention_mask)  # (B, T, D)
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # (B, N, H, Dh)
        kv = self.context_kv(attn, context)

        # Cross-attention is never sequence-parallel: every rank holds the whole context.
        out_image = dispatch_attention_fn(
            query, kv.image_key, kv.image_value, backend=self._attention_backend, parallel_config=None
        )  # (B, N, H, Dh)
        out_text = self.text_attention(query, kv)  # (B, N, H, Dh)
        hidden_states = out_text.flatten(2, 3).type_as(query) + out_image.flatten(2, 3).type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)  # (B, N, D)

    def context_kv(self, attn: WanAttention, context: torch.Tensor) -> ContextKV:
        """The stock Wan projections, split after the first ``image_context_tokens`` tokens (spec 2.7).

        Image branch (``add_k_proj`` / ``add_v_proj`` / ``norm_added_k``): the leading tokens; text branch
        (``to_k`` / ``to_v`` / ``norm_k``): every token after them.
        """
        image_context = context[:, : self.image_context_tokens]  # (B, 257, D)
        text_context = context[:, self.image_context_tokens :]  # (B, (slots-1)*257 + L + 512, D)
        if attn.fused_projections:
            key, value = attn.to_kv(text_context).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(text_context), attn.to_v(text_context)
        image_key, image_value = _get_added_kv_projections(attn, image_context)
        return ContextKV(
            text_key=attn.norm_k(key).unflatten(2, (attn.heads, -1)),
            text_value=value.unflatten(2, (attn.heads, -1)),
            image_key=attn.norm_added_k(image_key).unflatten(2, (attn.heads, -1)),
            image_value=image_value.unflatten(2, (attn.heads, -1)),
        )

    def text_attention(self, query: torch.Tensor, kv: ContextKV) -> torch.Tensor:
        """The text branch: ``(B, N, H, Dh)`` queries over every text-branch key, no mask."""
        return dispatch_attention_fn(
            query, kv.text_key, kv.text_value, backend=self._attention_backend, parallel_config=None
        )

    def _checked_context(
        self, attn: WanAttention, context: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if context is None or attn.add_k_proj is None:
            raise ValueError(
                f"{type(self).__name__} is a cross-attention processor for blocks with added K/V"
            )
        if attention_mask is not None:
            raise ValueError("BindWeave's cross-attention uses no attention mask (spec 2.7)")
        if context.shape[1] <= self.image_context_tokens:
            raise ValueError(
                f"cross-attention context has {context.shape[1]} tokens; expected more than the "
                f"{self.image_context_tokens} image-branch tokens"
            )
        return context
