"""The options of ``bindweave gpu-check`` (standard library only: they are parsed before any wheel is
installed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import field
from .wheels import DEFAULT_WHEEL_DIR

__all__ = ["GpuCheckConfig", "GpuCheckSize"]

GpuCheckSize = Literal["14b", "tiny"]


@dataclass(kw_only=True)
class GpuCheckConfig:
    """Run every gpu-marked test, time the 14B DiT against stock diffusers, measure peak memory per mode."""

    out: Path = field(help="report folder: gpu-check.json, gpu-check.md and the tests' junit.xml")
    device: str = field(
        "cuda",
        help="cuda, or cpu to run the same code path (with --size tiny) on a machine without a GPU; "
        "with cuda and no GPU the check says so and exits 0",
    )
    size: GpuCheckSize = field(
        "14b",
        help="DiT shapes to time: the released 14B (dim 5120, 40 layers) at 720p x 81, or the tiny test DiT",
    )
    wheels: Path = field(DEFAULT_WHEEL_DIR, help="folder of the wheels `make gpu-wheels` downloads")
    tests: bool = field(True, help="run the gpu-marked tests (--no-tests: only timing and memory)")
    tests_filter: str | None = field(None, help="pytest -k expression: run only the matching gpu tests")
    tests_timeout: int = field(330, help="seconds the gpu tests may take in all")
    timing: bool = field(True, help="time the DiT and measure peak memory (--no-timing: only the tests)")
    timing_layers: int = field(
        8, help="DiT blocks actually timed; seconds scale by layers / timing_layers (said in the report)"
    )
    repeats: int = field(2, help="timed forwards of each model after one warm-up forward")
    time_budget: float = field(
        150.0, help="seconds the timing part may take; past it, the CFG step is estimated from the forward"
    )

    def validate(self) -> None:
        """Every setting that can be checked before anything runs."""
        if self.device.split(":")[0] not in ("cuda", "cpu"):
            raise ValueError(f"--device {self.device}: expected cuda, cuda:N or cpu")
        if self.device == "cpu" and self.size == "14b" and self.timing:
            raise ValueError(
                "--size 14b needs a GPU (it materialises 14B-wide layers): use --size tiny on a CPU"
            )
        for name in ("tests_timeout", "timing_layers", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.time_budget <= 0:
            raise ValueError(f"--time-budget must be positive, got {self.time_budget}")
