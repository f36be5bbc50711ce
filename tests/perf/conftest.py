"""Tiny real components for the performance tests: the session's tiny release, a fresh pipeline per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import ReleaseFolders, tiny_transformer_kwargs

SIZE = dict(height=32, width=48, num_frames=5)


def tiny_pipe(release: ReleaseFolders) -> BindWeavePipeline:
    """A fresh float32 pipeline from the tiny release (offloading and hooks change it in place)."""
    pipe = BindWeavePipeline.from_released(
        release.wan, release.transformer, release.mllm, torch_dtype=torch.float32, **tiny_transformer_kwargs()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def make_pipe(tiny_release) -> Callable[[], BindWeavePipeline]:
    """A factory of fresh pipelines (each call builds a new one)."""
    return lambda: tiny_pipe(tiny_release)


@pytest.fixture(scope="session")
def refs() -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [
        PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 255, (36, 24, 3), dtype=np.uint8)),
    ]


@pytest.fixture(scope="session")
def mllm_states() -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative MLLM states of unequal lengths (7 vs 13 tokens), as in the release (526 vs 532)."""
    g = torch.Generator().manual_seed(1)
    dim = tiny_transformer_kwargs()["mllm_dim"]
    return torch.randn(1, 7, dim, generator=g), torch.randn(1, 13, dim, generator=g)


def _generate(pipe: BindWeavePipeline, refs, states=None, steps: int = 3, **kwargs):
    """One seeded tiny generation; ``states``: precomputed MLLM states (else the tiny MLLM runs)."""
    if states is not None:
        kwargs |= dict(mllm_hidden_states=states[0], negative_mllm_hidden_states=states[1])
    return pipe(
        "a red thing moves left",
        refs,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        **SIZE,
        **kwargs,
    ).frames


@pytest.fixture(scope="session")
def generate() -> Callable:
    """``generate(pipe, refs, states=None, steps=3, **call_kwargs)``: frames of one seeded tiny run."""
    return _generate


REPO = Path(__file__).resolve().parents[2]
WORLD = 2


def _torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` on CPU; its temporary files under the repo's ignored ``.tmp/``."""
    (REPO / ".tmp").mkdir(exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix="torchrun-", dir=REPO / ".tmp")
    env = {**os.environ, "TMPDIR": tmpdir, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --standalone: a free local port for the rendezvous (other jobs on this machine may hold 29500).
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        *args,
    ]
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., subprocess.CompletedProcess]:
    """``torchrun(args, cwd)``: run ``args`` under ``torchrun --nproc_per_node 2`` on CPU (gloo)."""
    return _torchrun
