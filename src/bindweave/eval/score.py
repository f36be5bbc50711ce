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

Expected layout of ``models_dir`` (public names in brackets)::

    clip-vit-large-patch14/            [openai/clip-vit-large-patch14]            aesthetic
    aesthetic-model.pth                [BestWishYsh/OpenS2V-Weight]               aesthetic
    one-align/                         [q-future/one-align]                       motion_smoothness
    face_extractor/                    [BestWishYsh/OpenS2V-Weight]               facesim_cur
    glint360k_curricular_face_r101_backbone.bin  [BestWishYsh/OpenS2V-Weight]     facesim_cur
    gme-Qwen2-VL-7B-Instruct/          [Alibaba-NLP/gme-Qwen2-VL-7B-Instruct]     gme, nexus
    clip-vit-base-patch32/             [openai/clip-vit-base-patch32]             nexus
    yolo_world_v2_l_image_prompt_adapter-719a7afb.pth  [BestWishYsh/OpenS2V-Weight]  nexus
    yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_image_prompt_demo.py  [YOLO-World configs]  nexus
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bindweave.eval.score_config import EvalScoreConfig
from bindweave.eval.scorers.base import Scored, VideoSample, category_of
from bindweave.eval.scores import DISPLAY_NAMES, METRICS, Aggregate, aggregate, weights_for
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

# File names under models_dir.
AESTHETIC_CLIP = "clip-vit-large-patch14"
AESTHETIC_MLP = "aesthetic-model.pth"
QALIGN_DIR = "one-align"
FACE_DETECTOR_DIR = "face_extractor"
CURRICULARFACE_FILE = "glint360k_curricular_face_r101_backbone.bin"
GME_DIR = "gme-Qwen2-VL-7B-Instruct"
YOLO_CLIP_DIR = "clip-vit-base-patch32"
YOLO_WEIGHTS = "yolo_world_v2_l_image_prompt_adapter-719a7afb.pth"
YOLO_CONFIG = "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_image_prompt_demo.py"


class MetricUnavailable(Exception):
    """A metric cannot be computed in this run (not configured); it is reported missing, not failed."""


# --------------------------------------------------------------------------------------------- builders


def _device(config: EvalScoreConfig) -> str:
    if config.device:
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _models_dir(config: EvalScoreConfig, metric: str) -> Path:
    if config.models_dir is None:
        raise MetricUnavailable(f"{metric}: no models_dir given")
    if not config.models_dir.is_dir():
        raise FileNotFoundError(f"models_dir {config.models_dir} is not a folder")
    return config.models_dir


def _required_files(metric: str, root: Path) -> list[tuple[Path, str]]:
    """The files a metric needs under ``models_dir`` (checked for all metrics before any scoring)."""
    from bindweave.eval.scorers.aesthetic import CLIP_SOURCE, MLP_SOURCE
    from bindweave.eval.scorers.curricularface import CURRICULARFACE_SOURCE
    from bindweave.eval.scorers.facesim import INSIGHTFACE_SOURCE
    from bindweave.eval.scorers.gme import GME_SOURCE
    from bindweave.eval.scorers.nexus import YOLO_CLIP_SOURCE, YOLO_CONFIG_SOURCE, YOLO_WORLD_SOURCE
    from bindweave.eval.scorers.smoothness import QALIGN_SOURCE

    table = {
        "aesthetic": [(AESTHETIC_CLIP, CLIP_SOURCE), (AESTHETIC_MLP, MLP_SOURCE)],
        "motion_smoothness": [(QALIGN_DIR, QALIGN_SOURCE)],
        "facesim_cur": [
            (FACE_DETECTOR_DIR, INSIGHTFACE_SOURCE),
            (CURRICULARFACE_FILE, CURRICULARFACE_SOURCE),
        ],
        "gme": [(GME_DIR, GME_SOURCE)],
        "nexus": [
            (GME_DIR, GME_SOURCE),
            (YOLO_CLIP_DIR, YOLO_CLIP_SOURCE),
            (YOLO_WEIGHTS, YOLO_WORLD_SOURCE),
            (YOLO_CONFIG, YOLO_CONFIG_SOURCE),
        ],
    }
    return [(root / rel, source) for rel, source in table.get(metric, [])]


