"""Multi-GPU wiring on CPU: the context-parallel plan on the BindWeave DiT, and a real 2-rank Ulysses run."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from bindweave.models import BindWeaveTransformer3DModel
from bindweave.perf.config import PerfConfig
from bindweave.perf.cross_attention import install_fast_cross_attention
from bindweave.perf.parallel import (
    check_sequence_split,
    enable_context_parallel,
    init_distributed,
    sequence_length,
)
from bindweave.testing import tiny_transformer_kwargs

WORLD = 2


@pytest.fixture
def transformer() -> BindWeaveTransformer3DModel:
    torch.manual_seed(0)
    return BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()


def forward_inputs(config, frames: int = 2, height: int = 4, width: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    slots = config.num_reference_slots
    return dict(
        hidden_states=torch.randn(1, 16, frames, height, width, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 512, config.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(
            1, slots * config.image_context_tokens, config.image_dim, generator=g
        ),
        mllm_hidden_states=torch.randn(1, 7, config.mllm_dim, generator=g),
        condition=torch.randn(1, 20, slots + frames, height, width, generator=g),
        return_dict=False,
    )


def test_the_stock_cp_plan_applies_to_the_bindweave_model(transformer):
    plan = BindWeaveTransformer3DModel._cp_plan
    assert plan is WanTransformer3DModel._cp_plan
    assert set(plan) == {"rope", "blocks.0", "proj_out", ""}
    for name in plan:
        transformer.get_submodule(name)  # every hooked module exists in the subclass
    # The split hooks find their inputs by name in the hooked module's forward signature.
    assert set(plan[""]) <= set(inspect.signature(type(transformer).forward).parameters)
    assert set(plan["blocks.0"]) <= set(inspect.signature(type(transformer.blocks[0]).forward).parameters)


@torch.no_grad()
def test_the_split_sequence_holds_slots_and_frames_and_is_gathered_before_slots_drop(transformer):
    captured = {}

    def keep(name: str, value) -> None:
        captured[name] = value  # returns None: the hook leaves the tensors untouched

    handles = [
        transformer.rope.register_forward_hook(lambda m, a, out: keep("rope", out)),
        transformer.blocks[0].register_forward_pre_hook(lambda m, args: keep("hidden", args[0])),
        transformer.proj_out.register_forward_hook(lambda m, a, out: keep("proj_out", out)),
    ]
    frames, height, width = 2, 4, 6
    output = transformer(**forward_inputs(transformer.config, frames, height, width))[0]
    for handle in handles:
        handle.remove()

    config = transformer.config
    tokens = sequence_length(config, frames, height, width)
    assert tokens == (4 + frames) * (height // 2) * (width // 2) == 36
    plan = BindWeaveTransformer3DModel._cp_plan
    split = {
        "hidden": (captured["hidden"], plan["blocks.0"]["hidden_states"].split_dim),
        "rope cos": (captured["rope"][0], plan["rope"][0].split_dim),
        "rope sin": (captured["rope"][1], plan["rope"][1].split_dim),
    }
    for name, (tensor, dim) in split.items():
        assert tensor.shape[dim] == tokens, name  # slots included: (4 + F) x h/2 x w/2 tokens
        shards = tensor.chunk(WORLD, dim)  # EquipartitionSharder.shard: rank r keeps chunk r
        assert [s.shape[dim] for s in shards] == [
            check_sequence_split(config, frames, height, width, WORLD)
        ] * WORLD
        assert torch.equal(torch.cat(shards, dim), tensor)  # the gather (all_gather + cat) restores it
    # proj_out is where the plan gathers: it still holds every token, slot frames included, and the
    # BindWeave forward drops the slot frames only after the stock forward returned.
    assert captured["proj_out"].shape[1] == tokens
    assert output.shape == (1, 16, frames, height, width)
    slot_tokens = config.num_reference_slots * (height // 2) * (width // 2)
    unpatched = captured["proj_out"][:, slot_tokens:].reshape(1, frames, 2, 3, 1, 2, 2, 16)
    torch.testing.assert_close(unpatched.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(output.shape), output)


@torch.no_grad()
def test_cross_attention_never_takes_the_parallel_config(transformer):
    """Every rank holds the whole context: a parallel config reaching cross-attention would break it."""
    inputs = forward_inputs(transformer.config)
    expected = transformer(**inputs)[0]
    for processors in (
        [b.attn2.processor for b in transformer.blocks],
        install_fast_cross_attention(transformer),
    ):
        for processor in processors:
            processor._parallel_config = object()  # anything but None would be used by dispatch
        assert torch.equal(transformer(**inputs)[0], expected)


def test_sequence_split_and_degree_checks(transformer):
    released = BindWeaveTransformer3DModel.released_config()
    config = type("Config", (), {k: v for k, v in released.items() if not k.startswith("_")})
    # 720p, 81 frames: 25 x 45 x 80 = 90,000 tokens.
    assert sequence_length(config, 21, 90, 160) == 90_000
    assert check_sequence_split(config, 21, 90, 160, 8) == 11_250
    with pytest.raises(ValueError, match="does not divide"):
        check_sequence_split(config, 21, 90, 160, 7)
    with pytest.raises(ValueError, match="heads divisible"):
        enable_context_parallel(transformer, "ulysses", 3)  # 2 heads
    with pytest.raises(ValueError, match="log-sum-exp"):
        PerfConfig(context_parallel="ring").validate_perf()
    with pytest.raises(ValueError, match="--memory none"):
        PerfConfig(context_parallel="ulysses", memory="model-offload").validate_perf()


def test_init_distributed_needs_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="torchrun"):
        init_distributed()


def test_ulysses_context_parallel_on_two_ranks_gives_the_single_process_velocity(tmp_path, torchrun):
    worker = Path(__file__).with_name("cp_worker.py")
    torchrun([str(worker), str(tmp_path)], tmp_path)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    for result in results:
        assert result["shape"] == [1, 16, 2, 4, 6]
        assert result["separate"] < 1e-6  # measured 0.0 (bitwise) here
        assert result["batched"] < 1e-5  # batched CFG (unequal MLLM lengths) under context parallelism
