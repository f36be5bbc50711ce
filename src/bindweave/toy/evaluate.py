"""``bindweave toy-eval``: the toy benchmark, a trained toy model against its ablations and a random DiT.

On ``num_samples`` held-out scenes (their own seeded split: subjects and prompts never seen in training;
``split="train"`` scores the training scenes instead, to measure what is remembered) every variant
generates a clip with the same noise seed per sample, and :mod:`bindweave.toy.metrics` scores it against
the ground truth. Variants:

- ``trained``: the model as trained;
- ``no-mllm`` / ``no-vae-refs`` / ``no-clip``: the same weights with one stream zeroed
  (:mod:`bindweave.toy.ablation`);
- ``random-init``: the same pipeline with a freshly initialised DiT (what training started from);
- ``vae-recon``: the true clips encoded and decoded by the model's VAE (no DiT): the best the DiT's
  latents can show, the ceiling the DiT works under;
- ``ground-truth``: the true clips themselves, the ceiling of every score (nothing is generated).

With several ``--samplers`` or ``--steps`` (a sweep), each variant runs with each sampler and step count:
a row ``<variant> <sampler> <steps>`` each, with its cost, the DiT forwards per clip (steps, twice that
with CFG) and the measured seconds the DiT forwards take per clip (the VAE and the encoders, the same for
every row, left out; :mod:`bindweave.samplers` for the samplers).

Each row's per-sample scores are written to ``<out>/<row>.json`` as soon as it finishes and reused by a
rerun with the same settings, so an interrupted benchmark resumes. The table (mean and standard error over
samples) is printed and written to ``<out>/table.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from bindweave.config import to_dict
from bindweave.interrupt import interrupt_message
from bindweave.io.files import atomic_write_json, atomic_write_text, ensure_writable_dir
from bindweave.io.video import write_video
from bindweave.samplers import get_sampler

from .ablation import ABLATIONS, AblatedBindWeavePipeline
from .config import VARIANTS, ToyEvalConfig
from .dataset import toy_scene
from .metrics import METRICS, ClipScores, mean_scores, score_clip
from .sprites import reference_image
from .vae import reconstruct_clip
from .world import render_clip

logger = logging.getLogger(__name__)

__all__ = [
    "VARIANTS",
    "EvalRow",
    "ToyEvalConfig",
    "format_table",
    "run_toy_eval",
    "toy_eval",
    "toy_eval_rows",
]

_SETTINGS = ("model", "num_samples", "world_seed", "split", "init_seed")
_UNSAMPLED = ("vae-recon", "ground-truth")  # rows without a DiT: one each, whatever the sweep


@dataclass(frozen=True)
class EvalRow:
    """One row of the table: a variant sampled one way, its scores and its cost per clip."""

    variant: str
    sampler: str | None  # None for the unsampled rows (vae-recon, ground-truth)
    steps: int | None
    guidance_scale: float | None
    label: str
    scores: list[ClipScores] = dataclasses.field(default_factory=list)
    dit_seconds_per_clip: float | None = None

    @property
    def dit_forwards(self) -> int | None:
        """DiT forwards per clip: one per step, two with CFG (batched or not, the work is twice)."""
        if self.steps is None:
            return None
        return self.steps * (1 if self.guidance_scale == 1.0 else 2)


def _plan(config: ToyEvalConfig, model_guidance: float) -> list[EvalRow]:
    rows = []
    for variant in config.variants:
        if variant in _UNSAMPLED:
            rows.append(EvalRow(variant, None, None, None, variant))
            continue
        for sampler in config.samplers:
            default = get_sampler(sampler).default_guidance
            guidance = config.guidance_scale
            guidance = guidance if guidance is not None else (model_guidance if default is None else default)
            for steps in config.steps:
                label = f"{variant} {sampler} {steps}" if config.is_sweep else variant
                rows.append(EvalRow(variant, sampler, steps, guidance, label))
    return rows


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


def _generate(pipe, index: int, config: ToyEvalConfig, row: EvalRow) -> tuple[np.ndarray, np.ndarray, object]:
    scene = toy_scene(config.world_seed, config.split, index)
    truth = render_clip(scene)
    references = [reference_image(s.sprite)[0] for s in scene.subjects]
    frames = pipe(
        scene.prompt,
        references,
        num_inference_steps=row.steps,
        guidance_scale=row.guidance_scale,
        generator=torch.Generator().manual_seed(index),
        sampler=row.sampler,
    ).frames[0]  # (F, H, W, 3) floats in [0, 1]
    return frames, truth, scene


def with_model_guidance(config: ToyEvalConfig, pipe) -> ToyEvalConfig:
    """``config`` with an unset guidance scale replaced by the model's own default."""
    if config.guidance_scale is not None:
        return config
    return dataclasses.replace(config, guidance_scale=pipe.config.default_guidance_scale)