def preflight(config: EvalScoreConfig) -> None:
    """Fail before any scoring if a configured metric's model files are absent (all named at once)."""
    if config.models_dir is None:
        return
    from bindweave.eval.scorers.base import MissingModelFileError

    problems = []
    for metric in config.metrics:
        missing = [(p, s) for p, s in _required_files(metric, config.models_dir) if not p.exists()]
        if missing:
            problems.append(f"{metric}: " + "; ".join(f"{p} (from {s})" for p, s in missing))
    if problems:
        raise MissingModelFileError("missing model file(s) under models_dir:\n  " + "\n  ".join(problems))


class _Builders:
    """Builds each metric's scorer from the config; shares the GME model between GmeScore and Nexus."""

    def __init__(self, config: EvalScoreConfig) -> None:
        self.config = config
        self._gme = None

    def gme_model(self):
        if self._gme is None:
            from bindweave.eval.scorers.gme import GmeQwen2VLEmbedder

            self._gme = GmeQwen2VLEmbedder(
                _models_dir(self.config, "gme") / GME_DIR, device=_device(self.config)
            )
        return self._gme

    def release_gme(self) -> None:
        self._gme = None

    def build(self, metric: str):
        c = self.config
        if metric == "motion_amplitude":
            from bindweave.eval.motion import MotionAmplitudeScorer

            return MotionAmplitudeScorer()
        if metric == "natural":
            if not c.judge_endpoint:
                raise MetricUnavailable("natural: no judge_endpoint given")
            from bindweave.eval.chat import ChatClient
            from bindweave.eval.scorers.natural import JUDGE_PROMPT, NaturalScorer

            prompt = JUDGE_PROMPT
            if c.judge_prompt_file is not None:
                prompt = c.judge_prompt_file.read_text(encoding="utf-8").strip()
                if not prompt:
                    raise ValueError(f"judge_prompt_file {c.judge_prompt_file} is empty")
            client = ChatClient(
                c.judge_endpoint,
                c.judge_model,
                c.judge_api_key_env,
                timeout=c.judge_timeout,
                retries=c.judge_retries,
            )
            return NaturalScorer(client, runs=c.judge_runs, num_frames=c.judge_frames, prompt=prompt)
        root = _models_dir(c, metric)
        device = _device(c)
        if metric == "aesthetic":
            from bindweave.eval.scorers.aesthetic import load_aesthetic_scorer

            return load_aesthetic_scorer(root / AESTHETIC_CLIP, root / AESTHETIC_MLP, device, c.num_frames)
        if metric == "motion_smoothness":
            from bindweave.eval.scorers.smoothness import MotionSmoothnessScorer, QAlignQualityModel

            return MotionSmoothnessScorer(QAlignQualityModel(root / QALIGN_DIR, device=device))
        if metric == "facesim_cur":
            from bindweave.eval.scorers.base import require_files
            from bindweave.eval.scorers.curricularface import CURRICULARFACE_SOURCE, load_curricularface
            from bindweave.eval.scorers.facesim import INSIGHTFACE_SOURCE, FaceSimScorer, InsightFaceDetector

            require_files(
                "facesim_cur",
                [
                    (root / FACE_DETECTOR_DIR, INSIGHTFACE_SOURCE),
                    (root / CURRICULARFACE_FILE, CURRICULARFACE_SOURCE),
                ],
            )
            return FaceSimScorer(
                InsightFaceDetector(root / FACE_DETECTOR_DIR),
                load_curricularface(root / CURRICULARFACE_FILE),
                num_frames=c.num_frames,
                device=device,
            )
        if metric == "gme":
            from bindweave.eval.scorers.gme import GmeScorer

            return GmeScorer(self.gme_model(), num_frames=c.num_frames)
        if metric == "nexus":
            from bindweave.eval.scorers.nexus import NexusScorer, YoloWorldImagePromptDetector

            detector = YoloWorldImagePromptDetector(
                root / YOLO_CONFIG, root / YOLO_WEIGHTS, root / YOLO_CLIP_DIR, device=device
            )
            return NexusScorer(detector, self.gme_model(), num_frames=c.num_frames)
        raise KeyError(metric)


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


