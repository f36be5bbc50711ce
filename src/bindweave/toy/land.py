"""``bindweave toy land``: ship a training run's newest checkpoint if it beats the shipped toy model.

The end of each part of the long run (``make toy-land``): the newest checkpoint is exported
(:mod:`.export`), both it and the shipped model are scored on the same held-out toy scenes
(:mod:`.evaluate`, ``trained`` variant, the same noise per sample), and the candidate replaces the shipped
folder only if it is better on **fidelity and direction accuracy, each by more than the standard error of
the paired per-sample difference**. So an improvement is never lost, and noise never ships. The decision
and both score sets are written to ``<out>/land.json``.

With several ``--guidance-scales``, the candidate is first scored at each on another world's held-out scenes
(``--selection-seed``), and the best (the largest fidelity + direction accuracy) is saved in its
``model_index.json`` as ``default_guidance_scale``: the comparison then uses scenes the choice never saw.
The shipped model is scored at its own saved scale. Both models' exports and scores are named by a digest of
their files, so a rerun reuses them only while those are unchanged (the checkpoint's name is not enough:
every anneal of ``make toy-long-land`` ends in another ``checkpoint-000400``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bindweave.config import field
from bindweave.io.files import atomic_folder, atomic_write_json

__all__ = ["LANDING_METRICS", "ToyLandConfig", "compare", "folder_digest", "run_toy_land"]

LANDING_METRICS = ("fidelity", "direction_accuracy")
MAX_SHIPPED_BYTES = 20 * 2**20  # the package's model folder stays small


@dataclass
class ToyLandConfig:
    train_dir: Path = field(
        help="a training output_dir (its newest checkpoint is the candidate)", positional=True
    )
    out: Path = field(
        Path("runs/toy-long/land"), help="work folder: the exported candidate, the scores, land.json"
    )
    shipped: Path | None = field(
        None, help="the shipped model folder to beat and replace (default: the package's)"
    )
    num_samples: int = field(16, help="held-out samples scored for each model")
    steps: int = field(15, help="sampling steps of each sample")
    guidance_scales: list[float] = field(
        default_factory=lambda: [1.0],
        help="guidance scales to choose the candidate's saved default from (the best on --selection-seed)",
    )
    selection_seed: int = field(1, help="world seed of the scenes the guidance scale is chosen on")
    replace: bool = field(
        True, help="replace the shipped folder when the candidate wins (--no-replace: only report)"
    )

    def validate(self) -> None:
        from bindweave.generate_config import check_guidance

        if self.num_samples < 2:
            raise ValueError(f"--num-samples: need >= 2 for a standard error, got {self.num_samples}")
        if not self.guidance_scales:
            raise ValueError("--guidance-scales: give at least one scale")
        for scale in self.guidance_scales:
            check_guidance(scale, "--guidance-scales")


def compare(
    candidate: list[dict[str, float]], shipped: list[dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per metric of :data:`LANDING_METRICS`: the mean paired difference (candidate - shipped), its standard
    error and whether the difference exceeds it. Both lists score the same samples, in order."""
    if len(candidate) != len(shipped) or len(candidate) < 2:
        raise ValueError(
            f"need the same >= 2 samples for both models, got {len(candidate)} and {len(shipped)}"
        )
    result = {}
    for metric in LANDING_METRICS:
        diffs = [c[metric] - s[metric] for c, s in zip(candidate, shipped, strict=True)]
        mean = sum(diffs) / len(diffs)
        variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
        error = math.sqrt(variance / len(diffs))
        result[metric] = {"difference": mean, "standard_error": error, "better": mean > error}
    return result


