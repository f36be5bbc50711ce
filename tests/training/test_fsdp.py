"""FSDP2 under ``torchrun`` (2 CPU processes, gloo) trains like one process with the same global batch,
and resumes from its sharded checkpoint (EMA included); micro-batches mix MLLM lengths, so each rank skips
padding rows under FSDP2 and gradient checkpointing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from bindweave.training.data import SampleStream
from bindweave.training.metrics import read_metrics
from bindweave.training.trainer import run_train

from .conftest import build_config, tiny_config_dict, write_config

REPO = Path(__file__).resolve().parents[2]


def test_fsdp2_on_two_processes_matches_one_process(tiny_cache, tiny_pipeline_dir, tmp_path):
    base = tiny_config_dict(
        tmp_path,
        tiny_pipeline_dir,
        tiny_cache,
        stages=[{"name": "main", "steps": 3, "cache": str(tiny_cache), "lr": 1e-3}],
        gradient_checkpointing=True,
        global_batch_size=4,
        micro_batch_size=2,
        ema={"decay": 0.5, "warmup": False},  # the average of sharded weights, saved and resumed by shard
    )
    # One process: micro-batches of stream positions (0, 1), (2, 3) per step; under FSDP2 rank r takes the
    # same pairs. Some pair mixes a one-reference clip with a two-reference one (MLLM states of unequal
    # length), so the padding rows are skipped under FSDP2 too.
    references = {
        c["line"]: c["num_references"] for c in json.loads((tiny_cache / "index.json").read_text())["clips"]
    }
    lines = sorted(references)
    stream = SampleStream(len(lines), seed=0, stage=0)
    pairs = [{references[lines[stream.key(p + i).index]] for i in (0, 1)} for p in range(0, 12, 2)]
    assert {1, 2} in pairs
    single = run_train(
        build_config({**base, "output_dir": str(tmp_path / "single"), "gradient_accumulation_steps": 2})
    )

    # Two launches: killed (stop_after_steps) after step 2, then resumed from the sharded checkpoint.
    fsdp = {**base, "output_dir": str(tmp_path / "fsdp")}
    (REPO / ".tmp").mkdir(exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="fsdp-test-", dir=REPO / ".tmp")  # torchrun's files, in the repo
    env = {**os.environ, "TMPDIR": scratch, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    try:
        for name, config in (("first.json", {**fsdp, "stop_after_steps": 2}), ("resume.json", fsdp)):
            result = subprocess.run(
                [*launch, "-m", "bindweave.training", str(write_config(tmp_path / name, config))],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    fsdp_losses = [m["loss"] for m in read_metrics(tmp_path / "fsdp")]
    assert len(fsdp_losses) == 3
    torch.testing.assert_close(torch.tensor(fsdp_losses), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)

    name = "checkpoint-000003/transformer/diffusion_pytorch_model.safetensors"
    a = safetensors.torch.load_file(tmp_path / "single" / name)
    b = safetensors.torch.load_file(tmp_path / "fsdp" / name)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
