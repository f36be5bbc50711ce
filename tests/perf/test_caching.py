"""Step caches through diffusers' hooks: they run on the BindWeave DiT, per CFG branch, and never skip at 0."""

from __future__ import annotations

import json

import pytest
import torch

from bindweave.perf.caching import StepCacheSpec, calibrate_mag_ratios, load_mag_ratios, save_mag_ratios
from bindweave.testing import assert_close_to_float32_rounding, assert_differs_beyond_float32_rounding

STEPS = 5


class BlockCounter:
    """Counts computations of the DiT's last block: its FFN runs only when the block is not skipped.

    (The block itself is still called on a skipped step: the cache hooks replace its ``forward``.)
    """

    def __init__(self, transformer):
        self.calls = 0
        self.handle = transformer.blocks[-1].ffn.register_forward_pre_hook(self.count)

    def count(self, *_):
        self.calls += 1


@pytest.fixture(scope="module")
def reference(tiny_release, refs, mllm_states, generate):
    """Latents of the uncached pipeline and its calibrated mag ratios (another instance than each test's)."""
    from bindweave.pipeline import BindWeavePipeline
    from bindweave.testing import tiny_transformer_kwargs

    pipe = BindWeavePipeline.from_released(
        tiny_release.wan,
        tiny_release.transformer,
        None,
        torch_dtype=torch.float32,
        **tiny_transformer_kwargs(),
    )
    pipe.set_progress_bar_config(disable=True)
    ratios = calibrate_mag_ratios(pipe.transformer, lambda: generate(pipe, refs, mllm_states, steps=STEPS))
    latents = generate(pipe, refs, mllm_states, steps=STEPS, output_type="latent")
    return latents, tuple(ratios)


def run(make_pipe, refs, mllm_states, generate, spec):
    pipe = make_pipe()
    pipe.enable_step_cache(spec)
    counter = BlockCounter(pipe.transformer)
    latents = generate(pipe, refs, mllm_states, steps=STEPS, output_type="latent")
    return latents, counter.calls


@pytest.mark.parametrize(
    "spec",
    [StepCacheSpec("first-block", threshold=0.0), StepCacheSpec("taylorseer", interval=1), "mag-0"],
    ids=["first-block-0", "taylorseer-1", "mag-0"],
)
def test_caches_that_never_skip_give_the_reference(make_pipe, refs, mllm_states, generate, reference, spec):
    expected, ratios = reference
    if spec == "mag-0":
        spec = StepCacheSpec("mag", threshold=0.0, mag_ratios=ratios)
    latents, calls = run(make_pipe, refs, mllm_states, generate, spec)
    assert_close_to_float32_rounding(latents, expected)  # another pipeline instance than the reference's
    assert calls == 2 * STEPS  # every step, both branches


@pytest.mark.parametrize(
    "spec", [StepCacheSpec("first-block", threshold=1.0), StepCacheSpec("taylorseer", interval=2), "mag"]
)
def test_skipping_caches_skip_blocks_and_stay_finite(make_pipe, refs, mllm_states, generate, reference, spec):
    expected, ratios = reference
    if spec == "mag":
        spec = StepCacheSpec("mag", threshold=1.0, mag_ratios=ratios)
    latents, calls = run(make_pipe, refs, mllm_states, generate, spec)
    assert calls < 2 * STEPS and torch.isfinite(latents).all()
    assert_differs_beyond_float32_rounding(latents, expected)


def test_cache_state_is_kept_per_cfg_branch(make_pipe, refs, mllm_states, generate):
    """Each branch runs in its own diffusers cache context: cond and uncond each see every step once."""
    pipe = make_pipe()
    ratios = {
        branch: calibrate_mag_ratios(
            pipe.transformer, lambda: generate(pipe, refs, mllm_states, steps=3), branch=branch
        )
        for branch in ("cond", "uncond")
    }
    assert len(ratios["cond"]) == len(ratios["uncond"]) == 3
    assert ratios["cond"] != ratios["uncond"]
    pipe.enable_batched_cfg()
    batched = calibrate_mag_ratios(
        pipe.transformer, lambda: generate(pipe, refs, mllm_states, steps=3), branch="cond_uncond"
    )
    assert len(batched) == 3


def test_a_run_starts_from_an_empty_cache_state(make_pipe, refs, mllm_states, generate):
    pipe = make_pipe()
    pipe.enable_step_cache(StepCacheSpec("first-block", threshold=0.5))
    first = generate(pipe, refs, mllm_states, steps=STEPS, output_type="latent")
    # The same instance run twice: bitwise, so no cache state can leak from the first run into the second.
    assert torch.equal(generate(pipe, refs, mllm_states, steps=STEPS, output_type="latent"), first)


def test_spec_validation(tmp_path):
    with pytest.raises(ValueError, match="mag-ratios"):
        StepCacheSpec("mag")
    with pytest.raises(ValueError, match="first-block and mag"):
        StepCacheSpec("taylorseer", threshold=0.1)
    with pytest.raises(ValueError, match="taylorseer"):
        StepCacheSpec("first-block", interval=2)
    path = save_mag_ratios([1.0, 0.98, 1.02], tmp_path / "ratios.json")
    assert load_mag_ratios(path) == (1.0, 0.98, 1.02)
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_mag_ratios(path)
