"""The MFU denominator of ``bindweave bench``: a device's peak TFLOP/s, given, known or measured."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["KNOWN_PEAK_TFLOPS", "Peak", "measure_matmul_tflops", "resolve_peak_tflops"]

# Dense bf16/fp16 tensor-core peaks, TFLOP/s, by a substring of the CUDA device name (most specific first).
KNOWN_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H20", 148.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
)
# Side of the square matmul that measures a peak: large enough to reach the device's steady rate.
MATMUL_SIDE = {"cuda": 8192, "cpu": 1024}
MEASURE_SECONDS = 0.25  # timed matmuls run for at least this long (after one warm-up)


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str  # where the figure comes from, printed beside it


def resolve_peak_tflops(given: float | None, device: torch.device, dtype: torch.dtype) -> Peak:
    """The MFU denominator: ``given``, else this GPU's known dense bf16/fp16 peak, else a measured one.

    A measured peak is the rate of a large square matmul in ``dtype`` on ``device``, so MFU is then the
    fraction of what this device reaches on the best-shaped work, not of a datasheet figure.
    """
    if given is not None:
        if given <= 0:
            raise ValueError(f"--peak-tflops must be positive, got {given}")
        return Peak(given, "given (--peak-tflops)")
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for pattern, peak in KNOWN_PEAK_TFLOPS:
            if pattern in name:
                return Peak(peak, f"known dense {str(dtype).removeprefix('torch.')} peak of {pattern}")
    side = MATMUL_SIDE.get(device.type, MATMUL_SIDE["cpu"])
    tflops = measure_matmul_tflops(device, dtype, side)
    return Peak(tflops, f"measured: {side}x{side} {str(dtype).removeprefix('torch.')} matmul")


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, side: int) -> float:
    """TFLOP/s of repeated ``(side, side) @ (side, side)`` matmuls (``2 * side**3`` FLOPs each)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device, dtype)
    b = torch.randn(side, side, generator=generator).to(device, dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, allocations
    _synchronize(device)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < MEASURE_SECONDS:
        torch.matmul(a, b)
        count += 1
        if count % 8 == 0:
            _synchronize(device)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return 2 * side**3 * count / seconds / 1e12


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
