"""Aggregation and TotalScore weights, checked against published OpenS2V-Eval leaderboard rows."""

from __future__ import annotations

import pytest

from bindweave.eval.scores import (
    METRICS,
    aggregate,
    normalize_metric,
    total_score,
    weights_for,
)

ORDER_V11 = ("aesthetic", "motion_smoothness", "motion_amplitude", "facesim_cur", "gme", "nexus", "natural")


def _row(values_percent, order=ORDER_V11):
    return {m: v / 100 for m, v in zip(order, values_percent, strict=True)}


def test_bindweave_published_row_gives_57_61():
    # BindWeave's OpenS2V-Eval v1.1 Open-Domain row (spec 7): total 57.61.
    row = _row([45.55, 95.90, 13.91, 53.71, 67.79, 46.84, 66.85])
    total = total_score(row, "Open-Domain", "v1.1")
    assert 100 * total.value == pytest.approx(57.61, abs=0.01)
    assert not total.partial
    assert total.included == tuple(weights_for("Open-Domain", "v1.1"))


@pytest.mark.parametrize(
    ("domain", "version", "order", "values", "expected"),
    [
        # leaderboard/file_v1.1/results_Human-Domain.csv: Hailuo(20250503)
        (
            "Human-Domain",
            "v1.1",
            ORDER_V11[:5] + ("natural",),
            [52.75, 99.1, 31.8, 57.69, 71.42, 69.2],
            65.26,
        ),
        # leaderboard/file_v1.1/results_Single-Domain.csv: VACE-14B
        ("Single-Domain", "v1.1", ORDER_V11, [48.94, 93.16, 19.69, 64.65, 65.86, 50.82, 70.56], 61.75),
        # leaderboard/file_v1.0/results_Human-Domain.csv: VACE-14B (v1.0 "Motion" = MotionAmplitude)
        (
            "Human-Domain",
            "v1.0",
            ("aesthetic", "motion_amplitude", "facesim_cur", "gme", "natural"),
            [52.78, 11.76, 64.65, 69.53, 74.33],
            58.57,
        ),
        # leaderboard/file_v1.0/results_Open-Domain.csv: Kling1.6 (published 54.46 from unrounded terms)
        (
            "Open-Domain",
            "v1.0",
            ("aesthetic", "motion_amplitude", "facesim_cur", "gme", "nexus", "natural"),
            [44.60, 41.60, 40.10, 66.20, 45.92, 79.06],
            54.46,
        ),
    ],
)
def test_weight_tables_reproduce_published_rows(domain, version, order, values, expected):
    total = total_score(_row(values, order), domain, version)
    assert not total.partial
    assert 100 * total.value == pytest.approx(expected, abs=0.015)


def test_weights_sum_to_one():
    for domain in ("Open-Domain", "Human-Domain", "Single-Domain"):
        for version in ("v1.1", "v1.0"):
            assert sum(weights_for(domain, version).values()) == pytest.approx(1.0)
    assert "nexus" not in weights_for("Human-Domain", "v1.1")


def test_unknown_weights_are_an_error():
    with pytest.raises(KeyError, match="v2.0/Open-Domain"):
        weights_for("Open-Domain", "v2.0")


def test_missing_terms_make_a_partial_total_over_included_terms():
    row = _row([45.55, 95.90, 13.91, 53.71, 67.79, 46.84, 66.85])
    row["natural"] = None
    del row["gme"]
    total = total_score(row)
    assert total.partial
    assert total.missing == ("gme", "natural")
    assert "gme" not in total.included and "natural" not in total.included
    assert total.weight_covered == pytest.approx(1 - 0.12 - 0.24)
    included = {m: row[m] for m in total.included}
    expected = sum(total.weights[m] * v for m, v in included.items()) / total.weight_covered
    assert total.value == pytest.approx(expected)
    assert total.to_dict()["partial"] is True


def test_nothing_measured_gives_no_total():
    total = total_score({})
    assert total.value is None
    assert total.missing == tuple(weights_for())


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        ("aesthetic", [3.0, 5.5, 8.0], ((4.0 + 5.5 + 7.0) / 3 - 4) / 3),  # clip to [4, 7], mean, (m-4)/3
        ("motion_amplitude", [-0.2, 0.4, 3.0], (0.2 + 0.4 + 1.0) / 3),  # min(|x|, 1)
        ("motion_smoothness", [0.9, 1.2], (0.9 + 1.0) / 2),
        ("facesim_cur", [0.5, 1.5, -0.1], (0.5 + 1.0 - 0.1) / 3),  # min(x, 1), negatives kept
        ("gme", [0.3, 0.4], 0.35),
        ("natural", [0.0, 3.0, 5.0], ((1.0 + 3.0 + 5.0) / 3 - 1) / 4),  # clip to [1, 5], (m-1)/4
        ("nexus", [0.0, 0.02, 0.1, 0.0], ((0.02 + 0.05) / 2) / 0.05),  # zeros left out, cap 0.05, /0.05
        ("nexus", [0.0, 0.0], 0.0),  # measured, all zero: 0 (as released), not missing
    ],
)
def test_normalization_rules(metric, values, expected):
    assert normalize_metric(metric, values) == pytest.approx(expected)


def test_unmeasured_metric_is_missing_not_zero():
    assert normalize_metric("aesthetic", []) is None
    assert normalize_metric("gme", [None, None]) is None
    assert normalize_metric("gme", [None, 0.5]) == pytest.approx(0.5)


def test_non_finite_values_are_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        normalize_metric("gme", [float("nan")])


def test_aggregate_counts_and_not_applicable():
    videos = [
        {"motion_amplitude": 0.2, "facesim_cur": 0.6},
        {"motion_amplitude": 0.4},
    ]
    agg = aggregate(videos, not_applicable=[[], ["facesim_cur"]])
    assert agg.counts["motion_amplitude"] == 2
    assert agg.counts["facesim_cur"] == 1
    assert agg.normalized["motion_amplitude"] == pytest.approx(0.3)
    assert agg.normalized["aesthetic"] is None
    assert set(agg.total.missing) == set(METRICS) - {"motion_amplitude", "facesim_cur"}

    objects_only = aggregate([{"motion_amplitude": 0.2}], not_applicable=[["facesim_cur"]])
    assert "facesim_cur" in objects_only.total.not_applicable
    assert "facesim_cur" not in objects_only.total.missing
