"""T5 stream (spec 2.6): cleaned prompt, umT5 states zeroed past the real length, padded to 512.

Oracle: stock diffusers ``WanImageToVideoPipeline._get_t5_prompt_embeds`` on the tiny Wan folder, run under
``torch.no_grad`` as the pipeline's ``__call__`` runs it (CPU kernels differ by ~1e-6 with autograd on).
The function under test equals it bitwise on the stock pipeline's own tokenizer / encoder (the same
computation on the same weights), and up to float32 rounding on ones loaded separately through the
transformers loaders (the same weights elsewhere in memory: other SIMD paths).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import WanImageToVideoPipeline
from transformers import AutoTokenizer, UMT5EncoderModel

from bindweave.conditioning.text import DEFAULT_NEGATIVE_PROMPT, T5_MAX_TOKENS, encode_t5
from bindweave.testing import ReleaseFolders, assert_close_to_float32_rounding
from bindweave.testing.release import TINY_TEXT_DIM

PROMPT = "A woman in a red coat walks her dog along a quiet beach at sunset."
MESSY_PROMPT = "A man &amp; his   dog &lt;3\n\n walk  along the beach &quot;slowly&quot;.  "
LONG_PROMPT = " ".join(["A red sports car drives along a winding coastal road under a clear blue sky."] * 60)


@pytest.fixture(scope="module")
def release(tiny_release: ReleaseFolders) -> ReleaseFolders:
    return tiny_release  # the session's tiny release (seed 0, read only)


@pytest.fixture(scope="module")
def stock_pipeline(release: ReleaseFolders) -> WanImageToVideoPipeline:
    return WanImageToVideoPipeline.from_pretrained(release.wan)


@pytest.fixture(scope="module")
def tokenizer(release: ReleaseFolders):
    return AutoTokenizer.from_pretrained(release.wan, subfolder="tokenizer")


@pytest.fixture(scope="module")
def text_encoder(release: ReleaseFolders) -> UMT5EncoderModel:
    return UMT5EncoderModel.from_pretrained(release.wan, subfolder="text_encoder", dtype=torch.float32).eval()


def _stock(pipeline: WanImageToVideoPipeline, prompt: str | list[str]) -> torch.Tensor:
    with torch.no_grad():
        return pipeline._get_t5_prompt_embeds(prompt, max_sequence_length=512, device=torch.device("cpu"))


def _assert_equals_stock(stock_pipeline: WanImageToVideoPipeline, states: torch.Tensor, prompt) -> None:
    """``states`` (from the separately loaded encoder) match the stock embeddings of ``prompt``."""
    expected = _stock(stock_pipeline, prompt)
    assert torch.equal(encode_t5(stock_pipeline.tokenizer, stock_pipeline.text_encoder, prompt), expected)
    assert_close_to_float32_rounding(states, expected)


@pytest.mark.parametrize(
    "prompt", [PROMPT, MESSY_PROMPT, DEFAULT_NEGATIVE_PROMPT], ids=["plain", "html", "negative"]
)
def test_encode_t5_equals_stock_wan_prompt_embeds(
    stock_pipeline: WanImageToVideoPipeline, tokenizer, text_encoder: UMT5EncoderModel, prompt: str
) -> None:
    states = encode_t5(tokenizer, text_encoder, prompt)

    assert states.shape == (1, 512, TINY_TEXT_DIM)
    assert states.dtype == torch.float32
    _assert_equals_stock(stock_pipeline, states, prompt)


def test_encode_t5_batch_equals_stock(
    stock_pipeline: WanImageToVideoPipeline, tokenizer, text_encoder: UMT5EncoderModel
) -> None:
    prompts = [PROMPT, "A cat sleeps."]
    states = encode_t5(tokenizer, text_encoder, prompts)
    assert states.shape == (2, 512, TINY_TEXT_DIM)
    _assert_equals_stock(stock_pipeline, states, prompts)


def test_encode_t5_cleans_html_entities_and_whitespace(tokenizer, text_encoder: UMT5EncoderModel) -> None:
    messy = encode_t5(tokenizer, text_encoder, "A man &amp; his  dog \n walk &lt;3.  ")
    clean = encode_t5(tokenizer, text_encoder, "A man & his dog walk <3.")
    assert torch.equal(messy, clean)


def test_encode_t5_zeroes_positions_past_the_prompt_length(tokenizer, text_encoder: UMT5EncoderModel) -> None:
    num_tokens = len(tokenizer(PROMPT).input_ids)  # includes </s>
    assert 5 < num_tokens < 100

    states = encode_t5(tokenizer, text_encoder, PROMPT)[0]

    assert T5_MAX_TOKENS == 512
    assert torch.count_nonzero(states[num_tokens:]) == 0
    assert bool((states[:num_tokens].abs().sum(dim=-1) > 0).all())  # every real token has a state


def test_encode_t5_zeroing_is_not_trivially_true(text_encoder: UMT5EncoderModel, tokenizer) -> None:
    # Without the zeroing, the umT5 encoder does produce non-zero states at padding positions.
    tokens = tokenizer(PROMPT, padding="max_length", max_length=512, return_tensors="pt")
    with torch.no_grad():
        raw = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    assert torch.count_nonzero(raw[0, tokens.attention_mask[0].sum() :]) > 0


def test_encode_t5_truncates_a_long_prompt_to_512_tokens(
    stock_pipeline: WanImageToVideoPipeline, tokenizer, text_encoder: UMT5EncoderModel
) -> None:
    assert len(tokenizer(LONG_PROMPT).input_ids) > 1000

    states = encode_t5(tokenizer, text_encoder, LONG_PROMPT)

    assert states.shape == (1, 512, TINY_TEXT_DIM)
    assert bool((states[0].abs().sum(dim=-1) > 0).all())  # no padding: all 512 positions are real tokens
    _assert_equals_stock(stock_pipeline, states, LONG_PROMPT)
    # Truncation keeps the first 511 pieces and the closing </s>.
    ids = tokenizer(LONG_PROMPT, max_length=512, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 512) and ids[0, -1].item() == tokenizer.eos_token_id
    with torch.no_grad():
        direct = text_encoder(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(states, direct)
