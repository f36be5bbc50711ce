"""The float32-rounding tolerance: how tight it is, rounding-scale changes pass, real changes fail."""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import (
    FLOAT32_EPS,
    ROUNDING_ULPS,
    assert_close_to_float32_rounding,
    assert_differs_beyond_float32_rounding,
    rounding_ulps,
    tiny_transformer_kwargs,
)

# ---------------------------------------------------------------------------------------------- the bound


def test_the_bound_is_64_ulps_of_the_scale_7_6e_6_for_frames():
    assert FLOAT32_EPS == 2.0**-23 and ROUNDING_ULPS == 64
    frames = np.linspace(0.0, 1.0, 1001)  # float64, so the offsets below are exact
    bound = 64 * 2.0**-23
    assert bound == pytest.approx(7.63e-6, rel=1e-3)  # 1/500 of an 8-bit level (1/255)
    nudged = frames.copy()
    nudged[500] += 0.99 * bound
    assert_close_to_float32_rounding(nudged, frames)
    nudged[500] = frames[500] + 1.01 * bound
    with pytest.raises(AssertionError, match="64.6 float32 ulps"):
        assert_close_to_float32_rounding(nudged, frames)
    assert_differs_beyond_float32_rounding(nudged, frames)


def test_the_bound_scales_with_the_expected_magnitude():
    latents = torch.randn(2, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0)) * 3
    scale = float(latents.abs().max())
    shifted = latents.double() + 32 * FLOAT32_EPS * scale  # 32 ulps of the largest value, everywhere
    assert rounding_ulps(shifted, latents) == pytest.approx(32)
    assert_close_to_float32_rounding(shifted, latents)
    # Measured against a smaller scale, the same difference is more ulps.
    with pytest.raises(AssertionError):
        assert_close_to_float32_rounding(shifted, latents, scale=scale / 4)


@pytest.mark.parametrize(
    "perturb",
    [
        lambda x: x * (1 + FLOAT32_EPS),
        lambda x: torch.nextafter(x, torch.full_like(x, np.inf)),
        lambda x: (
            x.to(torch.float64) + (torch.rand(x.shape, dtype=torch.float64) - 0.5) * 2e-6 * x.abs().max()
        ),
    ],
    ids=["times-1-plus-eps", "next-float32-up", "uniform-1e-6-of-the-scale"],
)
def test_rounding_scale_perturbations_of_outputs_pass(perturb):
    torch.manual_seed(0)
    expected = torch.rand(1, 5, 32, 48, 3)
    actual = perturb(expected)
    assert_close_to_float32_rounding(actual, expected)
    with pytest.raises(AssertionError, match="within rounding"):
        assert_differs_beyond_float32_rounding(actual, expected)


def test_shapes_and_non_finite_values_are_never_rounding():
    x = torch.rand(3, 4)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close_to_float32_rounding(x[:2], x)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_differs_beyond_float32_rounding(x[:2], x)
    y = x.clone()
    y[0, 0] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_to_float32_rounding(y, x)
    with pytest.raises(AssertionError, match="scale"):
        assert_close_to_float32_rounding(torch.zeros(3), torch.zeros(3))
    # bfloat16 tensors and numpy arrays are widened exactly.
    assert rounding_ulps(x.to(torch.bfloat16), x.to(torch.bfloat16).float().numpy()) == 0


# ---------------------------------------------------------------------------------------------- the tiny pipeline

SIZE = dict(height=32, width=48, num_frames=5)


@pytest.fixture(scope="module")
def pipe(tiny_release) -> BindWeavePipeline:
    release = tiny_release
    pipe = BindWeavePipeline.from_released(
        release.wan, release.transformer, release.mllm, torch_dtype=torch.float32, **tiny_transformer_kwargs()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refs() -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [
        PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 255, (36, 24, 3), dtype=np.uint8)),
    ]


def frames(pipe, refs, seed: int = 0, steps: int = 2) -> np.ndarray:
    """The video the tolerance's figures were measured on: 2 steps, CFG 5 (the pipeline's default)."""
    generator = torch.Generator().manual_seed(seed)
    return pipe("a red thing moves left", refs, generator=generator, num_inference_steps=steps, **SIZE).frames


@pytest.fixture(scope="module")
def reference(pipe, refs) -> np.ndarray:
    return frames(pipe, refs)


def with_component(pipe, name: str, edit) -> BindWeavePipeline:
    """``pipe`` with a deep copy of one component, edited in place by ``edit(module)``."""
    module = copy.deepcopy(getattr(pipe, name))
    with torch.no_grad():
        edit(module)
    return BindWeavePipeline(**{**pipe.components, name: module})


def one_ulp_each(module: torch.nn.Module) -> None:
    """Move every weight to its float32 neighbour, up or down at random."""
    generator = torch.Generator().manual_seed(0)
    for p in module.parameters():
        up = torch.rand(p.shape, generator=generator) < 0.5
        p.copy_(torch.nextafter(p, torch.where(up, np.inf, -np.inf).to(p.dtype)))


def plus_1e_3(name: str):
    """An edit that adds 1e-3 to the first element of the parameter ``name``."""

    def edit(module: torch.nn.Module) -> None:
        module.get_parameter(name).view(-1)[0] += 1e-3

    return edit


@pytest.mark.parametrize("component", ["transformer", "vae"])
def test_every_weight_moved_one_ulp_gives_the_reference_video(pipe, refs, reference, component):
    nudged = with_component(pipe, component, one_ulp_each)
    weights = zip(getattr(pipe, component).parameters(), getattr(nudged, component).parameters(), strict=True)
    assert all(not torch.equal(a, b) for a, b in weights)  # every tensor moved
    assert_close_to_float32_rounding(frames(nudged, refs), reference)  # measured: 6-12 ulps


@pytest.mark.parametrize(
    "change",
    ["output-projection-weight-plus-1e-3", "one-more-step", "another-seed"],
)
def test_real_changes_exceed_the_tolerance(pipe, refs, reference, change):
    if (
        change == "output-projection-weight-plus-1e-3"
    ):  # one weight of the DiT's last layer; measured: 309 ulps
        video = frames(with_component(pipe, "transformer", plus_1e_3("proj_out.weight")), refs)
    elif change == "one-more-step":  # measured: 5e5 ulps
        video = frames(pipe, refs, steps=3)
    else:  # measured: 4e6 ulps
        video = frames(pipe, refs, seed=1)
    assert_differs_beyond_float32_rounding(video, reference)
    with pytest.raises(AssertionError, match="more than rounding"):
        assert_close_to_float32_rounding(video, reference)
