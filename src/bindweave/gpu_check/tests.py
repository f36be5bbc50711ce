"""Run every ``gpu``-marked test in a pytest subprocess on the chosen device and read back its results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..testing.devices import GPU_TEST_DEVICE_ENV

__all__ = ["TestCase", "TestReport", "gpu_test_files", "run_gpu_tests"]

GPU_MARK = "pytest.mark.gpu"


@dataclass(frozen=True)
class TestCase:
    """One test's outcome: passed, failed, error or skipped, with pytest's message for the last three."""

    __test__ = False  # not a pytest test class

    id: str
    outcome: str
    seconds: float
    message: str = ""


@dataclass
class TestReport:
    """What the pytest run gave; ``returncode`` is pytest's (0 all passed, 1 some failed, 5 none collected)."""

    __test__ = False

    command: list[str]
    returncode: int
    seconds: float
    cases: list[TestCase] = field(default_factory=list)
    output_tail: str = ""

    def count(self, outcome: str) -> int:
        return sum(case.outcome == outcome for case in self.cases)

    @property
    def ok(self) -> bool:
        """Every collected test passed or was skipped, and pytest itself succeeded."""
        return self.returncode == 0 and not any(c.outcome in ("failed", "error") for c in self.cases)

    def as_dict(self) -> dict[str, Any]:
        counts = {o: self.count(o) for o in ("passed", "failed", "error", "skipped")}
        return asdict(self) | {"counts": counts, "ok": self.ok}


def gpu_test_files(tests_dir: Path) -> list[Path]:
    """The test modules that hold a ``gpu`` mark (only those are collected: the others may import packages,
    such as gradio, that a GPU node lacks)."""
    return sorted(
        path for path in tests_dir.rglob("test_*.py") if GPU_MARK in path.read_text(encoding="utf-8")
    )


def run_gpu_tests(
    repo: Path, device: str, junit: Path, tmp: Path, *, keyword: str | None = None, timeout: float = 330
) -> TestReport:
    """``pytest -m gpu`` over :func:`gpu_test_files` with ``BINDWEAVE_GPU_TEST_DEVICE=device``.

    ``tmp`` becomes the tests' ``TMPDIR`` (torchrun and tempfile write there; some nodes mount /tmp small).
    """
    files = gpu_test_files(repo / "tests")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    command += [*(["-k", keyword] if keyword else []), *map(str, files)]
    src = str(repo / "src")
    env = {
        **os.environ,
        GPU_TEST_DEVICE_ENV: device,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
        "TMPDIR": str(tmp),
    }
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        returncode = -1
        output = _text(err.stdout) + _text(err.stderr) + f"\ntimed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    cases = read_junit(junit) if junit.is_file() else []
    return TestReport(command, returncode, seconds, cases, output[-6000:])


def read_junit(path: Path) -> list[TestCase]:
    """Every ``testcase`` of a pytest junit XML file, with its outcome."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or child.text or "").strip()
                break
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.append(TestCase(test_id, outcome, float(case.get("time") or 0.0), message[:2000]))
    return cases


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""
