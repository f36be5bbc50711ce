"""``bindweave toy-eval``: the toy benchmark, a trained toy model against its ablations and a random DiT.

On ``num_samples`` held-out scenes (their own seeded split: subjects and prompts never seen in training)
every variant generates a clip with the same noise seed per sample, and :mod:`bindweave.toy.metrics`
scores it against the ground truth. Variants:

- ``trained``: the model as trained;
- ``no-mllm`` / ``no-vae-refs`` / ``no-clip``: the same weights with one stream zeroed
  (:mod:`bindweave.toy.ablation`);
- ``random-init``: the same pipeline with a freshly initialised DiT (what training started from);
- ``ground-truth``: the true clips themselves, the ceiling of every score (nothing is generated).

Each variant's per-sample scores are written to ``<out>/<variant>.json`` as soon as it finishes and
reused by a rerun with the same settings, so an interrupted benchmark resumes. The table (mean and
standard error over samples) is printed and written to ``<out>/table.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bindweave.config import field, to_dict
from bindweave.io.files import atomic_write_json, atomic_write_text, ensure_writable_dir
from bindweave.io.video import write_video

from .ablation import ABLATIONS, AblatedBindWeavePipeline
from .dataset import toy_scene
from .metrics import METRICS, ClipScores, mean_scores, score_clip
from .sprites import reference_image
from .world import render_clip

logger = logging.getLogger(__name__)

__all__ = ["VARIANTS", "ToyEvalConfig", "format_table", "run_toy_eval", "toy_eval"]

VARIANTS = ("trained", "no-mllm", "no-vae-refs", "no-clip", "random-init", "ground-truth")
_SETTINGS = ("model", "num_samples", "steps", "guidance_scale", "world_seed", "init_seed")


@dataclass
class ToyEvalConfig:
    model: Path = field(help="toy pipeline folder, e.g. runs/toy/model from `make toy-model`")
    variants: list[str] = field(
        default_factory=lambda: list(VARIANTS), help=f"variants to run, from {', '.join(VARIANTS)}"
    )
    num_samples: int = field(32, help="held-out samples per variant")
    steps: int = field(25, help="sampling steps")
    guidance_scale: float | None = field(
        None, help="classifier-free guidance scale (default: the model's; 1.0 for the toy model)"
    )
    world_seed: int = field(0, help="world seed of the held-out split")
    init_seed: int = field(0, help="seed of the random-init variant's DiT")
    out: Path = field(Path("outputs/toy-eval"), help="folder for the scores, table.md and results.json")
    save_videos: bool = field(False, help="also write each generated clip as <out>/videos/<variant>/<i>.mp4")

    def validate(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
        if self.num_samples < 1 or self.steps < 1:
            raise ValueError(f"--num-samples and --steps must be >= 1, got {self.num_samples}, {self.steps}")


def _variant_pipeline(pipe, variant: str, init_seed: int) -> AblatedBindWeavePipeline:
    if variant == "random-init":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            transformer = type(pipe.transformer).from_config(pipe.transformer.config)
        fresh = AblatedBindWeavePipeline.from_pipeline(pipe, ABLATIONS["full"])
        fresh.register_modules(transformer=transformer.to(pipe.transformer.dtype).eval())
        return fresh
    return AblatedBindWeavePipeline.from_pipeline(
        pipe, ABLATIONS["full" if variant == "trained" else variant]
    )


def _generate(pipe, index: int, config: ToyEvalConfig) -> tuple[np.ndarray, np.ndarray, object]:
    scene = toy_scene(config.world_seed, "heldout", index)
    truth = render_clip(scene)
    references = [reference_image(s.sprite)[0] for s in scene.subjects]
    frames = pipe(
        scene.prompt,
        references,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator().manual_seed(index),
    ).frames[0]  # (F, H, W, 3) floats in [0, 1]
    return frames, truth, scene


def with_model_guidance(config: ToyEvalConfig, pipe) -> ToyEvalConfig:
    """``config`` with an unset guidance scale replaced by the model's own default."""
    if config.guidance_scale is not None:
        return config
    return dataclasses.replace(config, guidance_scale=pipe.config.default_guidance_scale)


def toy_eval(pipe, config: ToyEvalConfig) -> dict[str, list[ClipScores]]:
    """Per-sample scores of every variant in ``config.variants``, resuming from ``config.out``."""
    config.validate()
    config = with_model_guidance(config, pipe)
    settings = {k: v for k, v in to_dict(config).items() if k in _SETTINGS}
    results: dict[str, list[ClipScores]] = {}
    for variant in config.variants:
        path = config.out / f"{variant}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("settings") == settings:
                results[variant] = [ClipScores(**s) for s in saved["scores"]]
                logger.info("%s: reusing %s", variant, path)
                continue
        scores = []
        runner = None if variant == "ground-truth" else _variant_pipeline(pipe, variant, config.init_seed)
        if runner is not None:
            runner.set_progress_bar_config(disable=True)
        for index in tqdm(range(config.num_samples), desc=f"toy-eval {variant}", unit="clip"):
            if runner is None:
                scene = toy_scene(config.world_seed, "heldout", index)
                frames = truth = render_clip(scene)
            else:
                frames, truth, scene = _generate(runner, index, config)
                if config.save_videos:
                    write_video(frames, config.out / "videos" / variant / f"{index:03d}.mp4", fps=16)
            scores.append(score_clip(frames, scene, truth))
        atomic_write_json(path, {"settings": settings, "scores": [s.to_dict() for s in scores]})
        results[variant] = scores
    return results


def format_table(results: dict[str, list[ClipScores]]) -> str:
    """A markdown table: one row per variant, mean +- standard error of each score over samples."""
    arrows = {name: "↑" if higher else "↓" for name, higher in METRICS.items()}
    header = "| variant | " + " | ".join(f"{name} {arrows[name]}" for name in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for variant, scores in results.items():
        cells = []
        for name in METRICS:
            values = np.array([getattr(s, name) for s in scores])
            error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.3f} ± {error:.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_toy_eval(config: ToyEvalConfig) -> dict[str, dict[str, float]]:
    from bindweave.pipeline import BindWeavePipeline

    config.validate()
    ensure_writable_dir(config.out / "results.json")  # created by the first file written
    pipe = BindWeavePipeline.from_pretrained(config.model, torch_dtype=torch.float32)
    config = with_model_guidance(config, pipe)
    results = toy_eval(pipe, config)
    table = format_table(results)
    atomic_write_text(config.out / "table.md", table)
    summary = {variant: mean_scores(scores) for variant, scores in results.items()}
    atomic_write_json(config.out / "results.json", {"config": to_dict(config), "means": summary})
    print(table)
    print(f"results: {(config.out / 'results.json').resolve()}")
    return summary
