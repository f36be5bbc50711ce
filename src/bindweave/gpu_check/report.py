"""The GPU check's report: ``gpu-check.json`` (every figure) and ``gpu-check.md`` (the same, for reading)."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..io.files import atomic_write_json, atomic_write_text

__all__ = ["environment", "write_report"]

PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "safetensors",
    "av",
    "flash_attn",
    "pytest",
)


def environment(device: torch.device) -> dict[str, Any]:
    """The machine: GPU, driver, CUDA, torch and package versions."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_cuda": torch.version.cuda,
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        env |= {
            "gpu": properties.name,
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "compute_capability": f"{properties.major}.{properties.minor}",
            "driver": _driver_version(),
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str:
    """The NVIDIA driver's version from nvidia-smi, or why it is unknown."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown (nvidia-smi: {err})"
    return done.stdout.strip().splitlines()[0]


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``gpu-check.json`` and ``gpu-check.md`` into ``out`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(out / "gpu-check.json", report)
    md_path = atomic_write_text(out / "gpu-check.md", render_markdown(report))
    return json_path, md_path


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: verdict, machine, tests, timing, memory, errors."""
    lines = [
        f"# bindweave gpu-check: {report['verdict']}",
        "",
        f"{report['date']}, {report['wall_seconds']:.0f} s",
    ]
    lines += ["", "## Machine", "", *_pairs(report["environment"])]
    if report.get("wheels_installed") is not None:
        lines += [
            "",
            f"Installed from wheels: {', '.join(report['wheels_installed']) or 'nothing (all present)'}",
        ]
    tests = report.get("tests")
    if tests is not None:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in tests["counts"].items())
        lines += [
            "",
            "## Tests",
            "",
            f"{counts} in {tests['seconds']:.0f} s (pytest exit {tests['returncode']})",
            "",
        ]
        lines += ["| test | outcome | s | message |", "|---|---|---|---|"]
        for case in tests["cases"]:
            message = case["message"].splitlines()[0][:160] if case["message"] else ""
            lines.append(f"| `{case['id']}` | {case['outcome']} | {case['seconds']:.1f} | {_cell(message)} |")
    timing = report.get("timing")
    if timing is not None:
        lines += ["", "## DiT timing", "", *_timing_notes(timing), "", *_pairs(timing)]
    memory = report.get("memory")
    if memory is not None:
        lines += ["", "## Peak memory of one denoising step (CFG batched)", "", report["memory_method"], ""]
        lines += [
            "| case | GiB at the model's depth | GiB measured at 1 / 2 blocks | note |",
            "|---|---|---|---|",
        ]
        for row in memory:
            measured = " / ".join(f"{v:.2f}" for v in row["peak_gib_by_depth"].values())
            peak = "" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
            lines.append(f"| {row['case']} | {peak} | {measured} | {_cell(row['note'])} |")
    if report["errors"]:
        lines += ["", "## Errors", ""]
        for part, error in report["errors"].items():
            lines += [f"### {part}", "", "```", error.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _timing_notes(timing: dict[str, Any]) -> list[str]:
    notes = [
        f"A random DiT of the model's widths with {timing['timed_layers']} of its {timing['layers']} blocks ran "
        f"on {timing['tokens']} tokens ({timing['video']}, reference slots included) and {timing['context_tokens']} "
        f"context tokens, in {timing['dtype']}. Seconds at the model's depth = timed seconds x {timing['depth_scale']:.4g} "
        "(the FLOPs ratio of the two depths)."
    ]
    if not timing["cfg_step_measured"]:
        notes.append("The CFG step was not timed (time budget): it is estimated as twice the forward.")
    return notes


def _pairs(mapping: dict[str, Any]) -> list[str]:
    return [f"- {key}: {_format(value)}" for key, value in mapping.items()]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
