"""``bindweave gpu-check``: wheels, the gpu tests, the DiT timing and the memory table, in one report."""

from __future__ import annotations

import datetime
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .config import GpuCheckConfig
from .wheels import ensure_packages

__all__ = ["GpuCheckFailed", "run_gpu_check", "source_tree"]

MEMORY_METHOD = (
    "Each memory mode placed a random DiT of the model's widths with the pipeline's own code, then one "
    "step's DiT work ran (both CFG branches batched) on the real token count; measured with 1 and 2 blocks "
    "(torch.cuda.max_memory_allocated) and extrapolated linearly to the model's depth."
)


class GpuCheckFailed(ValueError):
    """A test failed or a part raised: the report says which (the command exits 1)."""


def source_tree() -> Path:
    """The checkout this package runs from (the gpu check needs its ``tests/``)."""
    repo = Path(__file__).resolve().parents[3]
    if not (repo / "tests").is_dir():
        raise ValueError(
            f"gpu-check runs from a source checkout (PYTHONPATH=src): no tests/ folder in {repo}"
        )
    return repo


def run_gpu_check(config: GpuCheckConfig) -> dict[str, Any] | None:
    """Run the check; ``None`` (and one printed line) where ``--device cuda`` finds no GPU."""
    config.validate()
    import torch  # the node's own PyTorch: never from the wheels

    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}): nothing to check, exiting 0")
        return None
    repo, started, wall = source_tree(), datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    # The wheels are installed into the temporary folder, which lives until the report has read versions.
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=config.out) as tmp:
        installed = ensure_packages(config.wheels.resolve(), Path(tmp) / "site")
        parts = _run_parts(config, device, repo, Path(tmp))
        from .report import environment, write_report

        report = {
            "verdict": "passed" if _passed(parts) else "FAILED",
            "date": started.isoformat(timespec="seconds"),
            "wall_seconds": time.perf_counter() - wall,
            "command": f"bindweave gpu-check --size {config.size} --device {config.device}",
            "environment": environment(device),
            "wheels_installed": [f"{w.name}=={w.version}" for w in installed],
            **parts,
        }
    json_path, md_path = write_report(config.out, report)
    print(_summary(report))
    print(f"report: {md_path} and {json_path}")
    if report["verdict"] != "passed":
        raise GpuCheckFailed(f"gpu-check failed: see {md_path}")
    return report


def _run_parts(config: GpuCheckConfig, device, repo: Path, tmp: Path) -> dict[str, Any]:
    """The tests, the timing and the memory table; a part that raises is recorded and the others still run."""
    report: dict[str, Any] = {"tests": None, "timing": None, "memory": None, "errors": {}}
    if config.tests:
        from .tests import run_gpu_tests

        (tmp / "tests").mkdir()
        junit = config.out / "junit.xml"
        tests = run_gpu_tests(
            repo,
            config.device,
            junit,
            tmp / "tests",
            keyword=config.tests_filter,
            timeout=config.tests_timeout,
        )
        report["tests"] = tests.as_dict()
    if config.timing:
        report["timing"] = _recorded(report, "timing", lambda: _timing(config, device))
        report["memory"] = _recorded(report, "memory", lambda: _memory(config, device))
        report["memory_method"] = MEMORY_METHOD
    return report


def _timing(config: GpuCheckConfig, device) -> dict[str, Any]:
    from .timing import time_dit

    print(f"gpu-check: timing the {config.size} DiT ({config.timing_layers} blocks) ...", flush=True)
    result = time_dit(
        config.size,
        device,
        timing_layers=config.timing_layers,
        repeats=config.repeats,
        time_budget=config.time_budget,
    )
    return result.as_dict()


def _memory(config: GpuCheckConfig, device) -> list[dict[str, Any]]:
    from .memory import measure_memory

    print("gpu-check: peak memory per memory mode ...", flush=True)
    return [row.as_dict() for row in measure_memory(config.size, device)]


def _recorded(report: dict[str, Any], part: str, run) -> Any:
    """``run()``; if it raises, its traceback goes into ``report["errors"][part]`` (the verdict fails)."""
    try:
        return run()
    except Exception:  # recorded in the report and failing the check, not swallowed
        report["errors"][part] = traceback.format_exc()
        print(f"gpu-check: {part} failed (traceback in the report)", flush=True)
        return None
    finally:
        _free_device_memory()


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _passed(report: dict[str, Any]) -> bool:
    tests = report["tests"]
    return not report["errors"] and (tests is None or tests["ok"])


def _summary(report: dict[str, Any]) -> str:
    lines = [f"gpu-check: {report['verdict']} in {report['wall_seconds']:.0f} s"]
    if report["tests"] is not None:
        counts = report["tests"]["counts"]
        lines.append("tests: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
        lines += [
            f"  {c['outcome']}: {c['id']}"
            for c in report["tests"]["cases"]
            if c["outcome"] in ("failed", "error")
        ]
    timing = report["timing"]
    if timing is not None:
        lines.append(
            f"DiT forward {timing['forward_seconds']:.3g} s (stock {timing['stock_forward_seconds']:.3g} s, "
            f"ratio {timing['bindweave_over_stock']:.3f}), MFU {timing['mfu']:.1%}, "
            f"50 steps with CFG {timing['predicted_50_steps_cfg_seconds']:.0f} s"
        )
    for part in report["errors"]:
        lines.append(f"{part}: error (see the report)")
    return "\n".join(lines)
