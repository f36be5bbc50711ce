"""The options of ``bindweave bench`` (no torch: the CLI builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import field
from ..generate_config import Dtype, check_guidance, check_seed, check_video_size
from .config import PerfConfig

__all__ = ["DEFAULT_VIDEO", "BenchConfig", "BenchSize"]

BenchSize = Literal["tiny", "medium", "14b"]

# Video size per model size: (height, width, num_frames).
DEFAULT_VIDEO = {"tiny": (32, 48, 5), "medium": (96, 160, 9), "14b": (720, 1280, 81)}


@dataclass(kw_only=True)
class BenchConfig(PerfConfig):
    """Benchmark the DiT and the pipeline for one model size (random weights)."""

    size: BenchSize = field("tiny", help="model size: tiny, medium (CPU or GPU) or 14b (GPU only, DiT only)")
    height: int | None = field(None, help="video height (default: tiny 32, medium 96, 14b 720)")
    width: int | None = field(None, help="video width (default: tiny 48, medium 160, 14b 1280)")
    num_frames: int | None = field(None, help="video frames, 4k+1 (default: tiny 5, medium 9, 14b 81)")
    mllm_tokens: int = field(526, help="MLLM tokens of the prompt; the negative prompt has 6 more")
    steps: int = field(4, help="sampling steps of the end-to-end run")
    repeats: int = field(3, help="timed DiT steps, after one warm-up step")
    guidance: float = field(5.0, help="CFG scale (1 times a single branch)")
    peak_tflops: float | None = field(
        None,
        help="device peak for MFU in TFLOP/s (default: the GPU's dense bf16 peak when known, else measured "
        "with a large matmul in the bench's dtype)",
    )
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")
    dtype: Dtype = field("auto", help="weights dtype; auto = bfloat16 on CUDA, float32 on CPU")
    compare_stock: bool = field(
        True, help="also time stock diffusers WanTransformer3DModel on the same weights"
    )
    seed: int = field(0, help="seed of the random weights and inputs")

    def video(self) -> tuple[int, int, int]:
        height, width, frames = DEFAULT_VIDEO[self.size]
        return self.height or height, self.width or width, self.num_frames or frames

    def validate(self) -> None:
        """Every setting that can be checked before the model is built."""
        self.validate_perf()
        check_video_size(self.height, self.width, self.num_frames)
        for name in ("mllm_tokens", "steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        check_guidance(self.guidance)
        check_seed(self.seed)
