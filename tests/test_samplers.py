"""The samplers: LightX2V's table for distillation LoRAs, the Euler and LCM updates, and how the pipeline runs them.

Oracles: LightX2V's table computed here in float64 from its config (step list [1000, 750, 500, 250],
sample_shift 5: sigma = 5 s / (1 + 4 s) at s = step / 1000), and the latents the pipeline passes between
DiT forwards, recorded and checked against the update formulas.
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.flow import (
    euler_step,
    lcm_step,
    lightx2v_sampling_sigmas,
    lightx2v_step_list,
    released_sampling_sigmas,
)
from bindweave.pipeline import BindWeavePipeline
from bindweave.samplers import SAMPLERS, get_sampler
from bindweave.testing import assert_close_to_float32_rounding, tiny_transformer_kwargs

SIZE = dict(height=32, width=48, num_frames=5)


def test_lightx2v_table_is_its_4_step_config():
    assert lightx2v_step_list(4) == [1000, 750, 500, 250]
    sigmas, timesteps = lightx2v_sampling_sigmas(4, shift=5.0)
    expected = [5 * s / (1 + 4 * s) for s in (1.0, 0.75, 0.5, 0.25)]  # 1, 0.9375, 0.8333, 0.625
    assert sigmas.dtype == timesteps.dtype == torch.float32
    assert sigmas.shape == (5,) and timesteps.shape == (4,)
    np.testing.assert_allclose(sigmas.numpy(), [*expected, 0.0], rtol=1e-6)
    np.testing.assert_allclose(timesteps.numpy(), [1000 * s for s in expected], rtol=1e-6)


@pytest.mark.parametrize(("steps", "step_list"), [(1, [1000]), (2, [1000, 500]), (3, [1000, 666, 333]),
                                                  (8, [1000, 875, 750, 625, 500, 375, 250, 125])])  # fmt: skip
def test_lightx2v_step_lists_for_other_counts(steps, step_list):
    assert lightx2v_step_list(steps) == step_list
    sigmas, _ = lightx2v_sampling_sigmas(steps)
    np.testing.assert_allclose(
        sigmas[:-1].numpy(), [5 * (t / 1000) / (1 + 4 * t / 1000) for t in step_list], rtol=1e-6
    )


def test_euler_and_lcm_updates():
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(2, 3, generator=g) for _ in range(3))
    torch.testing.assert_close(euler_step(x, v, 0.8, 0.5), x + (0.5 - 0.8) * v)
    torch.testing.assert_close(euler_step(x, v, 0.625, 0.0), x - 0.625 * v)  # the last step: x0
    torch.testing.assert_close(lcm_step(x, v, 0.8, 0.5, noise), 0.5 * (x - 0.8 * v) + 0.5 * noise)
    torch.testing.assert_close(lcm_step(x, v, 0.625, 0.0, noise), x - 0.625 * v)
    assert euler_step(x.bfloat16(), v, 0.8, 0.5).dtype == torch.bfloat16


def test_sampler_defaults():
    assert (SAMPLERS["unipc"].default_steps, SAMPLERS["unipc"].default_guidance) == (None, None)
    assert (SAMPLERS["lightx2v"].default_steps, SAMPLERS["lightx2v"].default_guidance) == (4, 1.0)
    assert SAMPLERS["lightx2v-lcm"].cfg_distilled and not SAMPLERS["euler"].cfg_distilled
    with pytest.raises(ValueError, match="unknown sampler 'dpm'; choose one of unipc, euler, lightx2v"):
        get_sampler("dpm")


# ---------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def pipe(tiny_release):
    pipe = BindWeavePipeline.from_released(
        tiny_release.wan, tiny_release.transformer, tiny_release.mllm, torch_dtype=torch.float32,
        **tiny_transformer_kwargs(),
    )  # fmt: skip
    pipe.register_to_config(default_guidance_scale=5.0)  # the released default: CFG on
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refs():
    return [PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))]


class Recorder:
    """The latents, timestep and velocity of every DiT forward."""

    def __init__(self, model):
        self.inputs, self.timesteps, self.outputs = [], [], []
        self.handles = [
            model.register_forward_pre_hook(self.before, with_kwargs=True),
            model.register_forward_hook(self.after),
        ]

    def before(self, _module, _args, kwargs):
        self.inputs.append(kwargs["hidden_states"].clone())
        self.timesteps.append(kwargs["timestep"].clone())

    def after(self, _module, _args, output):
        self.outputs.append(output[0].clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def run(pipe, refs, **kwargs):
    return pipe(
        "a red thing moves left", refs, **SIZE, generator=torch.Generator().manual_seed(0), output_type="latent",
        **kwargs,
    ).frames  # fmt: skip


def test_lightx2v_runs_4_euler_steps_on_its_table_without_cfg(pipe, refs):
    with Recorder(pipe.transformer) as rec:
        latents = run(pipe, refs, sampler="lightx2v")
    sigmas, timesteps = lightx2v_sampling_sigmas(4)
    assert len(rec.inputs) == 4  # 4 steps, one branch: no CFG although the model's default is 5.0
    assert torch.equal(torch.cat(rec.timesteps), timesteps)  # bitwise: one pure function, the same inputs
    steps = [*rec.inputs[1:], latents]
    for i, (x, v, following) in enumerate(zip(rec.inputs, rec.outputs, steps, strict=True)):
        expected = x - sigmas[i] * v + sigmas[i + 1] * v
        assert_close_to_float32_rounding(following, expected)


def test_lightx2v_lcm_noises_the_predicted_latents_afresh(pipe, refs):
    with Recorder(pipe.transformer) as rec:
        latents = run(pipe, refs, sampler="lightx2v-lcm", num_inference_steps=3)
    sigmas, _ = lightx2v_sampling_sigmas(3)
    assert len(rec.inputs) == 3
    assert_close_to_float32_rounding(latents, rec.inputs[-1] - sigmas[2] * rec.outputs[-1])
    # In between: (1 - s') x0 + s' eps with fresh noise eps, which is neither the Euler step nor the x0.
    x0 = rec.inputs[0] - sigmas[0] * rec.outputs[0]
    eps = (rec.inputs[1] - (1 - sigmas[1]) * x0) / sigmas[1]
    assert 0.7 < eps.std() < 1.3 and not torch.allclose(
        rec.inputs[1], euler_step(rec.inputs[0], rec.outputs[0], sigmas[0], sigmas[1])
    )
    # Seeded: the same pipeline instance run twice (same kernels, same storage), so bitwise.
    assert torch.equal(run(pipe, refs, sampler="lightx2v-lcm", num_inference_steps=3), latents)


def test_euler_takes_the_released_timesteps(pipe, refs):
    with Recorder(pipe.transformer) as rec:
        run(pipe, refs, sampler="euler", num_inference_steps=3, guidance_scale=1.0)
    sigmas, timesteps = released_sampling_sigmas(3, shift=pipe.scheduler.config.flow_shift)
    assert [t.item() for t in rec.timesteps] == timesteps.tolist()
    assert_close_to_float32_rounding(
        rec.inputs[1], euler_step(rec.inputs[0], rec.outputs[0], sigmas[0], sigmas[1])
    )


def test_cfg_with_a_distillation_sampler_is_warned_about(pipe, refs, caplog):
    with Recorder(pipe.transformer) as rec, caplog.at_level(logging.WARNING):
        run(pipe, refs, sampler="lightx2v", guidance_scale=3.0, num_inference_steps=2)
    assert len(rec.inputs) == 4  # 2 steps x 2 branches
    assert "sampler lightx2v is for CFG-distilled LoRAs, which LightX2V runs without CFG" in caplog.text


def test_unipc_is_still_the_default(pipe, refs):
    # Bitwise: one pipeline instance run twice with the same seed (same kernels, same storage).
    assert torch.equal(
        run(pipe, refs, num_inference_steps=2), run(pipe, refs, num_inference_steps=2, sampler="unipc")
    )
    with pytest.raises(ValueError, match="unknown sampler"):
        run(pipe, refs, sampler="ddim")


def _lightx2v_lcm_oracle(x, velocities, num_steps, generator, dtype):
    """LightX2V's ``WanStepDistillScheduler.step_post`` of its LCM period (commit 6af1958 to 753a494, in
    ``lightx2v/models/schedulers/wan/step_distill/scheduler.py``), as written there: its own sigma table
    (``linspace(1, 0, 1001)[:-1]``, shifted by 5, indexed at ``1000 - step``), ``x0`` in float32, fresh
    float32 noise from the run's generator on every step but the last, ``(1 - s') x0 + s' eps`` with Python
    float sigmas, rounded once to the latents' dtype. Returns the latents after each step."""
    table = torch.linspace(1.0, 0.0, 1001)[:-1]
    table = 5.0 * table / (1 + 4.0 * table)
    sigmas = table[[1000 - step for step in lightx2v_step_list_oracle(num_steps)]]
    out = []
    for i, v in enumerate(velocities):
        x0 = x.to(torch.float32) - sigmas[i].item() * v.to(dtype).to(torch.float32)
        if i < num_steps - 1:
            s = sigmas[i + 1].item()
            noise = torch.randn(x0.shape, dtype=torch.float32, generator=generator)
            x0 = ((1 - s) * x0 + s * noise).type_as(noise)
        x = x0.to(dtype)
        out.append(x)
    return out


