"""The device that ``gpu``-marked tests run on, and the skip for what only CUDA has.

``gpu`` tests run on CUDA (skipped where there is none). ``BINDWEAVE_GPU_TEST_DEVICE=cpu`` runs them on the
CPU instead, so their own code (fixtures, comparisons, subprocess plumbing) is exercised before a GPU is
seen: ``bindweave gpu-check --device cpu`` does this. A test of something only CUDA has (a side stream,
sequential offload, fp16 kernels the CPU lacks, flash-attn) calls :func:`skip_unless_cuda` with the reason.
"""

from __future__ import annotations

import os

import torch

GPU_TEST_DEVICE_ENV = "BINDWEAVE_GPU_TEST_DEVICE"


def gpu_test_device() -> torch.device:
    """``torch.device(os.environ[GPU_TEST_DEVICE_ENV])``, ``cuda`` when unset; only ``cuda*`` or ``cpu``."""
    device = torch.device(os.environ.get(GPU_TEST_DEVICE_ENV) or "cuda")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"{GPU_TEST_DEVICE_ENV}={device}: expected 'cuda', 'cuda:N' or 'cpu'")
    return device


def skip_unless_cuda(device: torch.device, what: str) -> None:
    """Skip the running test on a non-CUDA ``device``: ``what`` needs CUDA (said in the skip reason)."""
    import pytest

    if device.type != "cuda":
        pytest.skip(f"{what} needs CUDA (gpu tests running on {device})")
