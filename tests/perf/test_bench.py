"""``bench`` prints every figure; the FLOP count, the random 14B materialisation and the stock twin are right."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from bindweave.models import BindWeaveTransformer3DModel
from bindweave.perf import peak
from bindweave.perf.bench import (
    BenchConfig,
    BenchResult,
    random_transformer,
    resolve_peak_tflops,
    run_bench,
    stock_wan_sharing_weights,
)
from bindweave.perf.flops import DiTWorkload, dit_forward_flops
from bindweave.perf.peak import Peak
from bindweave.testing import tiny_transformer_kwargs


def test_bench_tiny_prints_every_figure(capsys):
    """The defaults (tiny size, a measured peak) run on a CPU; only the steps and repeats are cut for time."""
    config = BenchConfig(steps=1, repeats=1)
    assert (config.size, config.peak_tflops, config.video()) == ("tiny", None, (32, 48, 5))
    result = run_bench(config)
    printed = dict(re.findall(r"^(\w+): (.+)$", capsys.readouterr().out, flags=re.MULTILINE))
    assert set(printed) == {f.name for f in dataclasses.fields(BenchResult)}
    assert "not measured" not in printed.values()  # on CPU the tiny size measures everything
    assert printed["dit_tokens"] == "36" and printed["context_tokens"] == str(4 * 17 + 526 + 512)
    assert printed["forwards_per_step"] == "1"  # CFG batched by default
    assert result.dit_step_seconds > 0 and result.stock_step_seconds > 0 and result.end_to_end_seconds > 0
    assert printed["peak_tflops_source"] == "measured: 1024x1024 float32 matmul" and result.peak_tflops > 0
    assert result.mfu == pytest.approx(result.achieved_tflops / result.peak_tflops)
    assert result.peak_memory_kind == "peak RSS of the process" and result.peak_memory_gib > 0


def test_peak_tflops_given_or_measured_where_unknown():
    with pytest.raises(ValueError, match="positive"):
        resolve_peak_tflops(0.0, torch.device("cpu"), torch.float32)
    assert resolve_peak_tflops(1.5, torch.device("cpu"), torch.float32) == Peak(1.5, "given (--peak-tflops)")
    measured = resolve_peak_tflops(None, torch.device("cpu"), torch.float32)
    assert measured.source == "measured: 1024x1024 float32 matmul" and measured.tflops > 0
    with pytest.raises(ValueError, match="CUDA"):
        run_bench(BenchConfig(size="14b", peak_tflops=1.0, device="cpu"))


def test_measured_peak_is_the_matmul_flops_over_the_timed_seconds(monkeypatch):
    """A fake clock, 0.1 s per reading: 3 matmuls, then one per reading until 0.25 s have passed."""
    clock = iter(x / 10 for x in range(100))
    monkeypatch.setattr(peak.time, "perf_counter", lambda: next(clock))
    calls = []
    real_matmul = torch.matmul
    monkeypatch.setattr(peak.torch, "matmul", lambda a, b: calls.append(a.shape) or real_matmul(a, b))
    tflops = peak.measure_matmul_tflops(torch.device("cpu"), torch.float32, side=64)
    # Readings: start 0.0; after 3 matmuls 0.1, 0.2 (two more), 0.3 stops; the end reading is 0.4.
    assert len(calls) == 1 + 5  # one warm-up
    assert tflops == pytest.approx(2 * 64**3 * 5 / 0.4 / 1e12)


def test_flops_of_the_released_model_at_720p():
    released = BindWeaveTransformer3DModel.released_config()
    config = type("Config", (), {k: v for k, v in released.items() if not k.startswith("_")})
    workload = DiTWorkload(tokens=25 * 45 * 80, image_branch_tokens=257, clip_tokens=4 * 257, mllm_tokens=526)
    flops = dit_forward_flops(config, workload)
    n, d = 90_000, 5120
    assert flops.self_attention_matmuls == 40 * 4 * n * n * d
    assert flops.feed_forward == 40 * 4 * n * d * 13824
    assert 8.9e15 < flops.total < 9.0e15  # ~8.95 PFLOP per forward, 74% of it in self-attention's N^2 term
    assert flops.without_connector() == flops.total - 2 * 526 * (3584 * 4096 + 4096**2)
    batched = dit_forward_flops(config, dataclasses.replace(workload, batch=2))
    assert batched.total == 2 * flops.total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_materialisation_matches_a_normally_built_model(dtype):
    kwargs = tiny_transformer_kwargs()
    model = random_transformer(kwargs, torch.device("cpu"), dtype)
    reference = BindWeaveTransformer3DModel(**kwargs)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model.rope.freqs_cos, reference.rope.freqs_cos)
    # The dtypes from_pretrained gives: float32 where diffusers keeps it, ``dtype`` elsewhere.
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.blocks[0].attn1.to_q.weight.dtype == dtype
    g = torch.Generator().manual_seed(0)
    c = model.config
    out = model(
        hidden_states=torch.randn(1, 16, 2, 4, 6, generator=g).to(dtype),
        timestep=torch.tensor([10.0]),
        encoder_hidden_states=torch.randn(1, 512, c.text_dim, generator=g).to(dtype),
        encoder_hidden_states_image=torch.randn(1, 4 * c.image_context_tokens, c.image_dim, generator=g).to(
            dtype
        ),
        mllm_hidden_states=torch.randn(1, 5, c.mllm_dim, generator=g).to(dtype),
        condition=torch.randn(1, 20, 6, 4, 6, generator=g).to(dtype),
        return_dict=False,
    )[0]
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_stock_twin_shares_the_weights_and_is_bindweave_where_their_splits_agree():
    """With one reference slot and no MLLM tokens both split the context after 257 tokens: same output."""
    torch.manual_seed(0)
    ours = BindWeaveTransformer3DModel(**tiny_transformer_kwargs() | {"num_reference_slots": 1}).eval()
    stock = stock_wan_sharing_weights(ours)
    assert stock.proj_out.weight.data_ptr() == ours.proj_out.weight.data_ptr()
    c = ours.config
    g = torch.Generator().manual_seed(1)
    latents, condition = torch.randn(1, 16, 2, 4, 6, generator=g), torch.randn(1, 20, 3, 4, 6, generator=g)
    text, image = torch.randn(1, 512, c.text_dim, generator=g), torch.randn(1, 17, c.image_dim, generator=g)
    t = torch.tensor([300.0])
    expected = ours(latents, t, text, image, torch.zeros(1, 0, c.mllm_dim), condition, return_dict=False)[0]
    hidden = torch.cat([torch.cat([latents.new_zeros(1, 16, 1, 4, 6), latents], dim=2), condition], dim=1)
    got = stock(hidden, t, text, image, return_dict=False)[0][:, :, 1:]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