def lightx2v_step_list_oracle(n):
    return [1000 * (n - i) // n for i in range(n)]  # LightX2V's [1000, 750, 500, 250] for 4


@pytest.mark.parametrize("precision", ["float32", "released"])
@pytest.mark.parametrize("steps", [2, 4])
def test_lightx2v_lcm_matches_lightx2v_bit_for_bit(pipe, refs, precision, steps):
    """The latents after each step, and the generator's state after the run, are LightX2V's: float32 noise
    (also under ``--precision released``), none drawn after the last step."""
    after = []
    pipe.set_precision(precision)
    try:
        with Recorder(pipe.transformer) as rec:
            run(pipe, refs, sampler="lightx2v-lcm", num_inference_steps=steps,
                callback_on_step_end=lambda p, i, t, k: after.append(k["latents"].clone()) or {})  # fmt: skip
    finally:
        pipe.set_precision("float32")
    dtype = torch.float32 if precision == "float32" else torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    initial = torch.randn(after[0].shape, generator=generator, dtype=dtype)  # the pipeline's initial noise
    assert torch.equal(rec.inputs[0].to(dtype), initial)
    expected = _lightx2v_lcm_oracle(initial, rec.outputs, steps, generator, dtype)
    assert len(after) == steps
    for mine, theirs in zip(after, expected, strict=True):
        assert mine.dtype == dtype and torch.equal(mine, theirs)
    # One noise per step but the last: a generator that drew as LightX2V does is where the run's ended.
    state = torch.Generator().manual_seed(0)
    torch.randn(after[0].shape, generator=state, dtype=dtype)
    for _ in range(steps - 1):
        torch.randn(after[0].shape, generator=state, dtype=torch.float32)
    mine_state = torch.Generator().manual_seed(0)
    run_generator_state = _generator_after_run(pipe, refs, steps, precision)
    assert torch.equal(run_generator_state, state.get_state()) and not torch.equal(
        run_generator_state, mine_state.get_state()
    )


def _generator_after_run(pipe, refs, steps, precision):
    generator = torch.Generator().manual_seed(0)
    pipe.set_precision(precision)
    try:
        pipe("a red thing moves left", refs, **SIZE, generator=generator, output_type="latent",
             sampler="lightx2v-lcm", num_inference_steps=steps)  # fmt: skip
    finally:
        pipe.set_precision("float32")
    return generator.get_state()
