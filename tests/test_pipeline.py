"""End-to-end tests of BindWeavePipeline on tiny components loaded from the released folder layouts.

Runs of the module's one pipeline instance are compared bitwise; a pipeline loaded another way is compared
up to float32 rounding (:mod:`bindweave.testing.tolerance`).
"""

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.conditioning.mllm import MLLMStateError
from bindweave.conditioning.references import ReferenceError
from bindweave.denoiser import Conditioning, guided_velocity, predict_velocity
from bindweave.flow import apply_guidance
from bindweave.models import BindWeaveTransformer3DModel
from bindweave.pipeline import BindWeavePipeline
from bindweave.sampling import set_released_timesteps
from bindweave.testing import (
    assert_close_to_float32_rounding,
    assert_differs_beyond_float32_rounding,
    tiny_transformer_kwargs,
)

SIZE = dict(height=32, width=48, num_frames=5)


@pytest.fixture(scope="module")
def pipe(tiny_release):
    release = tiny_release
    return BindWeavePipeline.from_released(
        release.wan, release.transformer, release.mllm, torch_dtype=torch.float32, **tiny_transformer_kwargs()
    )


@pytest.fixture(scope="module")
def refs():
    rng = np.random.default_rng(0)
    return [
        PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 255, (36, 24, 3), dtype=np.uint8)),
    ]


def run(pipe, refs, seed=0, **kwargs):
    kwargs = {**SIZE, "num_inference_steps": 2, **kwargs}
    return pipe(
        "a red thing moves left", refs, generator=torch.Generator().manual_seed(seed), **kwargs
    ).frames


@pytest.fixture(scope="module")
def reference(pipe, refs):
    """``run(pipe, refs)``: seed 0, 2 steps, the default guidance (5.0), computed once for the module."""
    return run(pipe, refs)


