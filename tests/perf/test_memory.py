"""Memory modes give the reference video where diffusers runs the mode on CPU, else the wiring is checked.

Each mode runs on its own pipeline (the hooks change it in place), so its video is compared with the
reference up to float32 rounding: model offload moves every weight to new storage (other SIMD paths).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bindweave.perf.memory import FP8_STORAGE_DTYPE, apply_memory_mode, enable_fp8_weights
from bindweave.testing import assert_close_to_float32_rounding

CPU = torch.device("cpu")
# Max abs difference of the decoded frames (values in [0, 1]) with fp8 weights, tiny model, 3 steps:
# measured 9.1e-3 here (torch 2.13 CPU); the bound leaves room for other BLAS builds.
FP8_FRAME_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def reference(make_pipe, refs, generate) -> np.ndarray:
    """Frames of the reference placement (``none``), MLLM computed by the tiny Qwen2.5-VL."""
    pipe = make_pipe()
    apply_memory_mode(pipe, "none", CPU)
    return generate(pipe, refs)


@pytest.mark.parametrize("mode", ["model-offload", "group-offload"])
def test_offload_modes_give_the_reference_video(make_pipe, refs, generate, reference, mode):
    expected = reference
    pipe = make_pipe()
    apply_memory_mode(pipe, mode, CPU)
    assert_close_to_float32_rounding(generate(pipe, refs), expected)
    if mode == "model-offload":  # the pipeline re-applies the offload hooks before decoding and at the end
        assert_close_to_float32_rounding(generate(pipe, refs), expected)


def test_model_offload_hooks_follow_the_component_order(make_pipe):
    pipe = make_pipe()
    apply_memory_mode(pipe, "model-offload", CPU)
    # accelerate's CpuOffload hook on each component of MLLM -> umT5 -> CLIP -> VAE -> DiT, chained so that
    # starting one component offloads the previous one: only the DiT is resident during the denoising loop.
    assert pipe.model_cpu_offload_seq == "mllm->text_encoder->image_encoder->vae->transformer"
    for name in ("mllm", "text_encoder", "image_encoder", "vae", "transformer"):
        assert hasattr(getattr(pipe, name), "_hf_hook"), name


def test_group_offload_hooks_are_block_level(make_pipe):
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    pipe = make_pipe()
    apply_memory_mode(pipe, "group-offload", CPU)
    blocks = pipe.transformer.blocks
    assert all(block._diffusers_hook.get_hook(_GROUP_OFFLOADING) is not None for block in blocks)


def test_sequential_offload_is_refused_on_a_cpu(make_pipe):
    with pytest.raises(ValueError, match="sequential needs an accelerator"):
        apply_memory_mode(make_pipe(), "sequential", CPU)


def test_fp8_weights_are_stored_in_fp8_and_stay_close(make_pipe, refs, generate, reference):
    expected = reference
    pipe = make_pipe()
    enable_fp8_weights(pipe.transformer, compute_dtype=torch.float32)
    block = pipe.transformer.blocks[0]
    assert (
        block.attn1.to_q.weight.dtype == FP8_STORAGE_DTYPE
        and block.ffn.net[2].weight.dtype == FP8_STORAGE_DTYPE
    )
    # diffusers' skip list: the condition embedder (with the MLLM connector) and the norms stay wide.
    assert pipe.transformer.condition_embedder.text_projector.linear_1.weight.dtype == torch.float32
    assert block.attn1.norm_q.weight.dtype == torch.float32
    frames = generate(pipe, refs)
    difference = np.abs(frames - expected).max()
    assert 0 < difference < FP8_FRAME_TOLERANCE


def test_fp8_refuses_an_fp8_compute_dtype(make_pipe):
    with pytest.raises(ValueError, match="wider compute dtype"):
        enable_fp8_weights(make_pipe().transformer, compute_dtype=FP8_STORAGE_DTYPE)


def test_unknown_mode_is_an_error(make_pipe):
    with pytest.raises(ValueError, match="unknown memory mode"):
        apply_memory_mode(make_pipe(), "disk", CPU)


def test_vae_tiling_leaves_videos_below_the_tile_size_unchanged(make_pipe, refs, generate, reference):
    pipe = make_pipe()
    apply_memory_mode(pipe, "none", CPU)
    pipe.vae.enable_tiling()
    assert pipe.vae.use_tiling
    # 32x48 frames are smaller than the default 256-pixel tile, so nothing is tiled: the reference video
    # (from another pipeline instance, so up to float32 rounding). Above the tile size, tiles overlap and are
    # blended: see docs/performance.md for the measured change.
    assert_close_to_float32_rounding(generate(pipe, refs), reference)
