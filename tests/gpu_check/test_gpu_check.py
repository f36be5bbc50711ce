"""``bindweave gpu-check`` without a GPU: the one-line exit, the same code path on the CPU with the tiny DiT
(wheels, tests, timing scale, memory table, report), a failing test failing the check, and the wheels."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bindweave import cli
from bindweave.gpu_check.memory import MEMORY_CASES
from bindweave.gpu_check.tests import gpu_test_files, run_gpu_tests
from bindweave.gpu_check.wheels import MAX_WHEEL_BYTES, WHEELS, Wheel, WheelError, ensure_packages

REPO = Path(__file__).resolve().parents[2]
# A gpu test that runs in a second on the CPU (no pipeline): enough to carry the plumbing.
QUICK_GPU_TEST = "test_batched_cfg_equals_two_forwards"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, capsys):
    assert cli.main(["gpu-check", "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"gpu-check: no CUDA device here (torch {torch.__version__}): nothing to check, exiting 0"
    ]
    assert not (tmp_path / "report").exists()


def test_the_14b_size_on_a_cpu_is_refused_before_anything_runs(tmp_path, caplog):
    assert cli.main(["gpu-check", "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert "--size 14b needs a GPU" in caplog.text and not list(tmp_path.iterdir())


def test_the_cpu_path_runs_every_part_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    args = ["--device", "cpu", "--size", "tiny", "--timing-layers", "1", "--repeats", "1"]
    assert cli.main(["gpu-check", "--out", str(out), *args, "--tests-filter", QUICK_GPU_TEST]) == 0
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["verdict"] == "passed" and report["errors"] == {}
    assert report["wheels_installed"] == []  # everything is installed here
    tests = report["tests"]
    assert tests["counts"] == {"passed": 1, "failed": 0, "error": 0, "skipped": 0}
    assert tests["cases"][0]["id"].endswith(f"::{QUICK_GPU_TEST}")

    timing = report["timing"]
    assert (timing["layers"], timing["timed_layers"], timing["repeats"]) == (2, 1, 1)
    assert (timing["tokens"], timing["context_tokens"]) == (36, 4 * 17 + 526 + 512)  # as bench's tiny size
    # One of two blocks timed: the full depth costs more, but less than twice (the embeddings are not doubled).
    assert 1 < timing["depth_scale"] < 2
    assert timing["forward_seconds"] == pytest.approx(timing["timed_forward_seconds"] * timing["depth_scale"])
    assert timing["predicted_50_steps_cfg_seconds"] == pytest.approx(50 * timing["cfg_step_seconds"])
    assert timing["predicted_4_steps_no_cfg_seconds"] == pytest.approx(4 * timing["forward_seconds"])
    assert timing["mfu"] == pytest.approx(timing["achieved_tflops"] / timing["matmul_peak_tflops"])

    memory = {row["case"]: row for row in report["memory"]}
    assert list(memory) == [name for name, _, _ in MEMORY_CASES]
    assert memory["sequential"]["note"] == "needs CUDA (refused on a CPU)"
    assert all(row["peak_gib"] is None for row in memory.values())  # no GPU memory to measure on a CPU

    markdown = (out / "gpu-check.md").read_text()
    assert markdown.startswith("# bindweave gpu-check: passed")
    assert f"| `{tests['cases'][0]['id']}` | passed |" in markdown
    assert "Seconds at the model's depth = timed seconds x" in markdown
    printed = capsys.readouterr().out
    assert "gpu-check: passed" in printed and "tests: 1 passed, 0 failed, 0 error, 0 skipped" in printed
    assert not [p for p in out.iterdir() if p.name.startswith("gpu-check-")]  # the temporary folder is gone


def test_a_failing_test_fails_the_run_and_is_reported(tmp_path):
    """Outcomes come from pytest's junit XML: one of each, in a throwaway tests folder."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_probe.py").write_text(
        "import pytest\n\npytestmark = pytest.mark.gpu\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_fails():\n    assert 1 == 2, 'one is not two'\n\n"
        "def test_skips():\n    pytest.skip('not here')\n"
    )
    (tests / "test_not_gpu.py").write_text("def test_never_collected():\n    raise SystemExit\n")
    assert gpu_test_files(tests) == [tests / "test_probe.py"]
    report = run_gpu_tests(tmp_path / "repo", "cpu", tmp_path / "junit.xml", tmp_path, timeout=120)
    outcomes = {case.id.split("::")[-1]: case.outcome for case in report.cases}
    assert outcomes == {"test_passes": "passed", "test_fails": "failed", "test_skips": "skipped"}
    assert not report.ok and report.returncode == 1
    assert "one is not two" in next(c.message for c in report.cases if c.outcome == "failed")


def test_the_repository_gpu_tests_cover_every_cuda_path():
    files = {path.relative_to(REPO).as_posix() for path in gpu_test_files(REPO / "tests")}
    assert {"tests/perf/test_cuda.py", "tests/test_preflight.py"} <= files


# ---------------------------------------------------------------------------------------------- wheels


def _write_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: one module defining ``VALUE``, with the metadata pip needs."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", "VALUE = 42\n")
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def test_a_missing_package_is_installed_from_its_wheel_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    folder = tmp_path / "wheels"
    folder.mkdir()
    _write_wheel(folder, "bwprobe_carried", "0.1")
    wheel = Wheel("bwprobe_carried", "0.1", "bwprobe_carried", "a probe")
    present = Wheel("torch", "0", "torch", "already importable: never installed")
    installed = ensure_packages(folder, tmp_path / "site", wheels=(wheel, present))
    assert installed == [wheel]
    assert (tmp_path / "site" / "bwprobe_carried.py").is_file()
    assert __import__("bwprobe_carried").VALUE == 42
    # Subprocesses (pytest, torchrun) see it through PYTHONPATH.
    child = subprocess.run(
        [sys.executable, "-c", "import bwprobe_carried; print(bwprobe_carried.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "42"
    sys.modules.pop("bwprobe_carried")


def test_a_missing_package_without_a_wheel_names_it_and_the_command(tmp_path):
    wheel = Wheel("bwprobe-absent", "1.2", "bwprobe_absent", "for the probe")
    with pytest.raises(WheelError) as err:
        ensure_packages(tmp_path, tmp_path / "site", wheels=(wheel,))
    message = str(err.value)
    assert "bwprobe-absent==1.2 (for the probe)" in message and f"no wheel for them in {tmp_path}" in message
    assert "make gpu-wheels" in message


def test_the_carried_wheels_are_the_versions_tested_here():
    # make install takes constraints.txt's pins, so a clean checkout tests what the node gets.
    lines = (Path(__file__).parents[2] / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert pins == {wheel.name: wheel.version for wheel in WHEELS}
    for wheel in WHEELS:
        assert importlib.metadata.version(wheel.name) == wheel.version, wheel.name
    assert MAX_WHEEL_BYTES == 64 * 2**20
