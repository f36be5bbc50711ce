"""Training metrics to stdout, TensorBoard and ``metrics.jsonl`` (main rank only).

``metrics.jsonl`` holds one JSON object per logged step; it is the machine-readable record (tests and
plots read it). On resume, entries after the resumed step are dropped from it and from TensorBoard
(``purge_step``), so a run that was killed and resumed has one clean curve.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from bindweave.io.files import atomic_write_text

from .distributed import DistributedContext

logger = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "read_metrics", "setup_logging"]

METRICS_NAME = "metrics.jsonl"


def setup_logging(ctx: DistributedContext) -> None:
    """Log lines to stdout: every level from INFO on the main rank, warnings only on the others."""
    level = logging.INFO if ctx.is_main else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("bindweave.training").setLevel(level)


def read_metrics(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLogger:
    def __init__(self, output_dir: Path, ctx: DistributedContext, tensorboard: bool, resume_step: int):
        self.enabled = ctx.is_main
        self.path = Path(output_dir) / METRICS_NAME
        self.writer = None
        if not self.enabled:
            return
        kept = [m for m in read_metrics(output_dir) if m["step"] <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard is a training-only dependency

            self.writer = SummaryWriter(
                Path(output_dir) / "tensorboard", purge_step=resume_step + 1 if resume_step else None
            )

    def log(self, step: int, values: dict[str, float | str]) -> None:
        if not self.enabled:
            return
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        logger.info("step %d | %s", step, " | ".join(f"{k} {_format(v)}" for k, v in values.items()))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for name, value in numbers.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _format(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return f"{value:.3e}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
