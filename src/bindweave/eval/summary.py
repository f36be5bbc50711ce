"""The ``eval score`` summary: aggregation per category, the printed table and ``summary.md``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bindweave.eval.score_config import EvalScoreConfig
from bindweave.eval.scorers.natural import PARAPHRASED_PROMPT
from bindweave.eval.scores import DISPLAY_NAMES, Aggregate, aggregate, weights_for

__all__ = ["NATURAL_PARAPHRASE_NOTE", "format_table", "markdown", "summarize"]

NATURAL_PARAPHRASE_NOTE = (
    "paraphrased prompt: not comparable to the leaderboard "
    "(give --judge-prompt <OpenS2V-Nexus>/eval/get_naturalscore.py for the benchmark's own)"
)


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
    for metric, skipped in summary.get("skipped", {}).items():
        reasons = "; ".join(f"{reason}: {n}" for reason, n in skipped["reasons"].items())
        notes.append(
            f"{DISPLAY_NAMES[metric]}: {skipped['count']} video(s) skipped, as the benchmark does ({reasons})"
        )
    if summary.get("natural_prompt") == PARAPHRASED_PROMPT:
        notes.append(f"{DISPLAY_NAMES['natural']}: {NATURAL_PARAPHRASE_NOTE}")
    if summary["missing_videos"]:
        notes.append(f"{len(summary['missing_videos'])} case(s) have no video and are not scored")
    sep = "\n\n" if markdown else "\n"
    return "\n".join(lines) + (sep + sep.join(notes) if notes else "")


def summarize(
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

    skipped: dict[str, dict[str, Any]] = {}
    for record in records:
        for metric, reason in record.get("skipped", {}).items():
            entry = skipped.setdefault(metric, {"count": 0, "reasons": {}, "videos": {}})
            entry["count"] += 1
            kind = reason.split(":", 1)[0]  # the reason without the file or error it names
            entry["reasons"][kind] = entry["reasons"].get(kind, 0) + 1
            entry["videos"][record["id"]] = reason
    prompts = {
        r["details"]["natural"].get("judge_prompt")
        for r in records
        if "natural" in r["scores"] and "natural" in r.get("details", {})
    }
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
        "skipped": skipped,
        # "paraphrase" when any NaturalScore used our paraphrase of the judge prompt: not comparable.
        "natural_prompt": (
            PARAPHRASED_PROMPT if PARAPHRASED_PROMPT in prompts else "; ".join(sorted(map(str, prompts)))
        )
        or None,
        "overall": agg(records).to_dict(),
        "categories": {name: agg(subset).to_dict() for name, subset in categories.items()},
    }


def markdown(summary: Mapping[str, Any]) -> str:
    weights = weights_for(summary["domain"], summary["weights_version"])
    weight_text = " + ".join(f"{w:.2f} {DISPLAY_NAMES[m]}" for m, w in weights.items())
    return (
        f"# OpenS2V-Eval scores ({summary['domain']}, weights {summary['weights_version']})\n\n"
        f"Manifest: `{summary['manifest']}`; videos: `{summary['videos_dir']}`; "
        f"{summary['num_videos']} video(s) scored.\n\n"
        f"TotalScore = {weight_text}. Scores in percent.\n\n" + format_table(summary, markdown=True) + "\n"
    )