@contextlib.contextmanager
def _forward_timer(module: torch.nn.Module, seconds: list[float]) -> Iterator[None]:
    """Append the wall time of each forward of ``module`` to ``seconds`` while in the block."""
    started: list[float] = []
    pre = module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    post = module.register_forward_hook(lambda *_: seconds.append(time.perf_counter() - started.pop()))
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def toy_eval_rows(pipe, config: ToyEvalConfig) -> list[EvalRow]:
    """Every row of ``config`` (variant x sampler x steps) with its per-sample scores, resuming from ``config.out``."""
    config.validate()
    common = {k: v for k, v in to_dict(config).items() if k in _SETTINGS}
    done = []
    for row in _plan(config, pipe.config.default_guidance_scale):
        settings = {
            **common,
            "sampler": row.sampler,
            "steps": row.steps,
            "guidance_scale": row.guidance_scale,
        }
        path = config.out / f"{row.label.replace(' ', '.')}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            # Files from before --split existed scored held-out scenes.
            if {"split": "heldout", **saved.get("settings", {})} == settings:
                scores = [ClipScores(**s) for s in saved["scores"]]
                done.append(
                    dataclasses.replace(
                        row, scores=scores, dit_seconds_per_clip=saved.get("dit_seconds_per_clip")
                    )
                )
                logger.info("%s: reusing %s", row.label, path)
                continue
        runner = None if row.sampler is None else _variant_pipeline(pipe, row.variant, config.init_seed)
        if runner is not None:
            runner.set_progress_bar_config(disable=True)
        scores, seconds = [], []
        for index in tqdm(range(config.num_samples), desc=f"toy-eval {row.label}", unit="clip"):
            if runner is None:
                scene = toy_scene(config.world_seed, config.split, index)
                frames = truth = render_clip(scene)
                if row.variant == "vae-recon":
                    frames = reconstruct_clip(pipe.vae, truth)
            else:
                with _forward_timer(runner.transformer, seconds):
                    frames, truth, scene = _generate(runner, index, config, row)
                if config.save_videos:
                    folder = config.out / "videos" / row.label.replace(" ", ".")
                    write_video(frames, folder / f"{index:03d}.mp4", fps=16)
            scores.append(score_clip(frames, scene, truth))
        per_clip = None if runner is None else round(sum(seconds) / config.num_samples, 3)
        record = {
            "settings": settings,
            "dit_seconds_per_clip": per_clip,
            "scores": [s.to_dict() for s in scores],
        }
        atomic_write_json(path, record)
        done.append(dataclasses.replace(row, scores=scores, dit_seconds_per_clip=per_clip))
    return done


def toy_eval(pipe, config: ToyEvalConfig) -> dict[str, list[ClipScores]]:
    """Per-sample scores of every row (a variant; with a sweep, ``<variant> <sampler> <steps>``)."""
    return {row.label: row.scores for row in toy_eval_rows(pipe, config)}


def format_table(results: dict[str, list[ClipScores]], costs: dict[str, EvalRow] | None = None) -> str:
    """A markdown table: one row per variant, mean +- standard error of each score over samples.

    With ``costs`` (a sweep's rows by label), two more columns: the DiT forwards and their seconds per clip.
    """
    arrows = {name: "↑" if higher else "↓" for name, higher in METRICS.items()}
    cost_names = ["DiT forwards/clip", "DiT s/clip"] if costs else []
    header = (
        "| variant | " + " | ".join([*(f"{name} {arrows[name]}" for name in METRICS), *cost_names]) + " |"
    )
    lines = [header, "|" + "---|" * (len(METRICS) + 1 + len(cost_names))]
    for variant, scores in results.items():
        cells = []
        for name in METRICS:
            values = np.array([getattr(s, name) for s in scores])
            error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.3f} ± {error:.3f}")
        if costs:
            row = costs[variant]
            cells.append("-" if row.dit_forwards is None else str(row.dit_forwards))
            cells.append("-" if row.dit_seconds_per_clip is None else f"{row.dit_seconds_per_clip:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@interrupt_message(
    lambda config: f"finished variants are saved in {config.out}; run the same command again to resume"
)
def run_toy_eval(config: ToyEvalConfig) -> dict[str, dict[str, float]]:
    from bindweave.pipeline import BindWeavePipeline

    config.validate()
    if not (config.model / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {config.model}: no model_index.json (not a saved pipeline folder)")
    ensure_writable_dir(config.out / "table.md")
    pipe = BindWeavePipeline.from_pretrained(config.model, dtype=torch.float32)
    rows = toy_eval_rows(pipe, config)
    results = {row.label: row.scores for row in rows}
    table = format_table(results, {row.label: row for row in rows} if config.is_sweep else None)
    atomic_write_text(config.out / "table.md", table)
    summary = {row.label: mean_scores(row.scores) for row in rows}
    costs = {
        row.label: {
            "guidance_scale": row.guidance_scale,
            "dit_forwards": row.dit_forwards,
            "dit_seconds_per_clip": row.dit_seconds_per_clip,
        }
        for row in rows
    }
    record = {"config": to_dict(with_model_guidance(config, pipe)), "means": summary, "costs": costs}
    atomic_write_json(config.out / "results.json", record)
    print(table)
    print(f"results: {(config.out / 'results.json').resolve()}")
    return summary
