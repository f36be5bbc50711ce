"""Fixtures of the web app tests: the session's tiny model folder, and small reference files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from bindweave.generate import ModelConfig
from bindweave.ui.loader import PipelineLoader


@pytest.fixture(scope="session")
def pipe_loader(tiny_model_dir: Path) -> PipelineLoader:
    """One loader for the whole session, so the model is loaded (and warmed up) once."""
    return PipelineLoader(ModelConfig(model=tiny_model_dir, dtype="float32", device="cpu"))


@pytest.fixture(scope="session")
def ref_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small references of different aspect ratios (one taller, one wider than the canvas)."""
    folder = tmp_path_factory.mktemp("ui-refs")
    rng = np.random.default_rng(0)
    tall = folder / "tall subject.png"  # a space in the name: the command line must quote it
    PIL.Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tall)
    wide = folder / "wide.jpg"
    PIL.Image.new("RGB", (120, 36), (200, 40, 30)).save(wide, quality=95)
    return [tall, wide]


@pytest.fixture(scope="session")
def not_an_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-bad") / "notes.txt"
    path.write_text("this is not an image\n")
    return path
