"""The generation paths on CUDA: memory modes, fp8 weights, released precision, batched CFG, step caches and
every attention backend the CLI offers, each against the resident float32 pipeline on the same device.

Run by ``bindweave gpu-check`` on a GPU node; here with ``BINDWEAVE_GPU_TEST_DEVICE=cpu`` (parts that only
CUDA has skip themselves).

Tolerances. The references run with TF32 off (``allow_tf32`` False for cuBLAS matmuls and cuDNN
convolutions), so every kernel is a float32 one: cuBLAS SGEMM for the linear layers, cuDNN float32
convolutions for the VAE and the patch embedding, PyTorch's float32 SDPA (memory-efficient kernel) for
attention. A memory mode moves the weights to new storage and may change stream or launch order, never the
arithmetic, so its result differs from the reference at most by a changed summation order: the float32
rounding bound of :mod:`bindweave.testing.tolerance` (64 ulps of the output scale), derived from that
argument and not from CPU-specific kernels.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bindweave.denoiser import Conditioning, predict_velocity
from bindweave.perf.caching import StepCacheSpec, calibrate_mag_ratios
from bindweave.perf.memory import FP8_STORAGE_DTYPE, apply_memory_mode, enable_fp8_weights
from bindweave.perf.speed import attention_backends, set_attention_backend
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.testing.devices import skip_unless_cuda
from bindweave.toy.metrics import psnr

from .conftest import SIZE, tiny_pipe
from .test_cross_attention import BATCHED_ATOL, step_inputs
from .test_memory import FP8_FRAME_TOLERANCE

pytestmark = pytest.mark.gpu

# bf16 keeps 8 significant bits: its unit roundoff is 2**-9 of a value.
BF16_UNIT_ROUNDOFF = 2.0**-9


@pytest.fixture(scope="module", autouse=True)
def no_tf32() -> Iterator[None]:
    """Float32 kernels only (TF32 rounds matmul inputs to 10 bits), restored after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def resident(tiny_release, refs, gpu_device) -> np.ndarray:
    """Frames of the whole float32 pipeline resident on the device (``--memory none``)."""
    pipe = tiny_pipe(tiny_release)
    apply_memory_mode(pipe, "none", gpu_device)
    return _frames(pipe, refs)


def _frames(pipe, refs, steps: int = 3, **kwargs) -> np.ndarray:
    """One seeded tiny generation: the noise is drawn on the CPU generator, so every device gets the same."""
    return pipe(
        "a red thing moves left",
        refs,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        **{**SIZE, **kwargs},
    ).frames


# ---------------------------------------------------------------------------------------------- memory modes


@pytest.mark.parametrize("mode", ["model-offload", "group-offload", "sequential"])
def test_memory_modes_give_the_resident_video(tiny_release, refs, gpu_device, resident, mode):
    if mode == "sequential":
        skip_unless_cuda(gpu_device, "sequential offload")
    pipe = tiny_pipe(tiny_release)
    apply_memory_mode(pipe, mode, gpu_device)
    if mode == "group-offload" and gpu_device.type == "cuda":  # the DiT's next block comes on a side stream
        hook = pipe.transformer.blocks[0]._diffusers_hook.get_hook("group_offloading")
        assert hook.group.stream is not None
    assert_close_to_float32_rounding(_frames(pipe, refs), resident)
    if mode == "model-offload":  # the hooks are re-armed for a second call
        assert_close_to_float32_rounding(_frames(pipe, refs), resident)


def test_fp8_weights_stay_within_their_documented_error(tiny_release, refs, gpu_device, resident):
    """docs/performance.md: frames within 2e-2 of the float32 pipeline (measured 9.1e-3 on the CPU)."""
    pipe = tiny_pipe(tiny_release)
    enable_fp8_weights(pipe.transformer, compute_dtype=torch.float32)
    apply_memory_mode(pipe, "none", gpu_device)
    weight = pipe.transformer.blocks[0].attn1.to_q.weight
    assert weight.dtype == FP8_STORAGE_DTYPE and weight.device.type == gpu_device.type
    difference = np.abs(_frames(pipe, refs) - resident).max()
    assert 0 < difference < FP8_FRAME_TOLERANCE, difference


