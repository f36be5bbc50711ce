"""Shared test setup: the tiny model folders, the optional real-data fixtures and the ``slow`` / ``gpu`` markers.

The tiny release and the tiny pipeline folder are built once per test session; tests only read them (a
test that must change a model folder copies it first). Outputs are compared as
:mod:`bindweave.testing.tolerance` says: bitwise only on the same storage layout, else up to float32
rounding.

Real OpenS2V artifacts live outside the repo in ``../shared`` (never copied in); tests that need them take
the ``shared_dir`` / ``fixtures_dir`` fixtures and are skipped, with a reason, where that folder is absent.
Set ``BINDWEAVE_SHARED_DIR`` to use another folder (a missing one simulates a checkout without it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tokenizers fork-warn (and can deadlock) once a DataLoader worker forks after a tokenizer was used.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("BINDWEAVE_SHARED_DIR", REPO_ROOT / ".." / "shared")).resolve()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _gpu_tests_can_run() -> bool:
    """CUDA is present, or ``BINDWEAVE_GPU_TEST_DEVICE=cpu`` asks for the gpu tests on the CPU."""
    import torch  # only imported when a gpu-marked test was collected

    from bindweave.testing.devices import gpu_test_device

    return gpu_test_device().type == "cpu" or torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow")
    skip_slow = pytest.mark.skip(reason="needs --runslow")
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _gpu_tests_can_run():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip_gpu)
    if not run_slow:
        for item in items:
            if item.get_closest_marker("slow") is not None:
                item.add_marker(skip_slow)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Every test on one torch thread: tiny models run fastest so, and are not slowed by other processes.

    With two threads on this shared 2-core machine, OpenMP's barriers spin while the other core serves
    another process: a toy evaluation took 89-192 s on two threads and 7.5 s on one (measured under load).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory):
    """The tiny random release (seed 0): Wan I2V, BindWeave DiT (no ``config.json``) and Qwen2.5-VL folders."""
    from bindweave.testing import build_tiny_release

    return build_tiny_release(tmp_path_factory.mktemp("tiny-release"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_release`` saved as one BindWeavePipeline folder (native size 64x96x17), what ``--model`` takes."""
    from bindweave.testing import build_tiny_random_pipeline

    return build_tiny_random_pipeline(
        tmp_path_factory.mktemp("tiny-model") / "pipeline", release=tiny_release
    )


@pytest.fixture(scope="session")
def gpu_device():
    """Where ``gpu``-marked tests run: CUDA, or the CPU under ``BINDWEAVE_GPU_TEST_DEVICE=cpu``."""
    from bindweave.testing.devices import gpu_test_device

    return gpu_test_device()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repo (real checkpoints/fixtures); skips the test where it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DIR} is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """The copies of the official OpenS2V/BindWeave artifacts (``shared/fixtures/opens2v``)."""
    path = shared_dir / "fixtures" / "opens2v"
    if not path.is_dir():
        pytest.skip(f"OpenS2V fixtures folder {path} is absent")
    return path
