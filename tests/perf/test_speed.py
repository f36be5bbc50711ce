"""Attention backend selection reaches BindWeave's processors; regional compilation keeps the result."""

from __future__ import annotations

import traceback

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend

from bindweave.denoiser import Conditioning, predict_velocity
from bindweave.models import BindWeaveTransformer3DModel
from bindweave.perf.cross_attention import install_fast_cross_attention
from bindweave.perf.speed import attention_backends, compile_blocks, set_attention_backend
from bindweave.testing import tiny_transformer_kwargs


@pytest.fixture
def transformer() -> BindWeaveTransformer3DModel:
    torch.manual_seed(0)
    return BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()


def step(transformer) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    c = transformer.config
    g = torch.Generator().manual_seed(1)
    cond = Conditioning(
        text=torch.randn(1, 512, c.text_dim, generator=g),
        image=torch.randn(1, 4 * c.image_context_tokens, c.image_dim, generator=g),
        mllm=torch.randn(1, 7, c.mllm_dim, generator=g),
        condition=torch.randn(1, 20, 6, 4, 6, generator=g),
    )
    return torch.randn(1, 16, 2, 4, 6, generator=g), torch.tensor([500.0]), cond


@pytest.fixture(autouse=True)
def restore_active_backend():
    """set_attention_backend also sets diffusers' process-wide default: put it back after each test."""
    with attention_backend("native"):
        yield


@pytest.mark.parametrize(
    "swap_after", [False, True], ids=["reference-processor", "fast-processor-swapped-after"]
)
@torch.no_grad()
def test_the_backend_reaches_self_and_cross_attention(transformer, swap_after):
    latents, t, cond = step(transformer)
    expected = predict_velocity(transformer, latents, t, cond)
    set_attention_backend(transformer, "_native_math")
    if swap_after:  # the fast processors inherit the backend of the ones they replace
        install_fast_cross_attention(transformer)
    backends = attention_backends(transformer)
    assert len(backends) == 2 * len(transformer.blocks) and set(backends.values()) == {"_native_math"}
    assert {name.rsplit(".", 1)[-1] for name in backends} == {"attn1", "attn2"}
    torch.testing.assert_close(predict_velocity(transformer, latents, t, cond), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fast", [False, True], ids=["reference-processor", "fast-processor"])
@torch.no_grad()
def test_cross_attention_dispatches_to_the_chosen_backend(transformer, fast):
    """cuDNN attention has no CPU kernel: choosing it for cross-attention only must fail there, and only there."""
    if fast:
        install_fast_cross_attention(transformer)
    set_attention_backend(transformer, "_native_cudnn")
    for block in transformer.blocks:
        block.attn1.processor._attention_backend = AttentionBackendName.NATIVE  # self-attention back on SDPA
    latents, t, cond = step(transformer)
    with pytest.raises(RuntimeError, match="No viable backend") as error:
        predict_velocity(transformer, latents, t, cond)
    frames = [frame.filename for frame in traceback.extract_tb(error.value.__traceback__)]
    assert any(name.endswith(("models/attention.py", "perf/cross_attention.py")) for name in frames)


def test_a_missing_kernel_package_is_a_clear_error(transformer):
    with pytest.raises(RuntimeError, match="flash-attn"):
        set_attention_backend(transformer, "flash")


@pytest.mark.slow  # inductor compiles the block graph in ~100 s on this 2-core CPU
@torch.no_grad()
def test_regional_compilation_keeps_the_result(transformer):
    latents, t, cond = step(transformer)
    install_fast_cross_attention(transformer)
    expected = predict_velocity(transformer, latents, t, cond)
    compile_blocks(transformer, fullgraph=True)
    torch.testing.assert_close(predict_velocity(transformer, latents, t, cond), expected, rtol=0, atol=1e-5)