def test_fp8_weights_with_group_offload_are_offloaded_in_fp8(tiny_release, refs, gpu_device, resident):
    """fp8 is applied before offloading, so the CPU copies are the float8 ones, and the video is the same."""
    pipe = tiny_pipe(tiny_release)
    enable_fp8_weights(pipe.transformer, compute_dtype=torch.float32)
    reference = tiny_pipe(tiny_release)
    enable_fp8_weights(reference.transformer, compute_dtype=torch.float32)
    apply_memory_mode(reference, "none", gpu_device)
    apply_memory_mode(pipe, "group-offload", gpu_device)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == FP8_STORAGE_DTYPE
    assert_close_to_float32_rounding(_frames(pipe, refs), _frames(reference, refs))


# ---------------------------------------------------------------------------------------------- precision


def test_released_precision_in_bf16_stays_within_bf16_rounding(tiny_release, refs, mllm_states, gpu_device):
    """The bf16 pipeline with ``--precision released`` (bf16 noise, latents, CFG and VAE) against the same bf16
    pipeline with float32 sampling: the frames move by a few bf16 roundings (the CPU test's bound, 0.05),
    and the released run really computes in bf16 (it differs)."""
    positive, negative = (s.to(gpu_device) for s in mllm_states)
    states = dict(mllm_hidden_states=positive, negative_mllm_hidden_states=negative, guidance_scale=5.0)

    def run(precision: str) -> np.ndarray:
        pipe = tiny_pipe(tiny_release).to(gpu_device, torch.bfloat16)
        pipe.set_precision(precision)
        return _frames(pipe, refs, **states)

    exact, released = run("float32"), run("released")
    assert np.isfinite(released).all()
    assert 0 < np.abs(released - exact).max() < 0.05


# ---------------------------------------------------------------------------------------------- batched CFG


@torch.no_grad()
def test_batched_cfg_equals_two_forwards(gpu_device):
    from bindweave.denoiser import guided_velocity
    from bindweave.models import BindWeaveTransformer3DModel
    from bindweave.perf.cross_attention import install_fast_cross_attention
    from bindweave.testing import tiny_transformer_kwargs

    torch.manual_seed(0)
    transformer = BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()
    latents, t, cond, uncond = step_inputs(transformer)  # MLLM lengths 7 and 13: padded, split per sample
    transformer.to(gpu_device)
    latents, t, cond, uncond = (x.to(gpu_device) for x in (latents, t, cond, uncond))
    separate = guided_velocity(transformer, latents, t, cond, uncond, 5.0, batch_cfg=False)
    install_fast_cross_attention(transformer)
    batched = guided_velocity(transformer, latents, t, cond, uncond, 5.0, batch_cfg=True)
    torch.testing.assert_close(batched, separate, atol=BATCHED_ATOL, rtol=0)


def test_batched_cfg_pipeline_gives_the_two_pass_video(tiny_release, refs, mllm_states, gpu_device):
    positive, negative = (s.to(gpu_device) for s in mllm_states)
    states = dict(mllm_hidden_states=positive, negative_mllm_hidden_states=negative, guidance_scale=5.0)
    pipe = tiny_pipe(tiny_release).to(gpu_device)
    pipe.enable_batched_cfg(False)
    two_pass = _frames(pipe, refs, output_type="latent", **states)
    pipe.enable_batched_cfg(True)
    # 3 sampler steps on top of the one-forward difference (as the CPU test of the same path).
    torch.testing.assert_close(
        _frames(pipe, refs, output_type="latent", **states), two_pass, atol=BATCHED_ATOL * 10, rtol=0
    )


# ---------------------------------------------------------------------------------------------- step caches

# docs/performance.md, "Step caches": the tiny model, 20 steps, CFG 5, 64x96x17, MLLM states of 526 / 532
# tokens; PSNR of each cache against no cache, and the share of (step, branch) pairs that ran the last block.
CACHE_VIDEO = dict(height=64, width=96, num_frames=17)
DOCUMENTED_CACHES = [
    ("first-block", dict(threshold=0.05), 59.0),
    ("mag", dict(threshold=0.06), 65.9),
    ("taylorseer", dict(interval=2), 52.1),
]
# A random DiT's skip decisions sit near the thresholds: a rounding difference on another device may flip
# one and move the PSNR by a few dB; a broken cache (stale state, wrong branch) costs tens of dB.
PSNR_MARGIN_DB = 6.0


