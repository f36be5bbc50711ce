"""The MFU denominator of ``bindweave bench``: a device's peak TFLOP/s."""

from __future__ import annotations

import torch

__all__ = ["KNOWN_PEAK_TFLOPS", "resolve_peak_tflops"]

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


def resolve_peak_tflops(given: float | None, device: torch.device, dtype: torch.dtype) -> float:
    """The MFU denominator: ``given``, else the known dense bf16/fp16 peak of this GPU."""
    if given is not None:
        if given <= 0:
            raise ValueError(f"--peak-tflops must be positive, got {given}")
        return given
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for pattern, peak in KNOWN_PEAK_TFLOPS:
            if pattern in name:
                return peak
        raise ValueError(f"no known peak for {name}: pass --peak-tflops")
    raise ValueError(f"no known peak TFLOP/s for {device.type} in {dtype}: pass --peak-tflops")
