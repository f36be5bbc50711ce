"""``bindweave demo``: the main job on the embedded default model, on a fresh machine, in under a minute."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .config import field
from .default_model import default_model_notice, demo_prompt, demo_references
from .generate_config import ModelConfig, check_seed

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DemoConfig(ModelConfig):
    out: Path = field(Path("outputs"), help="output folder for demo.mp4 and demo.png")
    prompt: str = field(
        default_factory=demo_prompt, help="prompt; it names each subject by its reference image's position"
    )
    steps: int | None = field(None, help="sampling steps (default: the model's: 20 for the embedded model)")
    seed: int = field(0, help="seed")

    def validate(self) -> None:
        """Every rule that needs no model, checked before it is loaded."""
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        check_seed(self.seed)
        if not self.prompt.strip():
            raise ValueError("--prompt is empty: say what the subjects do")
        self.validate_model()


def run_demo(config: DemoConfig) -> tuple[Path, Path]:
    # Imported here: the CLI builds the demo's options from this module without loading torch.
    import torch

    from .generate import load_pipeline
    from .io.files import ensure_writable_dir, remove_stale_temporaries
    from .io.strip import write_strip
    from .io.video import write_video

    config.validate()
    video_path, strip_path = config.out / "demo.mp4", config.out / "demo.png"
    ensure_writable_dir(video_path)
    remove_stale_temporaries(config.out)
    if config.uses_default_model:
        print(default_model_notice())
    pipe = load_pipeline(config)
    references = demo_references()
    frames = pipe(
        config.prompt,
        references,
        num_inference_steps=config.steps,
        generator=torch.Generator().manual_seed(config.seed),
    ).frames[0]
    write_video(frames, video_path, fps=16)
    write_strip(references, frames, strip_path)
    print(f"video: {video_path.resolve()}\nstrip: {strip_path.resolve()}")
    return video_path, strip_path