class ForwardSpy:
    """Records the keyword arguments of every transformer forward."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, _module, _args, kwargs):
        self.calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_output_shape_range_and_determinism(pipe, refs, reference):
    a = run(pipe, refs, seed=0)
    c = run(pipe, refs, seed=4)
    assert a.shape == (1, 5, 32, 48, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, reference)  # the same pipeline instance: the same kernels on the same weights
    assert_differs_beyond_float32_rounding(a, c)


def test_cfg_runs_two_branches_that_differ_only_in_prompt_states(pipe, refs):
    with ForwardSpy(pipe.transformer) as spy:
        guided = run(pipe, refs, guidance_scale=5.0, num_inference_steps=2)
    assert len(spy.calls) == 4  # 2 steps x (cond, uncond)
    cond, uncond = spy.calls[0], spy.calls[1]
    # CLIP and VAE conditions are shared; umT5 and MLLM states are the negative prompt's.
    assert torch.equal(cond["encoder_hidden_states_image"], uncond["encoder_hidden_states_image"])
    assert torch.equal(cond["condition"], uncond["condition"])
    assert torch.equal(cond["hidden_states"], uncond["hidden_states"])
    assert not torch.equal(cond["encoder_hidden_states"], uncond["encoder_hidden_states"])
    assert cond["mllm_hidden_states"].shape[1] != uncond["mllm_hidden_states"].shape[1] or not torch.equal(
        cond["mllm_hidden_states"], uncond["mllm_hidden_states"]
    )

    with ForwardSpy(pipe.transformer) as spy:
        unguided = run(pipe, refs, guidance_scale=1.0, num_inference_steps=2)
    assert len(spy.calls) == 2
    assert_differs_beyond_float32_rounding(unguided, guided)


def test_conditioning_shapes_follow_the_spec(pipe, refs):
    with ForwardSpy(pipe.transformer) as spy:
        run(pipe, refs, num_inference_steps=1)
    call = spy.calls[0]
    c = pipe.transformer.config
    # 5 frames of 32x48 -> 2 latent frames of 4x6; 4 reference slots in front of the condition.
    assert call["hidden_states"].shape == (1, 16, 2, 4, 6)
    assert call["condition"].shape == (1, 20, 4 + 2, 4, 6)
    assert call["encoder_hidden_states"].shape == (1, 512, c.text_dim)
    assert call["encoder_hidden_states_image"].shape == (1, 4 * c.image_context_tokens, c.image_dim)
    # Two references: slots 2 and 3 are empty (zero CLIP tokens, zero condition frames).
    assert call["encoder_hidden_states_image"][0, 2 * c.image_context_tokens :].abs().sum() == 0
    assert call["condition"][0, :, 2:4].abs().sum() == 0
    assert call["condition"][0, 0, :2].abs().sum() > 0  # masks of the two references
    assert call["condition"][0, :4, 4:].abs().sum() == 0  # the video part's masks are zero
    assert call["mllm_hidden_states"].shape[-1] == c.mllm_dim


def test_guided_velocity_is_the_cfg_formula(pipe):
    g = torch.Generator().manual_seed(0)
    c = pipe.transformer.config
    latents = torch.randn(1, 16, 2, 4, 6, generator=g)
    t = torch.tensor([500.0])

    def cond_of(seed):
        gg = torch.Generator().manual_seed(seed)
        return Conditioning(
            text=torch.randn(1, 512, c.text_dim, generator=gg),
            image=torch.randn(1, 4 * c.image_context_tokens, c.image_dim, generator=gg),
            mllm=torch.randn(1, 5, c.mllm_dim, generator=gg),
            condition=torch.randn(1, 20, 6, 4, 6, generator=gg),
        )

    cond, uncond = cond_of(1), cond_of(2)
    v_c = predict_velocity(pipe.transformer, latents, t, cond)
    v_u = predict_velocity(pipe.transformer, latents, t, uncond)
    guided = guided_velocity(pipe.transformer, latents, t, cond, uncond, 5.0)
    torch.testing.assert_close(guided, v_u + 5.0 * (v_c - v_u))
    torch.testing.assert_close(apply_guidance(v_u, v_c, 5.0), v_u + 5.0 * (v_c - v_u))
    assert torch.equal(guided_velocity(pipe.transformer, latents, t, cond, uncond, 1.0), v_c)


def test_scheduler_has_the_released_sampler_settings(pipe):
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert config.use_flow_sigmas and config.flow_shift == 3.0 and config.prediction_type == "flow_prediction"
    assert (config.solver_order, config.solver_type, config.predict_x0) == (2, "bh2", True)
    assert (
        config.lower_order_final and config.final_sigmas_type == "zero" and config.num_train_timesteps == 1000
    )


def test_sampling_runs_on_the_released_sigma_table(pipe, refs):
    """The timesteps the DiT sees are diffusers 0.33.1's (999, 992, 985, ... at 50 steps), not the installed
    diffusers' own table; shift 3 on the 0.33.1 grid, computed here in plain Python."""
    steps = 7
    seen = []

    def record(_pipe, _i, t, tensors):
        seen.append(int(t))
        return tensors

    run(pipe, refs, num_inference_steps=steps, callback_on_step_end=record)
    grid = [1 - a for a in reversed([1 + i * (1 / 1000 - 1) / steps for i in range(steps)] + [1 / 1000])][:-1]
    assert seen == [int(3 * s / (1 + 2 * s) * 1000) for s in grid]
    assert pipe.scheduler.sigmas[-1] == 0

    set_released_timesteps(pipe.scheduler, 50)
    assert pipe.scheduler.timesteps[:3].tolist() == [999, 992, 985]
    assert pipe.scheduler.timesteps[-2:].tolist() == [111, 57]


def test_a_scheduler_that_ignores_the_explicit_table_is_refused(pipe, monkeypatch):
    """A diffusers that treated explicit sigmas differently would fail loudly, not sample another table."""
    scheduler = pipe.scheduler
    set_timesteps = type(scheduler).set_timesteps
    monkeypatch.setattr(
        type(scheduler),
        "set_timesteps",
        lambda self, num_inference_steps=None, device=None, sigmas=None: set_timesteps(
            self, len(sigmas), device=device
        ),
    )
    with pytest.raises(RuntimeError, match="did not take the released sigma table"):
        set_released_timesteps(pipe.scheduler, 50)


