"""``bindweave toy export``: a training checkpoint as a self-contained pipeline folder (what ships).

A ``checkpoint-*`` folder links its frozen components to ``../frozen`` and carries the resumable training
state; the export copies the pipeline's files only, links resolved, into a fresh folder that is renamed
into place when complete.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bindweave.config import field
from bindweave.io.files import atomic_folder

__all__ = ["ToyExportConfig", "export_pipeline", "run_toy_export"]

_NOT_EXPORTED = ("training_state", "lora", "__pycache__")


@dataclass
class ToyExportConfig:
    checkpoint: Path = field(
        help="a checkpoint-* folder, or a training output_dir (its newest checkpoint)", positional=True
    )
    out: Path = field(Path("runs/toy/model"), help="the pipeline folder to write (replaced if it exists)")


def export_pipeline(checkpoint: Path, out: Path) -> Path:
    """Copy the pipeline files of ``checkpoint`` (links resolved) to ``out``; returns ``out``."""
    from bindweave.training.checkpoint import find_latest_checkpoint

    checkpoint = Path(checkpoint)
    if not (checkpoint / "model_index.json").is_file():
        latest = find_latest_checkpoint(checkpoint)
        if latest is None:
            raise FileNotFoundError(f"{checkpoint} is neither a pipeline checkpoint nor a folder holding one")
        checkpoint = latest
    with atomic_folder(out, replace=True) as staged:
        shutil.copytree(checkpoint, staged, symlinks=False, ignore=shutil.ignore_patterns(*_NOT_EXPORTED))
    return Path(out)


def run_toy_export(config: ToyExportConfig) -> Path:
    out = export_pipeline(config.checkpoint, config.out)
    print(f"exported pipeline: {out.resolve()}")
    return out
