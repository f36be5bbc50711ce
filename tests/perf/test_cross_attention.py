"""The fast cross-attention processor: the reference computation, batched CFG and context K/V reuse, exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bindweave.denoiser import Conditioning, guided_velocity, predict_velocities, predict_velocity
from bindweave.models import BindWeaveAttnProcessor, BindWeaveTransformer3DModel
from bindweave.perf.cross_attention import (
    ContextKVCache,
    FastBindWeaveAttnProcessor,
    context_kv_cache,
    fast_processors,
    install_fast_cross_attention,
)
from bindweave.testing import tiny_transformer_kwargs

# Batched and separate forwards differ only by float32 summation order in batched matmuls.
BATCHED_ATOL = 1e-5


@pytest.fixture
def transformer() -> BindWeaveTransformer3DModel:
    torch.manual_seed(0)
    return BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()


def conditioning(transformer, mllm_tokens: int, seed: int) -> Conditioning:
    c = transformer.config
    g = torch.Generator().manual_seed(seed)
    slots = c.num_reference_slots
    return Conditioning(
        text=torch.randn(1, 512, c.text_dim, generator=g),
        image=torch.randn(1, slots * c.image_context_tokens, c.image_dim, generator=g),
        mllm=torch.randn(1, mllm_tokens, c.mllm_dim, generator=g),
        condition=torch.randn(1, 20, slots + 2, 4, 6, generator=g),
    )


def step_inputs(transformer, lengths=(7, 13)):
    """Latents, timestep and the two CFG branches (same references, other prompt states)."""
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 16, 2, 4, 6, generator=g)
    cond = conditioning(transformer, lengths[0], seed=1)
    negative = conditioning(transformer, lengths[1], seed=2)
    return latents, torch.tensor([500.0]), cond, cond.with_prompt(negative.text, negative.mllm)


@torch.no_grad()
def test_fast_processor_is_bitwise_the_reference_processor(transformer):
    latents, t, cond, _ = step_inputs(transformer)
    expected = predict_velocity(transformer, latents, t, cond)
    processors = install_fast_cross_attention(transformer)
    assert len(processors) == len(transformer.blocks) and fast_processors(transformer) == processors
    assert all(type(b.attn2.processor) is FastBindWeaveAttnProcessor for b in transformer.blocks)
    assert install_fast_cross_attention(transformer) == processors  # idempotent
    assert torch.equal(predict_velocity(transformer, latents, t, cond), expected)


@torch.no_grad()
def test_batched_cfg_with_unequal_mllm_lengths_equals_two_forwards(transformer):
    latents, t, cond, uncond = step_inputs(transformer, lengths=(7, 13))
    separate = guided_velocity(transformer, latents, t, cond, uncond, 5.0)
    install_fast_cross_attention(transformer)
    batched = guided_velocity(transformer, latents, t, cond, uncond, 5.0, batch_cfg=True)
    torch.testing.assert_close(batched, separate, atol=BATCHED_ATOL, rtol=0)
    v_cond, v_uncond = predict_velocities(transformer, latents, t, [cond, uncond])
    torch.testing.assert_close(
        v_cond, predict_velocity(transformer, latents, t, cond), atol=BATCHED_ATOL, rtol=0
    )
    torch.testing.assert_close(
        v_uncond, predict_velocity(transformer, latents, t, uncond), atol=BATCHED_ATOL, rtol=0
    )


@torch.no_grad()
def test_zero_padding_without_the_split_changes_the_result(transformer):
    """Why the per-sample split exists: zero MLLM rows become real keys after the connector and embedder."""
    latents, t, cond, _ = step_inputs(transformer)
    padded = Conditioning(cond.text, cond.image, F.pad(cond.mllm, (0, 0, 0, 6)), cond.condition)
    difference = predict_velocity(transformer, latents, t, padded) - predict_velocity(
        transformer, latents, t, cond
    )
    assert difference.abs().max() > 1e-3


@torch.no_grad()
def test_batched_cfg_with_unequal_lengths_needs_the_fast_processor(transformer):
    latents, t, cond, uncond = step_inputs(transformer, lengths=(7, 13))
    with pytest.raises(ValueError, match="install_fast_cross_attention"):
        guided_velocity(transformer, latents, t, cond, uncond, 5.0, batch_cfg=True)
    # Equal lengths need no padding, so any processor batches them exactly.
    latents, t, cond, uncond = step_inputs(transformer, lengths=(9, 9))
    torch.testing.assert_close(
        guided_velocity(transformer, latents, t, cond, uncond, 5.0, batch_cfg=True),
        guided_velocity(transformer, latents, t, cond, uncond, 5.0),
        atol=BATCHED_ATOL,
        rtol=0,
    )


@torch.no_grad()
def test_context_kv_reuse_is_exact_and_projects_each_context_once(transformer):
    latents, t, cond, uncond = step_inputs(transformer)
    expected = [guided_velocity(transformer, latents + i, t, cond, uncond, 5.0) for i in range(3)]
    install_fast_cross_attention(transformer)
    with context_kv_cache(transformer) as cache:
        reused = [guided_velocity(transformer, latents + i, t, cond, uncond, 5.0) for i in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(reused, expected, strict=True))
    blocks = len(transformer.blocks)
    # 3 steps x 2 branches x blocks processor calls; each branch's context is projected once per block.
    assert (cache.misses, cache.hits) == (2 * blocks, 2 * 2 * blocks)
    assert all(p.kv_cache is None for p in fast_processors(transformer))  # dropped after the run


def test_context_kv_cache_matches_contexts_by_value():
    cache = ContextKVCache(max_contexts=2)
    a = torch.randn(1, 5, 8)
    cache.projections(a)[0] = "projections of a"
    assert cache.projections(a.clone()) == {0: "projections of a"}  # a new tensor, the same values
    assert cache.projections(a + 1) == {}  # other values: computed afresh
    assert cache.projections(a.to(torch.float64)) == {}  # other dtype
    assert cache.projections(a) == {}  # only the 2 newest contexts are kept


@torch.no_grad()
def test_pipeline_speed_options_give_the_reference_video(make_pipe, refs, mllm_states, generate):
    def latents(pipe):
        return generate(pipe, refs, mllm_states, steps=2, output_type="latent")

    pipe = make_pipe()
    expected = latents(pipe)
    pipe.enable_context_kv_cache()
    assert torch.equal(latents(pipe), expected)  # the same instance, its weights untouched: bitwise
    pipe.enable_batched_cfg()
    torch.testing.assert_close(latents(pipe), expected, atol=BATCHED_ATOL * 10, rtol=0)  # + 2 sampler steps


def test_the_reference_processor_is_the_default(transformer):
    assert all(type(b.attn2.processor) is BindWeaveAttnProcessor for b in transformer.blocks)
