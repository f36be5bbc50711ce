"""``set_precision`` / ``--precision``: float32 sampling by default, bf16 where the release computes in bf16.

Spec 3: the release draws bf16 noise on a CPU generator, keeps bf16 latents through UniPC, combines CFG in
bf16 and decodes with a bf16 VAE. Each of those is checked where it happens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bindweave.denoiser import Conditioning, guided_velocity, predict_velocity
from bindweave.flow import apply_guidance

from .conftest import SIZE


def _run(pipe, refs, states, **kwargs) -> np.ndarray:
    positive, negative = states
    return pipe(
        "a red thing moves left",
        refs,
        **SIZE,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        mllm_hidden_states=positive,
        negative_mllm_hidden_states=negative,
        **kwargs,
    ).frames[0]


@pytest.mark.parametrize(("precision", "dtype"), [("float32", torch.float32), ("released", torch.bfloat16)])
def test_noise_is_drawn_in_the_precision_dtype_on_the_cpu_generator(make_pipe, precision, dtype):
    pipe = make_pipe()
    pipe.set_precision(precision)
    latents = pipe.prepare_latents(5, 32, 48, torch.Generator().manual_seed(3), torch.device("cpu"))
    expected = torch.randn((1, 16, 2, 4, 6), generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert torch.equal(latents, expected)


def test_released_precision_samples_guides_and_decodes_in_bf16(make_pipe, refs, mllm_states):
    pipe = make_pipe()
    pipe.set_precision("released")
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.bfloat16}
    seen = []
    step = pipe.scheduler.step

    def spy_step(model_output, timestep, sample, **kwargs):
        seen.append((model_output.dtype, sample.dtype))
        return step(model_output, timestep, sample, **kwargs)

    decoded = []
    decode = pipe.vae.decode

    def spy_decode(latents, **kwargs):
        decoded.append(latents.dtype)
        return decode(latents, **kwargs)

    pipe.scheduler.step, pipe.vae.decode = spy_step, spy_decode
    frames = _run(pipe, refs, mllm_states)
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3
    assert decoded == [torch.bfloat16]
    assert frames.shape == (5, 32, 48, 3) and np.isfinite(frames).all()


def test_guidance_combines_in_the_given_dtype(make_pipe, mllm_states):
    pipe = make_pipe()
    g = torch.Generator().manual_seed(0)
    latents, t = torch.randn(1, 16, 2, 4, 6, generator=g), torch.tensor([500.0])
    cond = Conditioning(
        text=torch.randn(1, 512, 32, generator=g),
        image=torch.randn(1, 4 * 257, 32, generator=g),
        mllm=mllm_states[0],
        condition=torch.randn(1, 20, 6, 4, 6, generator=g),
    )
    uncond = cond.with_prompt(torch.randn(1, 512, 32, generator=g), mllm_states[1])
    text_dim = pipe.transformer.config.text_dim
    image_dim = pipe.transformer.config.image_dim
    assert (text_dim, image_dim) == (32, 32), "the tensors above assume the tiny release's dims"
    v_c = predict_velocity(pipe.transformer, latents, t, cond)
    v_u = predict_velocity(pipe.transformer, latents, t, uncond)
    guided = guided_velocity(pipe.transformer, latents, t, cond, uncond, 5.0, dtype=torch.bfloat16)
    assert guided.dtype == torch.bfloat16
    assert torch.equal(guided, apply_guidance(v_u.bfloat16(), v_c.bfloat16(), 5.0))
    assert not torch.equal(guided.float(), apply_guidance(v_u, v_c, 5.0))


def test_released_precision_changes_the_video_by_bf16_rounding_only(make_pipe, refs, mllm_states):
    exact = _run(make_pipe(), refs, mllm_states)
    pipe = make_pipe()
    pipe.set_precision("released")
    released = _run(pipe, refs, mllm_states)
    difference = np.abs(released - exact)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.002); over 3 steps and a bf16 VAE the
    # frames (in [0, 1]) move by a few of those, never by a different video.
    assert 0 < difference.max() < 0.05, difference.max()


def test_unknown_precision_is_refused(make_pipe):
    with pytest.raises(ValueError, match="precision must be one of"):
        make_pipe().set_precision("bf16")
