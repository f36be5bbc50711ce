"""gpu: on the device, the BindWeave DiT with its own inputs neutral computes stock Wan I2V's output.

Neutral: no MLLM tokens (the connector adds nothing to the text context) and one reference slot's worth
of CLIP tokens (where BindWeave splits the image tokens from the text ones, stock Wan's split at
``len - 512`` falls too). Stock Wan gets the same weights (shared tensors) and the reference slots as zero
latent frames before the noise, as ``tests/models/test_transformer.py`` does on the CPU. Compared:

- float32 with TF32 off: equal up to float32 rounding (:mod:`bindweave.testing.tolerance`), and bitwise on
  the CPU, where the CPU test shows the same kernels run. On CUDA only rounding is claimed: the two models
  build equal inputs and contexts through other ops (ours concatenates the slot frames and the connector's
  empty output itself), and nothing here proves that every kernel CUDA picks for them is the same;
- bf16, the weights as ``from_pretrained`` loads them (``_keep_in_fp32_modules`` float32): no further from
  stock than twice stock's own bf16 error, measured against the float32 forward of the same weights.

The float32 comparison is the sensitive one (one weight of the output projection moved by 1e-2 is ~270
times its bound). The bf16 one catches what loses accuracy, e.g. a timestep rounded to bf16 (637 -> 636:
34 times its bound), but not changes below bf16 rounding (that weight change: 0.2 times its bound).
"""

from __future__ import annotations

import copy

import pytest
import torch

from bindweave.models import BindWeaveTransformer3DModel
from bindweave.perf.dit_timing import random_transformer, stock_wan_sharing_weights
from bindweave.testing import tiny_transformer_kwargs
from bindweave.testing.tolerance import (
    assert_close_to_float32_rounding,
    assert_differs_beyond_float32_rounding,
)

pytestmark = pytest.mark.gpu

FRAMES, HEIGHT, WIDTH = 3, 4, 6  # latent frames and size (the patch size is 2 in h and w)
#: Std of the noise added to every weight. At 0.05 one stray MLLM token moved the float32 output by only
#: ~13 ulps (diluted among 512 text tokens), inside the 64-ulp rounding bound; at 0.2 by ~2300 ulps.
NOISE = 0.2


@pytest.fixture
def no_tf32():
    """TF32 off for matmuls and cuDNN (convolutions default to TF32): float32 means float32; restored after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def tiny_dit(device: torch.device, dtype: torch.dtype) -> BindWeaveTransformer3DModel:
    """The tiny DiT on ``device`` in ``dtype`` (from_pretrained's per-module dtypes), every weight random.

    ``random_transformer`` leaves biases at 0 and norm scales at 1; seeded noise (:data:`NOISE`) on every
    parameter keeps any branch from hiding behind them.
    """
    model = random_transformer(tiny_transformer_kwargs(), device, dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_((torch.randn(param.shape, generator=g) * NOISE).to(device, param.dtype))
    return model


def neutral_inputs(model: BindWeaveTransformer3DModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Seeded inputs in ``dtype`` (the timestep float32, as the pipeline passes it); no MLLM tokens."""
    g = torch.Generator().manual_seed(1)
    c, device = model.config, model.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    return {
        "hidden_states": randn(1, c.out_channels, FRAMES, HEIGHT, WIDTH),
        "timestep": torch.full((1,), 637.0, device=device),
        "encoder_hidden_states": randn(1, 512, c.text_dim),
        "encoder_hidden_states_image": randn(1, c.image_context_tokens, c.image_dim),
        "mllm_hidden_states": randn(1, 0, c.mllm_dim),
        "condition": randn(1, c.in_channels - c.out_channels, c.num_reference_slots + FRAMES, HEIGHT, WIDTH),
    }


def bindweave_and_stock(model: BindWeaveTransformer3DModel, x: dict[str, torch.Tensor]):
    """``(ours, stock)``: the two models' predictions for the video frames (stock's slot frames dropped)."""
    slots = model.config.num_reference_slots
    latents = x["hidden_states"]
    slot_frames = latents.new_zeros(*latents.shape[:2], slots, *latents.shape[3:])
    stock_hidden = torch.cat([torch.cat([slot_frames, latents], dim=2), x["condition"]], dim=1)
    stock = stock_wan_sharing_weights(model)
    with torch.no_grad():
        ours = model(**x).sample
        reference = stock(
            stock_hidden, x["timestep"], x["encoder_hidden_states"], x["encoder_hidden_states_image"]
        ).sample
    assert ours.shape == latents.shape == (1, model.config.out_channels, FRAMES, HEIGHT, WIDTH)
    return ours, reference[:, :, slots:]


def test_float32_equals_stock_wan(gpu_device, no_tf32):
    model = tiny_dit(gpu_device, torch.float32)
    ours, stock = bindweave_and_stock(model, neutral_inputs(model, torch.float32))
    assert ours.dtype == torch.float32 and ours.device.type == gpu_device.type
    assert_close_to_float32_rounding(ours, stock)
    if gpu_device.type == "cpu":
        assert torch.equal(ours, stock)


def test_bf16_is_as_close_to_stock_wan_as_bf16_rounding_allows(gpu_device, no_tf32):
    """|ours - stock| <= |ours - exact| + |exact - stock| <= 2 E, where E = max |stock_bf16 - exact| is
    stock's own bf16 error: ours may round differently (other kernels) but must not be less accurate.

    "exact" is the float32 forward of the same (bf16-valued) weights and inputs; its own error is float32
    rounding, ~2**16 times below bf16's, so it stands for the exact value here.
    """
    model = tiny_dit(gpu_device, torch.bfloat16)
    x = neutral_inputs(model, torch.bfloat16)
    ours, stock = bindweave_and_stock(model, x)
    assert ours.dtype == torch.bfloat16

    exact_model = copy.deepcopy(model).float()  # bf16 values are exact in float32
    exact_x = {k: v.float() for k, v in x.items()}
    _, exact = bindweave_and_stock(exact_model, exact_x)
    # Not vacuous: the bf16 forward really rounds to bf16 (its error is far beyond float32 rounding).
    assert_differs_beyond_float32_rounding(stock, exact)

    stock_error = (stock.double() - exact.double()).abs().max()
    difference = (ours.double() - stock.double()).abs().max()
    assert difference <= 2 * stock_error, f"{difference:.3g} > 2 x stock's bf16 error {stock_error:.3g}"
    if gpu_device.type == "cpu":
        assert torch.equal(ours, stock)
