"""OpenS2V-Eval aggregation: per-metric normalisation and the weighted TotalScore (spec section 7).

Per-video raw scores are normalised over all videos of a manifest (or of one category) exactly as the
released ``eval/merge_result.py`` of OpenS2V-Nexus does, with one deliberate difference: a metric that
was not measured for any video is reported as *missing* (``None``), never as 0. The released script
silently turns a missing metric into 0 (and the Aesthetic term into -4/3), which makes a partial run
look like a bad model.

A TotalScore over a partial set of metrics is computed over the *included* terms only, with the
weights of those terms renormalised to sum to 1 (so the value stays a weighted mean in [0, 1]), and it
is flagged ``partial`` with the list of missing terms. A partial total is NOT comparable with the
leaderboard; it is useful to compare runs that miss the same terms. ``weight_covered`` says how much of
the full weight the included terms carry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: Metric keys, in the leaderboard's column order.
METRICS: tuple[str, ...] = (
    "aesthetic",
    "motion_smoothness",
    "motion_amplitude",
    "facesim_cur",
    "gme",
    "nexus",
    "natural",
)

#: Leaderboard column names.
DISPLAY_NAMES: dict[str, str] = {
    "aesthetic": "Aesthetics",
    "motion_smoothness": "MotionSmoothness",
    "motion_amplitude": "MotionAmplitude",
    "facesim_cur": "FaceSim",
    "gme": "GmeScore",
    "nexus": "NexusScore",
    "natural": "NaturalScore",
}

Domain = Literal["Open-Domain", "Human-Domain", "Single-Domain"]
WeightsVersion = Literal["v1.1", "v1.0"]
DOMAINS: tuple[str, ...] = ("Open-Domain", "Human-Domain", "Single-Domain")

# TotalScore weights.
# Source: PKU-YuanGroup/OpenS2V-Nexus, ``eval/merge_result.py`` (v1.1; every eval type other than
# "Human-Domain" uses the first table) and ``eval/v1.0_backup/merge_result.py`` (v1.0). Checked against
# published leaderboard rows in ``leaderboard/file_v1.1/results_*.csv`` and
# ``leaderboard/file_v1.0/results_*.csv`` of the same repository (see tests/eval/test_scores.py).
# In v1.0 the single "Motion" column is a Farneback motion score, weighted here as our
# ``motion_amplitude``; v1.0 had no MotionSmoothness. The v1.0 "Motion" and v1.1 "MotionAmplitude"
# leaderboard columns agree for Open-Domain only (Single-Domain: 9 of 11 rows differ; Human-Domain: 10
# of 19), so a v1.0 total over Single/Human-Domain cases is not the published v1.0 figure.
_OPEN_V11 = {
    "aesthetic": 0.16,
    "motion_smoothness": 0.06,
    "motion_amplitude": 0.02,
    "facesim_cur": 0.20,
    "gme": 0.12,
    "nexus": 0.20,
    "natural": 0.24,
}
_HUMAN_V11 = {
    "aesthetic": 0.18,
    "motion_smoothness": 0.09,
    "motion_amplitude": 0.03,
    "facesim_cur": 0.25,
    "gme": 0.15,
    "natural": 0.30,
}
_OPEN_V10 = {
    "aesthetic": 0.12,
    "motion_amplitude": 0.12,
    "facesim_cur": 0.20,
    "gme": 0.12,
    "nexus": 0.20,
    "natural": 0.24,
}
_HUMAN_V10 = {
    "aesthetic": 0.15,
    "motion_amplitude": 0.15,
    "facesim_cur": 0.25,
    "gme": 0.15,
    "natural": 0.30,
}
WEIGHTS: dict[tuple[str, str], dict[str, float]] = {
    ("v1.1", "Open-Domain"): _OPEN_V11,
    ("v1.1", "Single-Domain"): _OPEN_V11,
    ("v1.1", "Human-Domain"): _HUMAN_V11,
    ("v1.0", "Open-Domain"): _OPEN_V10,
    ("v1.0", "Single-Domain"): _OPEN_V10,
    ("v1.0", "Human-Domain"): _HUMAN_V10,
}

# Normalisation constants of the released merge script.
AESTHETIC_RANGE = (4.0, 7.0)
NATURAL_RANGE = (1.0, 5.0)
NEXUS_CAP = 0.05


def weights_for(domain: str = "Open-Domain", version: str = "v1.1") -> dict[str, float]:
    """The TotalScore weights of an OpenS2V-Eval domain and benchmark version."""
    try:
        return dict(WEIGHTS[(version, domain)])
    except KeyError:
        known = ", ".join(f"{v}/{d}" for v, d in WEIGHTS)
        raise KeyError(f"no TotalScore weights for {version}/{domain}; known: {known}") from None


def _finite(values: Iterable[float | None]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"non-finite per-video score {v!r}")
        out.append(v)
    return out


def _clip(x: float, lo: float, hi: float) -> float:
    return max(lo, min(x, hi))


def normalize_metric(metric: str, values: Iterable[float | None]) -> float | None:
    """Aggregate the raw per-video values of one metric into its normalised score in [0, 1].

    ``None`` entries (video not scored for this metric) are ignored; if no video has a value the result is
    ``None`` (missing). Rules (spec section 7, as in the released merge script):

    * aesthetic: each video clipped to [4, 7], mean ``m``, then ``(m - 4) / 3``;
    * motion_amplitude, motion_smoothness: ``min(|x|, 1)`` per video, then the mean;
    * facesim_cur, gme: ``min(x, 1)`` per video, then the mean;
    * natural: each video clipped to [1, 5], mean ``m``, then ``(m - 1) / 4``;
    * nexus: videos scoring exactly 0 are left out, the others ``min(x, 0.05)``, mean, then ``/ 0.05``.
      If every scored video is exactly 0 the score is 0 (measured, as in the released script), not missing.
    """
    vals = _finite(values)
    if not vals:
        return None
    if metric == "aesthetic":
        lo, hi = AESTHETIC_RANGE
        m = sum(_clip(v, lo, hi) for v in vals) / len(vals)
        return (m - lo) / (hi - lo)
    if metric in ("motion_amplitude", "motion_smoothness"):
        return sum(min(abs(v), 1.0) for v in vals) / len(vals)
    if metric in ("facesim_cur", "gme"):
        return sum(min(v, 1.0) for v in vals) / len(vals)
    if metric == "natural":
        lo, hi = NATURAL_RANGE
        m = sum(_clip(v, lo, hi) for v in vals) / len(vals)
        return (m - lo) / (hi - lo)
    if metric == "nexus":
        kept = [min(v, NEXUS_CAP) for v in vals if v != 0]
        if not kept:
            return 0.0
        return (sum(kept) / len(kept)) / NEXUS_CAP
    raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


@dataclass(frozen=True)
class TotalScore:
    """A weighted TotalScore and exactly which terms it is made of.

    ``value`` is in [0, 1] (``None`` when no term is available). Whenever a weighted term is not included,
    ``value`` is the weighted mean over ``included`` only (weights renormalised). ``missing`` terms were not
    measured (the total is ``partial`` and not comparable with a full one); ``not_applicable`` terms do not
    apply to these videos at all (e.g. FaceSim for an object-only category), which is expected in
    per-category tables and does not make the total partial.
    """

    value: float | None
    included: tuple[str, ...]
    missing: tuple[str, ...]
    weights: dict[str, float] = field(default_factory=dict)
    domain: str = "Open-Domain"
    version: str = "v1.1"
    not_applicable: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def weight_covered(self) -> float:
        return sum(self.weights[m] for m in self.included)

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "partial": self.partial,
            "included": list(self.included),
            "missing": list(self.missing),
            "not_applicable": list(self.not_applicable),
            "weight_covered": self.weight_covered,
            "weights": dict(self.weights),
            "domain": self.domain,
            "version": self.version,
        }


def total_score(
    normalized: Mapping[str, float | None],
    domain: str = "Open-Domain",
    version: str = "v1.1",
    not_applicable: Iterable[str] = (),
) -> TotalScore:
    """Weighted TotalScore from normalised metric scores (in [0, 1]; ``None`` or absent = missing).

    Terms named in ``not_applicable`` (and without a value) are left out without making the total partial.
    """
    weights = weights_for(domain, version)
    na = set(not_applicable)
    included = tuple(m for m in weights if normalized.get(m) is not None)
    skipped = tuple(m for m in weights if normalized.get(m) is None and m in na)
    missing = tuple(m for m in weights if normalized.get(m) is None and m not in na)
    covered = sum(weights[m] for m in included)
    value = None
    if included:
        value = sum(weights[m] * float(normalized[m]) for m in included) / covered
    return TotalScore(value, included, missing, weights, domain, version, skipped)


@dataclass(frozen=True)
class Aggregate:
    """Normalised scores of a set of videos, the number of videos behind each, and the total."""

    normalized: dict[str, float | None]
    counts: dict[str, int]
    total: TotalScore
    num_videos: int

    def to_dict(self) -> dict:
        return {
            "num_videos": self.num_videos,
            "normalized": dict(self.normalized),
            "counts": dict(self.counts),
            "total": self.total.to_dict(),
        }


def aggregate(
    per_video: Sequence[Mapping[str, float | None]],
    domain: str = "Open-Domain",
    version: str = "v1.1",
    metrics: Sequence[str] = METRICS,
    not_applicable: Sequence[Iterable[str]] | None = None,
) -> Aggregate:
    """Normalise each metric over ``per_video`` (one ``{metric: raw value}`` dict per video) and total them.

    ``not_applicable`` (one collection per video) names the metrics that do not apply to that video; a
    metric with no value that applies to none of the videos is "not applicable" rather than missing.
    """
    normalized: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    na_sets = [set(x) for x in not_applicable] if not_applicable is not None else [set() for _ in per_video]
    if len(na_sets) != len(per_video):
        raise ValueError("not_applicable must have one entry per video")
    for m in metrics:
        values = [v.get(m) for v in per_video]
        counts[m] = sum(1 for x in values if x is not None)
        normalized[m] = normalize_metric(m, values)
    unused = [m for m in metrics if counts[m] == 0 and per_video and all(m in na for na in na_sets)]
    total = total_score(normalized, domain, version, not_applicable=unused)
    return Aggregate(normalized, counts, total, len(per_video))
