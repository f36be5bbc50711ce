"""The options of ``bindweave eval score`` (no torch: the CLI builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bindweave.config import field
from bindweave.eval.scores import METRICS, weights_for

__all__ = ["EvalScoreConfig"]


@dataclass
class EvalScoreConfig:
    """Score generated videos with OpenS2V-Eval (per video, per category, TotalScore)."""

    videos_dir: Path = field(flag="--videos", help="folder with the generated videos, named <case id>.mp4")
    manifest: Path = field(help="the case manifest (e.g. Open-Domain_Eval.json)")
    output_dir: Path = field(help="where per-video JSON, summary.json and summary.md are written")
    images_dir: Path | None = field(
        None, help="base folder of the manifest's img_paths (default: the manifest's folder)"
    )
    models_dir: Path | None = field(
        None,
        flag="--models",
        help="folder holding the scoring models (layout: see bindweave.eval.score); "
        "without it the model-based metrics are reported missing",
    )
    metrics: list[str] = field(
        default_factory=lambda: list(METRICS), help=f"metrics to compute, among: {' '.join(METRICS)}"
    )
    domain: Literal["Open-Domain", "Human-Domain", "Single-Domain"] = field(
        "Open-Domain", help="OpenS2V-Eval domain, selects the TotalScore weights"
    )
    weights_version: Literal["v1.1", "v1.0"] = field("v1.1", help="OpenS2V-Eval version of the weights")
    num_frames: int = field(
        32, help="frames per video for Aesthetic/FaceSim/GME/Nexus (np.linspace(0, N-1, k, dtype=int))"
    )
    judge_endpoint: str | None = field(
        None,
        help="OpenAI-compatible base URL for the NaturalScore judge (e.g. https://api.openai.com/v1); "
        "without it NaturalScore is reported missing",
    )
    judge_model: str = field("gpt-4o-2024-11-20", help="judge model name")
    judge_api_key_env: str = field("OPENAI_API_KEY", help="environment variable holding the judge's API key")
    judge_timeout: float = field(120.0, help="seconds per judge request")
    judge_retries: int = field(4, help="retries per judge request on 5xx/429/timeouts")
    judge_runs: int = field(3, help="independent judge ratings averaged per video")
    judge_frames: int = field(16, help="frames shown to the judge")
    judge_prompt_file: Path | None = field(
        None,
        flag="--judge-prompt",
        help="the benchmark's judge prompt, needed for NaturalScores comparable to the leaderboard: "
        "<OpenS2V-Nexus checkout>/eval/get_naturalscore.py (its `prompt` string is read, the file is not "
        "run) or a text file; without it a paraphrase is used and the summary says so",
    )
    device: str | None = field(None, help="torch device for the models (default: cuda if available)")

    def __post_init__(self) -> None:
        for name in ("videos_dir", "manifest", "output_dir", "images_dir", "models_dir", "judge_prompt_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose among {', '.join(METRICS)}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metrics listed twice: {self.metrics}")
        weights_for(self.domain, self.weights_version)  # validates the pair