# ---------------------------------------------------------------------------------------------- summary


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _aggregate_rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = [(name, agg) for name, agg in summary["categories"].items()]
    rows.append(("overall", summary["overall"]))
    return rows


def format_table(summary: Mapping[str, Any], markdown: bool = False) -> str:
    """The summary as a table: one row per category plus ``overall``, scores in percent.

    ``—`` = not measured / not applicable; a total marked ``*`` is partial (a weighted term is missing).
    """
    metrics = summary["metrics"]
    header = ["category", "videos", "TotalScore"] + [DISPLAY_NAMES[m] for m in metrics]
    body = []
    for name, agg in _aggregate_rows(summary):
        total = agg["total"]
        mark = "*" if total["partial"] else ""
        body.append(
            [name, str(agg["num_videos"]), _fmt(total["value"]) + mark]
            + [_fmt(agg["normalized"][m]) for m in metrics]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = [
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in [header, *body]
        ]
    notes = []
    overall = summary["overall"]["total"]
    if overall["missing"]:
        notes.append(
            "* partial TotalScore over "
            + ", ".join(overall["included"])
            + "; missing: "
            + ", ".join(overall["missing"])
            + " (renormalised weights; not comparable with the leaderboard)"
        )
    for metric, reason in summary["unavailable_metrics"].items():
        notes.append(f"{metric}: not computed ({reason})")
    if summary["missing_videos"]:
        notes.append(f"{len(summary['missing_videos'])} case(s) have no video and are not scored")
    sep = "\n\n" if markdown else "\n"
    return "\n".join(lines) + (sep + sep.join(notes) if notes else "")


def _summarize(
    config: EvalScoreConfig,
    records: Sequence[Mapping[str, Any]],
    unavailable: Mapping[str, str],
    missing_videos: Sequence[str],
) -> dict[str, Any]:
    metrics = list(config.metrics)

    def agg(subset: Sequence[Mapping[str, Any]]) -> Aggregate:
        return aggregate(
            [r["scores"] for r in subset],
            config.domain,
            config.weights_version,
            metrics=metrics,
            not_applicable=[r["not_applicable"] for r in subset],
        )

    categories: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        categories.setdefault(record["category"], []).append(record)
    return {
        "domain": config.domain,
        "weights_version": config.weights_version,
        "manifest": str(config.manifest),
        "videos_dir": str(config.videos_dir),
        "metrics": metrics,
        "num_videos": len(records),
        "missing_videos": list(missing_videos),
        "unavailable_metrics": dict(unavailable),
        "overall": agg(records).to_dict(),
        "categories": {name: agg(subset).to_dict() for name, subset in categories.items()},
    }


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

    builders = _Builders(config)
    unavailable: dict[str, str] = {}
    overrides = dict(scorers or {})
    for metric in [m for m in METRICS if m in config.metrics]:  # gme and nexus adjacent: one GME load
        todo = [
            s
            for s in samples
            if metric not in records[s.id]["scores"] and metric not in records[s.id]["not_applicable"]
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
            finally:
                sample.release()
            atomic_write_json(per_video_dir / f"{sample.id}.json", record)
        del scorer
        if metric == "nexus" or (metric == "gme" and "nexus" not in config.metrics):
            builders.release_gme()  # free the 7B embedder once nothing else needs it
        gc.collect()

    summary = _summarize(config, [records[s.id] for s in samples], unavailable, missing_videos)
    summary["config"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
    }
    atomic_write_json(config.output_dir / SUMMARY_JSON, summary)
    atomic_write_text(config.output_dir / SUMMARY_MD, _markdown(summary))
    print(format_table(summary))
    return summary


def _markdown(summary: Mapping[str, Any]) -> str:
    weights = weights_for(summary["domain"], summary["weights_version"])
    weight_text = " + ".join(f"{w:.2f} {DISPLAY_NAMES[m]}" for m, w in weights.items())
    return (
        f"# OpenS2V-Eval scores ({summary['domain']}, weights {summary['weights_version']})\n\n"
        f"Manifest: `{summary['manifest']}`; videos: `{summary['videos_dir']}`; "
        f"{summary['num_videos']} video(s) scored.\n\n"
        f"TotalScore = {weight_text}. Scores in percent.\n\n" + format_table(summary, markdown=True) + "\n"
    )