def run_toy_land(config: ToyLandConfig) -> dict[str, Any]:
    from bindweave.default_model import default_model_path
    from bindweave.training.checkpoint import find_latest_checkpoint

    from .export import export_pipeline

    config.validate()
    shipped = config.shipped or default_model_path()
    checkpoint = find_latest_checkpoint(config.train_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{config.train_dir}: no checkpoint-* folder to land")
    # Keyed by the checkpoint's files, not its name: each part's anneal writes another checkpoint-000400,
    # and a rerun must never export or score the previous one's.
    tag = f"{checkpoint.name}-{folder_digest(checkpoint)[:12]}"
    candidate = config.out / tag
    if not (candidate / "model_index.json").is_file():
        export_pipeline(checkpoint, candidate)
    selection = _choose_guidance(candidate, tag, config)
    scores = {
        "candidate": _scores(candidate, config, config.out / f"eval-{tag}"),
        # keyed by the shipped files, so scores of a model since replaced are never reused
        "shipped": _scores(shipped, config, config.out / f"eval-shipped-{folder_digest(shipped)[:12]}"),
    }
    verdict = compare(scores["candidate"], scores["shipped"])
    wins = all(v["better"] for v in verdict.values())
    size = sum(f.stat().st_size for f in candidate.rglob("*") if f.is_file())
    landed = wins and config.replace and size <= MAX_SHIPPED_BYTES
    if landed:
        with atomic_folder(shipped, replace=True) as staged:
            shutil.copytree(candidate, staged)
    record = {
        "checkpoint": str(checkpoint),
        "candidate": str(candidate),
        "shipped": str(shipped),
        "num_samples": config.num_samples,
        "steps": config.steps,
        "guidance_selection": selection,
        "comparison": verdict,
        "candidate_bytes": size,
        "landed": landed,
        "means": {name: _means(rows) for name, rows in scores.items()},
    }
    atomic_write_json(config.out / "land.json", record)
    print(_summary(record, wins, size))
    return record


def folder_digest(folder: Path) -> str:
    """SHA-256 of every file's relative path and bytes under ``folder`` (a pipeline folder or a toy
    checkpoint: a few MB)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _choose_guidance(candidate: Path, tag: str, config: ToyLandConfig) -> dict[str, Any]:
    """Score ``candidate`` (its score folders named by ``tag``) at each of ``config.guidance_scales`` on the
    selection world and save the best (fidelity + direction accuracy, summed means; the first on a tie) as
    its ``default_guidance_scale``; a single scale is saved without scoring."""
    scales, means = config.guidance_scales, {}
    if len(scales) > 1:
        for scale in scales:
            out = config.out / f"eval-{tag}-guidance-{scale:g}-world-{config.selection_seed}"
            rows = _scores(candidate, config, out, guidance_scale=scale, world_seed=config.selection_seed)
            means[scale] = _means(rows)
    best = max(scales, key=lambda g: sum(means[g][m] for m in LANDING_METRICS)) if means else scales[0]
    index_path = candidate / "model_index.json"
    index = json.loads(index_path.read_text())
    index["default_guidance_scale"] = best
    atomic_write_json(index_path, index)
    return {
        "world_seed": config.selection_seed,
        "chosen": best,
        "means": {str(g): m for g, m in means.items()},
    }


def _scores(
    model: Path,
    config: ToyLandConfig,
    out: Path,
    guidance_scale: float | None = None,
    world_seed: int = 0,
) -> list[dict[str, float]]:
    """Per-sample ``trained`` scores of ``model`` (``toy-eval`` reuses them when rerun with the same settings);
    ``guidance_scale`` None is the model's own."""
    from .config import ToyEvalConfig
    from .evaluate import run_toy_eval

    run_toy_eval(
        ToyEvalConfig(
            model=model,
            variants=["trained"],
            num_samples=config.num_samples,
            steps=[config.steps],
            guidance_scale=guidance_scale,
            world_seed=world_seed,
            out=out,
        )
    )
    return json.loads((out / "trained.json").read_text())["scores"]


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}


def _summary(record: dict[str, Any], wins: bool, size: int) -> str:
    lines = [f"candidate {record['checkpoint']} vs shipped {record['shipped']}:"]
    selection = record["guidance_selection"]
    if len(selection["means"]) > 1:
        lines.append(f"  guidance scale {selection['chosen']:g} (best on world {selection['world_seed']})")
    for metric, v in record["comparison"].items():
        lines.append(
            f"  {metric}: {v['difference']:+.3f} +- {v['standard_error']:.3f} ({'better' if v['better'] else 'not better'})"
        )
    if record["landed"]:
        lines.append(f"landed: {record['shipped']} is now the candidate ({size / 2**20:.1f} MiB)")
    elif wins and size > MAX_SHIPPED_BYTES:
        lines.append(
            f"not landed: better, but {size / 2**20:.1f} MiB is over the {MAX_SHIPPED_BYTES // 2**20} MiB limit"
        )
    else:
        lines.append("not landed" + ("" if wins else ": not better on both metrics beyond a standard error"))
    return "\n".join(lines)