def test_precomputed_mllm_states_without_an_mllm(pipe, refs):
    no_mllm = BindWeavePipeline(**{**pipe.components, "mllm": None, "mllm_processor": None})
    dim = pipe.transformer.config.mllm_dim
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 9, dim, generator=g), torch.randn(1, 11, dim, generator=g)
    a = run(no_mllm, refs, mllm_hidden_states=pos, negative_mllm_hidden_states=neg)
    b = run(no_mllm, refs, mllm_hidden_states=pos, negative_mllm_hidden_states=neg * 2)
    assert a.shape == (1, 5, 32, 48, 3)
    assert_differs_beyond_float32_rounding(a, b)
    with pytest.raises(ValueError, match="no mllm"):
        run(no_mllm, refs)
    with pytest.raises(MLLMStateError, match=f"\\(1, L, {dim}\\)"):
        run(no_mllm, refs, mllm_hidden_states=torch.randn(1, 9, dim + 1), negative_mllm_hidden_states=neg)


def test_negative_states_without_a_negative_branch_are_checked_and_named(pipe, refs, caplog):
    """At guidance 1 the negative states are unused: a wrong tensor is refused, a right one is named."""
    no_mllm = BindWeavePipeline(**{**pipe.components, "mllm": None, "mllm_processor": None})
    dim = pipe.transformer.config.mllm_dim
    pos = torch.randn(1, 9, dim, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MLLMStateError, match=f"^negative_mllm_hidden_states has shape \\(1, 4, {dim + 1}\\)"):
        run(no_mllm, refs, mllm_hidden_states=pos, negative_mllm_hidden_states=torch.zeros(1, 4, dim + 1),
            guidance_scale=1.0, num_inference_steps=1)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="bindweave.pipeline"):
        given = run(no_mllm, refs, mllm_hidden_states=pos, negative_mllm_hidden_states=pos * 2,
                    guidance_scale=1.0, num_inference_steps=1)  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "negative_mllm_hidden_states have no effect at guidance_scale 1 (no negative branch)"
    ]
    assert np.array_equal(
        given, run(no_mllm, refs, mllm_hidden_states=pos, guidance_scale=1.0, num_inference_steps=1)
    )


def test_released_fixture_states_load_through_the_user_path(pipe, refs, fixtures_dir):
    """The real Qwen2.5-VL-7B states (1, 526, 3584) drive a tiny model built with mllm_dim=3584."""
    states = fixtures_dir / "hidden_states"
    torch.manual_seed(0)
    transformer = BindWeaveTransformer3DModel(**tiny_transformer_kwargs(mllm_dim=3584)).eval()
    big = BindWeavePipeline(
        **{**pipe.components, "transformer": transformer, "mllm": None, "mllm_processor": None}
    )
    with ForwardSpy(transformer) as spy:
        frames = run(
            big,
            refs,
            mllm_hidden_states=states / "singleface_hidden_states.pt",
            negative_mllm_hidden_states=states / "singleface_hidden_states_negative.pt",
            num_inference_steps=1,
        )
    assert frames.shape == (1, 5, 32, 48, 3) and np.isfinite(frames).all()
    assert spy.calls[0]["mllm_hidden_states"].shape == (1, 526, 3584)
    assert spy.calls[1]["mllm_hidden_states"].shape == (1, 532, 3584)

    small = BindWeavePipeline(**{**pipe.components, "mllm": None, "mllm_processor": None})
    with pytest.raises(MLLMStateError, match="singleface_hidden_states.pt.*3584.*mllm_dim=32"):
        run(small, refs, mllm_hidden_states=states / "singleface_hidden_states.pt", guidance_scale=1.0)


