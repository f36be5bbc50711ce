"""The EMA of the trainable weights (the config's ``ema``): its update rule, the checkpoints' inference
weights, exact resumes, and a resume from a checkpoint saved without one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from bindweave.training.config import ConfigError
from bindweave.training.ema import EMAWeights
from bindweave.training.trainer import run_train

from .conftest import build_config, tiny_config_dict

REPO = Path(__file__).resolve().parents[2]
INFERENCE_WEIGHTS = {
    "full": "transformer/diffusion_pytorch_model.safetensors",
    "lora": "lora/pytorch_lora_weights.safetensors",
}


def _reference_average(steps: list[torch.Tensor], decay: float, warmup: bool) -> torch.Tensor:
    """The average of the weights after each step, by the stated rule: the first update takes the
    weights, the k-th after it (k = 1, 2, ...) uses ``decay``, or min(decay, (1 + k) / (10 + k)) with warmup."""
    average = steps[0].clone()
    for k, weight in enumerate(steps[1:], start=1):
        d = min(decay, (1 + k) / (10 + k)) if warmup else decay
        average = d * average + (1 - d) * weight
    return average


@pytest.mark.parametrize("warmup", [False, True])
def test_the_average_follows_its_rule_and_is_put_in_and_taken_out(warmup):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, 3))
    ema = EMAWeights([("w", param)], decay=0.9, warmup=warmup)
    trajectory = []
    for _ in range(6):
        with torch.no_grad():
            param.add_(torch.randn_like(param))
        trajectory.append(param.detach().clone())
        ema.update()
    expected = _reference_average(trajectory, 0.9, warmup)

    assert ema.updates == 6 and ema.state_dict().keys() == {"w"}
    torch.testing.assert_close(ema.state_dict()["w"], expected, rtol=1e-6, atol=1e-6)
    with ema.applied():
        torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(param.detach(), trajectory[-1])  # the weights are back, bit for bit


def test_decay_outside_0_1_is_refused(tiny_pipeline_dir, tiny_cache, tmp_path):
    data = tiny_config_dict(tmp_path, tiny_pipeline_dir, tiny_cache, ema={"decay": 1.0})
    data["stages"] = [{"name": "main", "steps": 3, "cache": str(tiny_cache)}]
    with pytest.raises(ConfigError, match=r"ema\.decay: must be in \(0, 1\) or null, got 1\.0"):
        build_config(data)


def _config(output_dir: Path, pipeline_dir: Path, cache: Path, ema: dict | None, **overrides):
    overrides.setdefault("stages", [{"name": "main", "steps": 3, "cache": str(cache), "lr": 1e-2}])
    overrides["checkpoint"] = {"every_steps": 1, "keep_last": 3, "save_dtype": "float32"}
    if ema is not None:
        overrides["ema"] = ema
    return build_config(tiny_config_dict(output_dir, pipeline_dir, cache, **overrides))


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_checkpoints_hold_the_average_and_resume_exactly(trainable, tiny_cache, tiny_pipeline_dir, tmp_path):
    """With an EMA, the training steps are unchanged, the inference weights (``transformer/``, or
    ``lora/``) are the average of every step's weights, a stop and resume repeats them bit for bit, and a
    run resumed from a checkpoint without an average starts one at its first step."""

    def config(name: str, ema: dict | None, **overrides):
        lora = {"trainable": trainable, "lora": {"rank": 4, "alpha": 4}} if trainable == "lora" else {}
        return _config(tmp_path / name, tiny_pipeline_dir, tiny_cache, ema, **lora, **overrides)

    def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
        return safetensors.torch.load_file(checkpoint / INFERENCE_WEIGHTS[trainable])

    ema = {"decay": 0.5, "warmup": False}
    plain = run_train(config("plain", None))
    averaged = run_train(config("ema", ema))
    assert averaged.losses == plain.losses  # the average never feeds back into training

    # Without an EMA each checkpoint holds that step's weights.
    raw = [weights(c) for c in plain.checkpoints]
    saved = weights(averaged.checkpoints[-1])
    assert saved.keys() == raw[0].keys()
    for key in saved:
        expected = _reference_average([w[key] for w in raw], 0.5, warmup=False)
        torch.testing.assert_close(saved[key], expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(saved[k], raw[-1][k]) for k in saved)
    state = json.loads((averaged.checkpoints[-1] / "training_state" / "state.json").read_text())
    assert state["ema"] == {"decay": 0.5, "updates": 3}
    if trainable == "full":  # scripts/raw_weights.py: the weights themselves, from the training state
        out = tmp_path / "raw"
        script = [
            sys.executable,
            str(REPO / "scripts" / "raw_weights.py"),
            str(averaged.checkpoints[-1]),
            str(out),
        ]
        subprocess.run(script, check=True, capture_output=True)
        unaveraged = weights(out)
        assert all(torch.equal(unaveraged[k], raw[-1][k]) for k in saved)
        assert (
            not (out / "training_state").exists()
            and (out / "vae").is_dir()
            and not (out / "vae").is_symlink()
        )

    first = run_train(config("split", ema, stop_after_steps=2))
    second = run_train(config("split", ema))
    assert first.losses + second.losses == plain.losses
    resumed = weights(second.checkpoints[-1])
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)

    # A run without an EMA until step 1, resumed with one: the average starts at step 2.
    late = tmp_path / "late"
    shutil.copytree(tmp_path / "plain", late, symlinks=True)
    for step in (2, 3):
        shutil.rmtree(late / f"checkpoint-00000{step}")
    third = run_train(config("late", ema))
    assert third.losses == plain.losses[1:]
    started = weights(third.checkpoints[-1])
    for key in started:
        torch.testing.assert_close(started[key], 0.5 * raw[1][key] + 0.5 * raw[2][key], rtol=1e-5, atol=1e-6)
