"""``bindweave eval score``: score a folder of generated videos with OpenS2V-Eval.

For every case of the manifest, ``<videos_dir>/<id>.mp4`` is scored with each requested metric and the
raw values are kept in ``<output_dir>/per_video/<id>.json`` (written atomically after every metric, so
a killed run resumes where it stopped: a metric already stored for a video is not recomputed, unless
the video file changed since). Then the metrics are normalised and weighted (:mod:`bindweave.eval.scores`)
overall and per category (the id prefix: ``singleface``, ``singleobj``, ``multihuman``, ...), printed as a
table and written as ``summary.json`` and ``summary.md``.

Metrics whose model is not configured (no ``models_dir``, no judge endpoint) are reported *missing*, never
0, and the TotalScore says which terms it includes. A metric whose model folder is configured but lacks a
file fails up front, naming the file and where to get it.

The metrics' model files and how each scorer is built: :mod:`bindweave.eval.builders`; the summary:
:mod:`bindweave.eval.summary`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bindweave.eval.builders import MetricUnavailable, ScorerBuilders, preflight
from bindweave.eval.score_config import EvalScoreConfig
from bindweave.eval.scorers.base import Scored, SkipVideo, VideoSample, category_of
from bindweave.eval.scores import DISPLAY_NAMES, METRICS
from bindweave.eval.summary import format_table, markdown, summarize
from bindweave.io.files import (
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temporaries,
)
from bindweave.io.manifest import ManifestEntry, load_manifest

log = logging.getLogger(__name__)

__all__ = ["EvalScoreConfig", "MetricUnavailable", "format_table", "preflight", "run_score"]

PER_VIDEO_DIR = "per_video"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
RECORD_VERSION = 1


# ---------------------------------------------------------------------------------------------- records


def _video_stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _new_record(sample: VideoSample) -> dict[str, Any]:
    return {
        "version": RECORD_VERSION,
        "id": sample.id,
        "category": sample.category,
        "video": str(sample.video_path),
        "video_stamp": _video_stamp(sample.video_path),
        "scores": {},
        "details": {},
        "not_applicable": [],
        "skipped": {},
    }


def _load_record(path: Path, sample: VideoSample) -> dict[str, Any]:
    """The stored record of a video, or a fresh one if there is none or the video changed since."""
    if not path.is_file():
        return _new_record(sample)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt per-video record {path}: {exc}; delete it to re-score that video") from exc
    if record.get("id") != sample.id or not isinstance(record.get("scores"), dict):
        raise ValueError(f"per-video record {path} does not belong to case {sample.id!r}; delete it")
    if record.get("video_stamp") != _video_stamp(sample.video_path):
        log.warning("%s changed since it was scored: scoring it again", sample.video_path)
        return _new_record(sample)
    record.setdefault("details", {})
    record.setdefault("not_applicable", [])
    record.setdefault("skipped", {})
    return record


def _sample_for(entry: ManifestEntry, video: Path, images_dir: Path) -> VideoSample:
    return VideoSample(
        id=entry.id,
        video_path=video,
        prompt=entry.prompt,
        reference_paths=[images_dir / p for p in entry.img_paths],
        class_labels=list(entry.class_label),
        category=category_of(entry.id),
    )


# ------------------------------------------------------------------------------------------------- run


def run_score(
    config: EvalScoreConfig, scorers: Mapping[str, Callable[[VideoSample], float | Scored]] | None = None
) -> dict[str, Any]:
    """Score every video of the manifest; returns the summary (also written to ``output_dir``).

    ``scorers`` overrides the scorer of a metric (tests, or models loaded by the caller); the other
    requested metrics are built from the config.
    """
    entries = load_manifest(config.manifest)
    preflight(dataclasses.replace(config, metrics=[m for m in config.metrics if m not in (scorers or {})]))
    images_dir = config.images_dir or config.manifest.parent
    if not config.videos_dir.is_dir():
        raise FileNotFoundError(f"videos_dir {config.videos_dir} is not a folder")
    per_video_dir = config.output_dir / PER_VIDEO_DIR
    ensure_writable_dir(per_video_dir / "probe.json")  # created by the first record written
    for folder in (config.output_dir, per_video_dir):
        remove_stale_temporaries(folder)

    samples: list[VideoSample] = []
    missing_videos: list[str] = []
    for entry in entries.values():
        video = config.videos_dir / f"{entry.id}.mp4"
        if video.is_file():
            samples.append(_sample_for(entry, video, images_dir))
        else:
            missing_videos.append(entry.id)
    if missing_videos:
        log.warning(
            "%d of %d cases have no video in %s (e.g. %s)",
            len(missing_videos),
            len(entries),
            config.videos_dir,
            missing_videos[0],
        )
    records = {s.id: _load_record(per_video_dir / f"{s.id}.json", s) for s in samples}

    builders = ScorerBuilders(config)
    unavailable: dict[str, str] = {}
    overrides = dict(scorers or {})
    for metric in [m for m in METRICS if m in config.metrics]:  # gme and nexus adjacent: one GME load
        todo = [
            s
            for s in samples
            if metric not in records[s.id]["scores"]
            and metric not in records[s.id]["not_applicable"]
            and metric not in records[s.id]["skipped"]
        ]
        if not todo:
            continue
        try:
            scorer = overrides[metric] if metric in overrides else builders.build(metric)
        except MetricUnavailable as exc:
            unavailable[metric] = str(exc).split(": ", 1)[-1]
            log.warning("%s: reported missing", exc)
            continue
        applies = getattr(scorer, "applies_to", None)
        for sample in tqdm(todo, desc=DISPLAY_NAMES[metric], unit="video"):
            record = records[sample.id]
            try:
                if applies is not None and not applies(sample):
                    record["not_applicable"].append(metric)
                else:
                    result = scorer(sample)
                    if isinstance(result, Scored):
                        record["scores"][metric] = float(result.value)
                        record["details"][metric] = result.details
                    else:
                        record["scores"][metric] = float(result)
            except SkipVideo as exc:  # left out of this metric, as the benchmark does; counted in the summary
                record["skipped"][metric] = str(exc)
                log.warning("%s: %s skipped: %s", sample.id, DISPLAY_NAMES[metric], exc)
            finally:
                sample.release()
            atomic_write_json(per_video_dir / f"{sample.id}.json", record)
        del scorer
        if metric == "nexus" or (metric == "gme" and "nexus" not in config.metrics):
            builders.release_gme()  # free the 7B embedder once nothing else needs it
        gc.collect()

    summary = summarize(config, [records[s.id] for s in samples], unavailable, missing_videos)
    summary["config"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
    }
    atomic_write_json(config.output_dir / SUMMARY_JSON, summary)
    atomic_write_text(config.output_dir / SUMMARY_MD, markdown(summary))
    print(format_table(summary))
    return summary
