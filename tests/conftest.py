"""Shared test setup: the optional real-data fixtures and the ``slow`` / ``gpu`` markers.

Real OpenS2V artifacts live outside the repo in ``../shared`` (never copied in); tests that need them take
the ``shared_dir`` / ``fixtures_dir`` fixtures and are skipped, with a reason, where that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tokenizers fork-warn (and can deadlock) once a DataLoader worker forks after a tokenizer was used.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _cuda_available() -> bool:
    import torch  # only imported when a gpu-marked test was collected

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow")
    skip_slow = pytest.mark.skip(reason="needs --runslow")
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip_gpu)
    if not run_slow:
        for item in items:
            if item.get_closest_marker("slow") is not None:
                item.add_marker(skip_slow)


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
