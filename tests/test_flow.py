"""The released sampler's sigma table (spec 3): diffusers 0.33.1's flow sigmas, whatever diffusers is installed.

The oracle is an independent, plain-Python computation of 0.33.1's formula: alpha evenly spaced over
[1, 1/T], sigma = 1 - alpha, shifted with s' = k s / (1 + (k - 1) s), in descending order, the sigma 0
dropped; timesteps are T s' truncated; the table ends with a final sigma 0.
"""

from __future__ import annotations

import pytest
import torch

from bindweave.flow import released_sampling_sigmas, released_sigma_grid, sampling_scheduler

T = 1000


def _table_0_33_1(num_steps: int, shift: float) -> tuple[list[float], list[int]]:
    step = (1 / T - 1) / num_steps  # numpy.linspace(1, 1/T, n + 1): start + i * step, the last one exact
    alphas = [1 + i * step for i in range(num_steps)] + [1 / T]
    sigmas = [1 - a for a in reversed(alphas)][:-1]  # descending, without the 0 of alpha = 1
    shifted = [shift * s / (1 + (shift - 1) * s) for s in sigmas]
    return shifted, [int(s * T) for s in shifted]


def test_50_step_table_is_the_released_one() -> None:
    sigmas, timesteps = released_sampling_sigmas(50, shift=3.0)
    assert timesteps.dtype == torch.int64 and sigmas.dtype == torch.float32
    assert timesteps.shape == (50,) and sigmas.shape == (51,)
    assert timesteps[:3].tolist() == [999, 992, 985]
    assert timesteps[-2:].tolist() == [111, 57]
    assert sigmas[-1] == 0


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 7, 15, 20, 25, 49, 50, 51, 100])
@pytest.mark.parametrize("shift", [3.0, 5.0, 1.0])
def test_table_equals_an_independent_computation_of_diffusers_0_33_1(num_steps: int, shift: float) -> None:
    expected_sigmas, expected_timesteps = _table_0_33_1(num_steps, shift)
    sigmas, timesteps = released_sampling_sigmas(num_steps, shift=shift)
    assert timesteps.tolist() == expected_timesteps
    assert torch.equal(sigmas, torch.tensor([*expected_sigmas, 0.0], dtype=torch.float32))


@pytest.mark.parametrize("num_steps", [1, 4, 15, 50, 100])
def test_installed_unipc_takes_the_released_table_from_the_explicit_grid(num_steps: int) -> None:
    """The way the pipeline sets it: the stock scheduler shifts the explicit 0.33.1 grid itself."""
    scheduler = sampling_scheduler()
    scheduler.set_timesteps(sigmas=released_sigma_grid(num_steps))
    sigmas, timesteps = released_sampling_sigmas(num_steps, shift=scheduler.config.flow_shift)
    assert torch.equal(scheduler.timesteps, timesteps)
    assert torch.equal(scheduler.sigmas, sigmas)


def test_grid_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        released_sigma_grid(0)