def test_save_and_reload_gives_the_same_video(pipe, refs, reference, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = BindWeavePipeline.from_pretrained(tmp_path / "pipe")
    assert type(reloaded.transformer) is BindWeaveTransformer3DModel
    assert reloaded.config.default_height == 720 and reloaded.config.default_num_frames == 81
    # The same weights at other addresses (from_pretrained maps one file per component, from_released the
    # sharded DiT): other SIMD paths, so equal up to float32 rounding (measured 6.5 ulps), not bitwise.
    assert_close_to_float32_rounding(run(reloaded, refs), reference)


def test_defaults_are_the_paper_settings(pipe):
    import inspect

    params = inspect.signature(BindWeavePipeline.__call__).parameters
    assert params["num_inference_steps"].default is None and params["guidance_scale"].default is None
    assert params["negative_prompt"].default.startswith("Bright tones, overexposed")
    assert (pipe.config.default_height, pipe.config.default_width, pipe.config.default_num_frames) == (
        720,
        1280,
        81,
    )
    assert pipe.config.default_guidance_scale == 5.0 and pipe.config.default_num_inference_steps == 50


def test_steps_default_to_the_models_saved_count(pipe, refs, tmp_path):
    few = BindWeavePipeline(**pipe.components, default_num_inference_steps=3)
    few.save_pretrained(tmp_path / "few")
    reloaded = BindWeavePipeline.from_pretrained(tmp_path / "few")
    assert reloaded.config.default_num_inference_steps == 3
    with ForwardSpy(reloaded.transformer) as spy:
        default = run(reloaded, refs, num_inference_steps=None, guidance_scale=1.0)
    assert len(spy.calls) == 3
    assert np.array_equal(default, run(reloaded, refs, num_inference_steps=3, guidance_scale=1.0))


def test_guidance_defaults_to_the_models_saved_scale(pipe, refs, reference, tmp_path):
    unguided = BindWeavePipeline(**pipe.components, default_guidance_scale=1.0)
    unguided.save_pretrained(tmp_path / "unguided")
    reloaded = BindWeavePipeline.from_pretrained(tmp_path / "unguided")
    assert reloaded.config.default_guidance_scale == 1.0
    with ForwardSpy(reloaded.transformer) as spy:
        default = run(reloaded, refs, guidance_scale=None)
    assert len(spy.calls) == 2  # one forward per step (2 steps): no negative branch
    assert np.array_equal(default, run(reloaded, refs, guidance_scale=1.0))  # the same instance: bitwise
    assert_differs_beyond_float32_rounding(default, reference)  # ``reference`` is guided at 5.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(num_frames=8), ValueError, "4k \\+ 1"),
        (dict(height=40), ValueError, "multiples of 16"),
        (dict(width=50), ValueError, "multiples of 16"),
        (dict(guidance_scale=0.5), ValueError, "guidance_scale"),
    ],
)
def test_bad_sampling_arguments(pipe, refs, kwargs, error, match):
    with pytest.raises(error, match=match):
        run(pipe, refs, **kwargs)


def test_bad_references(pipe, refs, tmp_path, caplog):
    with pytest.raises(ReferenceError, match="at least one"):
        run(pipe, [])
    with pytest.raises(ReferenceError, match="missing.png"):
        run(pipe, [tmp_path / "missing.png"])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ReferenceError, match="bad.png"):
        run(pipe, [bad])
    with pytest.raises(ValueError, match="non-empty"):
        pipe("  ", refs, **SIZE)

    five = refs + refs + refs[:1]
    with caplog.at_level(logging.WARNING), ForwardSpy(pipe.transformer) as spy:
        run(pipe, five, num_inference_steps=1, guidance_scale=1.0)
    assert "keeping the first 4" in caplog.text
    tokens = pipe.transformer.config.image_context_tokens
    assert spy.calls[0]["encoder_hidden_states_image"][0, 3 * tokens :].abs().sum() > 0  # all 4 slots used
