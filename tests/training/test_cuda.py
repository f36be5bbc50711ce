"""gpu: one bf16 training run on the device under ``torchrun --nproc_per_node 1`` resumes bit for bit.

Two modes: a full fine-tune sharded with FSDP2 (``distributed.shard_single_process``: a process group of
one, NCCL on CUDA, gloo on the CPU) and a LoRA run (the trainer trains LoRA unsharded, in one process).
Each trains N steps straight and N/2 steps, stops, resumes to N: the losses, learning rates and gradient
norms logged, the final weights and the whole training state (float32 masters and AdamW moments) must be
bitwise equal. On CUDA this needs ``deterministic: true`` (deterministic kernels and cuBLAS workspace, see
:func:`bindweave.training.determinism.deterministic_kernels`); with it both runs execute the same kernels on the
same inputs, so no tolerance is claimed. Under ``BINDWEAVE_GPU_TEST_DEVICE=cpu`` the launches see no CUDA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from bindweave.training.metrics import read_metrics

from .conftest import tiny_config_dict, write_config

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
STEPS = 4  # N: the split run stops after N / 2 and resumes
FINAL = f"checkpoint-{STEPS:06d}"
LOGGED = ("step", "stage", "loss", "lr", "grad_norm", "skipped")  # metrics.jsonl minus the timings

#: Per mode: config overrides and the final checkpoint's weight file that inference loads.
MODES: dict[str, tuple[dict[str, Any], str]] = {
    "fsdp2-full": (
        {"trainable": "full", "distributed": {"shard_single_process": True}},
        "transformer/diffusion_pytorch_model.safetensors",
    ),
    "lora": (
        {"trainable": "lora", "lora": {"rank": 4, "alpha": 4}},
        "lora/pytorch_lora_weights.safetensors",
    ),
}


def launch_env(device: torch.device, scratch: Path) -> dict[str, str]:
    """The launches' environment: ``src`` importable (no installed package on the GPU node), torchrun's
    files in ``scratch``, and only ``device`` visible (the trainer takes ``cuda:0`` whenever CUDA is seen)."""
    pythonpath = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath), "TMPDIR": str(scratch)}
    env["OMP_NUM_THREADS"] = "1"
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.index is not None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[device.index] if visible else str(device.index)
    return env


def torchrun_train(config_file: Path, env: dict[str, str]) -> str:
    """``python -m torch.distributed.run --nproc_per_node 1 -m bindweave.training CONFIG``; its output.

    stdout and stderr together: the CLI's log records go to stderr.
    """
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    result = subprocess.run(
        [*launch, "-m", "bindweave.training", str(config_file)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-8000:]
    return result.stdout


def training_state(checkpoint: Path, scratch: Path) -> dict[str, Any]:
    """A checkpoint's exact training state (``training_state/dcp``: float32 trainable weights, optimizer)."""
    path = scratch / f"{checkpoint.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(checkpoint / "training_state" / "dcp", path)
    return torch.load(path, weights_only=True)


def assert_bitwise_equal(actual: Any, expected: Any, where: str = "state") -> None:
    """Nested dicts / lists of tensors and plain values: same keys, dtypes and bits everywhere."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_bitwise_equal(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_bitwise_equal(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), where
    else:
        assert actual == expected, where


def logged(output_dir: Path) -> list[tuple]:
    return [tuple(m[k] for k in LOGGED) for m in read_metrics(output_dir)]


@pytest.mark.parametrize("mode", list(MODES))
def test_bf16_training_on_the_device_resumes_bit_for_bit(
    mode, gpu_device, tiny_cache, tiny_pipeline_dir, tmp_path
):
    overrides, weights_file = MODES[mode]
    config = tiny_config_dict(
        tmp_path / "unused", tiny_pipeline_dir, tiny_cache,
        stages=[{"name": "main", "steps": STEPS, "cache": str(tiny_cache), "lr": 1e-3}],
        precision="bf16", deterministic=True, gradient_checkpointing=True, gradient_accumulation_steps=2,
        checkpoint={"every_steps": 1000, "keep_last": 2, "save_dtype": "float32"},
        **overrides,
    )  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    (REPO / ".tmp").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="cuda-train-test-", dir=REPO / ".tmp"))
    env = launch_env(gpu_device, scratch)
    try:
        launches = [
            ("straight.json", {**config, "output_dir": str(straight)}),
            ("first-half.json", {**config, "output_dir": str(split), "stop_after_steps": STEPS // 2}),
            ("resume.json", {**config, "output_dir": str(split)}),  # resume: auto
        ]
        logs = [torchrun_train(write_config(tmp_path / name, c), env) for name, c in launches]
        states = [training_state(folder / FINAL, scratch) for folder in (straight, split)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # Where and how it ran: the device, bf16 compute, FSDP2 (and its backend) only in the sharded mode.
    device = "cpu" if gpu_device.type == "cpu" else "cuda:0"  # the launch sees only the test's device
    backend = "gloo" if gpu_device.type == "cpu" else "nccl"
    sharding = f"FSDP2: sharding the DiT over 1 rank(s), {backend} on {device}"
    for log in logs:
        assert f"training on {device}, compute dtype torch.bfloat16" in log
        assert (sharding in log) == (mode == "fsdp2-full"), log[-2000:]
    assert f"resumed from {split / f'checkpoint-{STEPS // 2:06d}'} at step {STEPS // 2}" in logs[2]

    # The record of every step, then the final weights and training state: bitwise.
    assert [step for step, *_ in logged(straight)] == list(range(1, STEPS + 1))
    assert logged(split) == logged(straight)
    final = [safetensors.torch.load_file(folder / FINAL / weights_file) for folder in (straight, split)]
    assert_bitwise_equal(final[1], final[0], "weights")
    assert_bitwise_equal(states[1], states[0])
    assert states[0]["optimizer"]["state"], "no optimizer state was saved"

    # Not vacuous: training moved the weights (LoRA B starts at zero; the full run starts from the folder).
    if mode == "lora":
        assert any(t.abs().sum() > 0 for k, t in final[0].items() if "lora_B" in k)
    else:
        start = safetensors.torch.load_file(tiny_pipeline_dir / weights_file)
        assert start.keys() == final[0].keys()
        assert any(not torch.equal(start[k].float(), final[0][k]) for k in start)
