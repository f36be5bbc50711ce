"""T5 stream: umT5 states of the cleaned prompt, zeroed past its length and padded to 512 (spec 2.6)."""

from __future__ import annotations

import torch
from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

from .prompts import DEFAULT_NEGATIVE_PROMPT

T5_MAX_TOKENS = 512

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "T5_MAX_TOKENS", "encode_t5"]


@torch.no_grad()
def encode_t5(
    tokenizer,
    text_encoder: torch.nn.Module,
    prompts: str | list[str],
    max_length: int = T5_MAX_TOKENS,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``prompts`` -> ``(B, max_length, dim)`` umT5 encoder states.

    Prompts are cleaned as Wan does (ftfy, HTML unescape, whitespace collapse) and truncated to
    ``max_length`` tokens; positions past each prompt's real length are exactly zero. ``device`` is where
    the encoder runs (default: where its weights are; pass it when offloading hooks move them).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = tokenizer(
        [prompt_clean(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = device or next(text_encoder.parameters()).device
    mask = tokens.attention_mask.to(device)
    states = text_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state  # (B, 512, D)
    return states * mask[..., None].to(states.dtype)
