"""The options of ``bindweave ui`` (no Gradio here: the CLI builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import field
from ..generate_config import ModelConfig
from ..io.files import ensure_writable_dir
from ..refine import RefineOptions

__all__ = ["UIConfig"]


@dataclass(kw_only=True)
class UIConfig(ModelConfig, RefineOptions):
    """Serve the subject-to-video web app (model options as for ``bindweave generate``)."""

    host: str = field("127.0.0.1", help="address to listen on; 0.0.0.0 exposes the app to the network")
    port: int = field(7860, help="port to listen on")
    share: bool = field(False, help="also open a public Gradio share link (off: the app stays local)")
    out: Path = field(Path("outputs/ui"), help="folder for the results (one subfolder per run)")

    def validate(self) -> None:
        """Every launcher option that needs no model, checked before the model is loaded."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port}")
        self.validate_model()
        self.check_refine()
        if self.refine == "local" and not self.saved_model().has_mllm:
            raise ValueError("--refine local needs the pipeline's Qwen2.5-VL (give --mllm)")
        ensure_writable_dir(self.out / "probe")
