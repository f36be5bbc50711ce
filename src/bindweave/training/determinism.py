"""Deterministic kernels for a training run (``deterministic: true``): a resumed run repeats a straight one;
and the seeding of the global RNGs."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["CUBLAS_WORKSPACE_ENV", "deterministic_kernels", "seed_everything"]

#: cuBLAS's workspace setting; ``:4096:8`` (8 buffers of 4 MiB) is one of the two deterministic ones.
CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With ``enabled``, only deterministic kernels run inside (an op without one raises); restored after.

    On CUDA, atomics (e.g. in attention and index backward passes) make a step's bits vary from run to run,
    so a resumed run could not repeat a straight one; cuBLAS is deterministic only with a fixed workspace
    configuration, read when torch first sizes its workspace, so it is set here, before any CUDA work
    (a value the caller set is kept). The CPU kernels the trainer uses are deterministic either way.
    """
    if not enabled:
        yield
        return
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get(CUBLAS_WORKSPACE_ENV)
    os.environ.setdefault(CUBLAS_WORKSPACE_ENV, ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE_ENV, None)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs; nothing in training draws from them, but third-party code might."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
