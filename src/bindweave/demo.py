"""``bindweave demo``: the main job on the embedded default model, on a fresh machine, in under a minute."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import field
from .default_model import default_model_notice, demo_prompt, demo_references, demo_true_frames
from .generate_config import ModelConfig, check_seed

if TYPE_CHECKING:
    import numpy as np

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
    truth = _true_frames(config.prompt, frames.shape)
    write_strip(references, frames, strip_path, truth=truth)
    print(f"video: {video_path.resolve()}\nstrip: {strip_path.resolve()}")
    if truth is not None:
        print("strip rows: the references and the generated frames; under them the scene's true frames")
    return video_path, strip_path


def _true_frames(prompt: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The demo scene's true frames when the video can be compared with them, else ``None`` (and why)."""
    if prompt != demo_prompt():
        print("strip: no true frames (a prompt other than the demo scene's has none)")
        return None
    truth = demo_true_frames(shape[0])
    if truth.shape != tuple(shape):
        print(f"strip: no true frames (the video is {shape[2]}x{shape[1]}, the toy scene 64x64)")
        return None
    return truth
