"""The training objective against an independent numpy transcription of spec 4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bindweave.denoiser import Conditioning
from bindweave.training.objective import FlowMatchingObjective


def spec_table(num: int = 1000, shift: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spec 4, written out: 1000 sigmas from 1 to 0 (the final 0 dropped), shifted; t = 1000 s'; w(t)."""
    s = np.linspace(1.0, 0.0, num + 1)[:-1]
    shifted = shift * s / (1.0 + (shift - 1.0) * s)
    t = 1000.0 * shifted
    w = np.exp(-2.0 * ((t - 500.0) / 1000.0) ** 2)
    w = w - w.min()
    return shifted, t, w * (1000.0 / w.sum())


def test_sigma_table_shift_and_loss_weights_follow_the_spec():
    objective = FlowMatchingObjective()
    sigmas, timesteps, weights = spec_table()
    np.testing.assert_allclose(objective.sigmas.numpy(), sigmas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(objective.timesteps.numpy(), timesteps, rtol=0, atol=1e-9)
    np.testing.assert_allclose(objective.weights.numpy(), weights, rtol=0, atol=1e-9)
    assert len(sigmas) == 1000 and sigmas[0] == 1.0 and sigmas[-1] > 0  # extra_one_step: 0 not in the table
    assert abs(weights.sum() - 1000.0) < 1e-9 and weights.min() == 0.0
    assert abs(sigmas[500] - 5 * 0.5 / 3) < 1e-12  # s = 0.5 shifts to 5/6


def test_shift_and_uniform_weighting_options():
    objective = FlowMatchingObjective(shift=1.0, loss_weighting="uniform")
    sigmas = np.linspace(1.0, 0.0, 1001)[:-1]  # shift 1: the unshifted grid, sigmas drawn uniformly
    np.testing.assert_allclose(objective.sigmas.numpy(), sigmas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(objective.timesteps.numpy(), 1000.0 * sigmas, rtol=0, atol=1e-9)
    assert torch.equal(objective.weights, torch.ones(1000, dtype=torch.float64))
    shifted = FlowMatchingObjective(shift=2.0)
    np.testing.assert_allclose(shifted.sigmas.numpy(), spec_table(shift=2.0)[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(shifted.weights.numpy(), spec_table(shift=2.0)[2], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="loss_weighting: expected 'released' or 'uniform', got 'flat'"):
        FlowMatchingObjective(loss_weighting="flat")


class _FixedVelocity(torch.nn.Module):
    """Stands in for the DiT: predicts a fixed velocity, and records what it was called with."""

    dtype = torch.float32

    def __init__(self, velocity: torch.Tensor):
        super().__init__()
        self.velocity = velocity
        self.calls: list[dict] = []

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return (self.velocity,)


def test_loss_is_the_weighted_velocity_mse():
    objective = FlowMatchingObjective()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 16, 3, 4, 4, generator=g)
    noise = torch.randn(2, 16, 3, 4, 4, generator=g)
    prediction = torch.randn(2, 16, 3, 4, 4, generator=g)
    index = torch.tensor([10, 700])
    cond = Conditioning(
        text=torch.zeros(2, 512, 8), image=torch.zeros(2, 4, 8), mllm=torch.zeros(2, 5, 8),
        condition=torch.zeros(2, 20, 7, 4, 4),
    )  # fmt: skip
    model = _FixedVelocity(prediction)
    out = objective.loss(model, latents, cond, noise, index)

    s = torch.tensor(spec_table()[0][[10, 700]], dtype=torch.float32)
    x_t = (1 - s.view(2, 1, 1, 1, 1)) * latents + s.view(2, 1, 1, 1, 1) * noise
    torch.testing.assert_close(model.calls[0]["hidden_states"], x_t)
    torch.testing.assert_close(model.calls[0]["timestep"], 1000 * s)
    mse = ((prediction - (noise - latents)) ** 2).flatten(1).mean(1)
    weights = torch.tensor(spec_table()[2][[10, 700]], dtype=torch.float32)
    torch.testing.assert_close(out.per_sample, mse)
    torch.testing.assert_close(out.loss, (mse * weights).mean())


def test_noise_and_timesteps_depend_only_on_the_sample_position():
    objective = FlowMatchingObjective()
    noise, index = objective.draw((16, 3, 4, 4), seed=7, stage=0, positions=[0, 1, 2, 3])
    halves = [objective.draw((16, 3, 4, 4), seed=7, stage=0, positions=p) for p in ([0, 1], [2, 3])]
    assert torch.equal(noise, torch.cat([h[0] for h in halves])) and torch.equal(
        index, torch.cat([h[1] for h in halves])
    )
    other_stage, _ = objective.draw((16, 3, 4, 4), seed=7, stage=1, positions=[0])
    assert not torch.equal(noise[:1], other_stage)
    assert index.min() >= 0 and index.max() < 1000