@pytest.fixture(scope="module")
def cache_reference(tiny_release, refs, gpu_device):
    """The uncached 20-step video on the device, and the MagCache ratios calibrated on that run."""
    from bindweave.testing import tiny_transformer_kwargs

    g = torch.Generator().manual_seed(1)
    dim = tiny_transformer_kwargs()["mllm_dim"]
    states = dict(
        mllm_hidden_states=torch.randn(1, 526, dim, generator=g).to(gpu_device),
        negative_mllm_hidden_states=torch.randn(1, 532, dim, generator=g).to(gpu_device),
        guidance_scale=5.0,
    )
    pipe = tiny_pipe(tiny_release).to(gpu_device)

    def run():
        return _frames(pipe, refs, steps=20, **CACHE_VIDEO, **states)

    ratios = calibrate_mag_ratios(pipe.transformer, run)
    return run(), tuple(ratios), states


@pytest.mark.parametrize(("kind", "settings", "documented_db"), DOCUMENTED_CACHES, ids=lambda v: str(v))
def test_step_caches_stay_within_their_documented_error(
    tiny_release, refs, gpu_device, cache_reference, kind, settings, documented_db
):
    expected, ratios, states = cache_reference
    extra = dict(mag_ratios=ratios) if kind == "mag" else {}
    pipe = tiny_pipe(tiny_release).to(gpu_device)
    pipe.enable_step_cache(StepCacheSpec(kind, **settings, **extra))
    frames = _frames(pipe, refs, steps=20, **CACHE_VIDEO, **states)
    assert np.isfinite(frames).all()
    measured = psnr(frames[0], expected[0])
    assert documented_db - PSNR_MARGIN_DB <= measured < 100, measured  # 100: the cap, an identical video


@pytest.mark.parametrize(
    "spec", [StepCacheSpec("first-block", threshold=0.0), StepCacheSpec("taylorseer", interval=1)]
)
def test_never_skipping_caches_give_the_uncached_video(tiny_release, refs, gpu_device, resident, spec):
    pipe = tiny_pipe(tiny_release).to(gpu_device)
    pipe.enable_step_cache(spec)
    assert_close_to_float32_rounding(_frames(pipe, refs), resident)


# ---------------------------------------------------------------------------------------------- attention

# The package each third-party backend needs (diffusers refuses the backend without it).
BACKEND_PACKAGES = {"flash": "flash_attn", "_flash_3": "flash_attn_interface", "sage": "sageattention"}
BACKEND_PACKAGES |= {"xformers": "xformers"}
# PyTorch's own fused kernels: CUDA only, and the flash kernel takes 16-bit inputs only.
CUDA_ONLY_BACKENDS = ("_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage")


def _cli_backends() -> list[str]:
    from typing import get_args

    from bindweave.perf.kinds import AttentionBackend

    return list(get_args(AttentionBackend))


@pytest.mark.parametrize("backend", _cli_backends())
@torch.no_grad()
def test_every_attention_backend_gives_the_math_result(gpu_device, backend):
    """bf16 DiT forward with ``backend`` on every self- and cross-attention vs PyTorch's math kernel.

    Tolerance: each attention output differs from the math kernel's by bf16 rounding of its inputs and
    output (a few units of 2**-9 relative); through the tiny DiT's 2 blocks, residual sums and output
    projection that stays below 16 roundoffs of the output's scale, while a wrong backend (dropped
    context, wrong layout or scale) moves the output by O(1) of its scale.
    """
    if backend in CUDA_ONLY_BACKENDS:
        skip_unless_cuda(gpu_device, f"the {backend} attention kernel")
    package = BACKEND_PACKAGES.get(backend)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"{backend} needs the {package} package, not installed here")
    from bindweave.models import BindWeaveTransformer3DModel
    from bindweave.perf.cross_attention import install_fast_cross_attention
    from bindweave.testing import tiny_transformer_kwargs

    torch.manual_seed(0)
    transformer = BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()
    install_fast_cross_attention(transformer)  # the processor the pipeline runs
    latents, t, cond, _ = step_inputs(transformer)
    transformer.to(gpu_device, torch.bfloat16)
    latents, t = latents.to(gpu_device, torch.bfloat16), t.to(gpu_device)
    cond = Conditioning(*(x.to(gpu_device, torch.bfloat16) for x in vars(cond).values()))
    set_attention_backend(transformer, "_native_math")
    expected = predict_velocity(transformer, latents, t, cond).float()
    set_attention_backend(transformer, backend)
    assert set(attention_backends(transformer).values()) == {backend}
    actual = predict_velocity(transformer, latents, t, cond).float()
    scale = expected.abs().max().item()
    assert torch.isfinite(actual).all()
    assert (actual - expected).abs().max().item() <= 16 * BF16_UNIT_ROUNDOFF * scale
