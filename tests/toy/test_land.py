"""``toy land``: the paired comparison, and the shipped folder replaced only by a candidate that wins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bindweave.toy import land
from bindweave.toy.land import ToyLandConfig, compare, run_toy_land
from bindweave.training.checkpoint import STATE_DIR


def rows(fidelity, direction):
    return [
        {"fidelity": f, "direction_accuracy": d, "psnr": 10.0}
        for f, d in zip(fidelity, direction, strict=True)
    ]


def test_compare_is_the_paired_difference_and_its_standard_error():
    # Differences 0.1, 0.3: mean 0.2, sample std sqrt(0.02), standard error sqrt(0.02 / 2) = 0.1.
    verdict = compare(rows([0.4, 0.6], [0.5, 0.5]), rows([0.3, 0.3], [0.5, 0.25]))
    assert verdict["fidelity"]["difference"] == pytest.approx(0.2)
    assert verdict["fidelity"]["standard_error"] == pytest.approx(0.1)
    assert verdict["fidelity"]["better"]
    # Differences 0, 0.25: mean 0.125 = its standard error, so not beyond it.
    assert verdict["direction_accuracy"]["difference"] == pytest.approx(0.125)
    assert verdict["direction_accuracy"]["standard_error"] == pytest.approx(math.sqrt(0.03125 / 2))
    assert not verdict["direction_accuracy"]["better"]


def test_compare_needs_the_same_samples():
    with pytest.raises(ValueError, match="same >= 2 samples"):
        compare(rows([0.4], [0.5]), rows([0.3], [0.5]))


def _folders(tmp_path):
    """A training output_dir whose newest checkpoint is step 20, and a shipped model folder."""
    for step in (10, 20):
        checkpoint = tmp_path / "train" / f"checkpoint-{step:06d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model_index.json").write_text(json.dumps({"step": step}))
        (checkpoint / STATE_DIR).mkdir()  # complete (its state written), and not exported
        (checkpoint / STATE_DIR / "state.json").write_text("{}")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "model_index.json").write_text(json.dumps({"step": 0}))
    return tmp_path / "train", shipped


def _step(model):
    return json.loads((model / "model_index.json").read_text())["step"]


@pytest.mark.parametrize(
    ("candidate_fidelity", "replace", "landed"), [(0.5, True, True), (0.3, True, False), (0.5, False, False)]
)
def test_the_shipped_folder_is_replaced_only_by_a_winner(
    tmp_path, monkeypatch, candidate_fidelity, replace, landed
):
    train, shipped = _folders(tmp_path)
    scored = {}
    shipped_digest = land.folder_digest(shipped)[:12]

    def fake_scores(model, config, out, guidance_scale=None, world_seed=0):
        step = _step(model)
        scored[out.name] = (step, guidance_scale, world_seed)
        if step == 0:
            return rows([0.3, 0.32, 0.28], [0.2, 0.1, 0.3])
        return rows(
            [candidate_fidelity, candidate_fidelity + 0.02, candidate_fidelity - 0.02], [0.6, 0.5, 0.7]
        )

    monkeypatch.setattr(land, "_scores", fake_scores)
    record = run_toy_land(
        ToyLandConfig(train_dir=train, out=tmp_path / "land", shipped=shipped, replace=replace)
    )
    # the newest checkpoint against the shipped one, both at their saved scale on world 0; the one default
    # scale is saved in the candidate without scoring
    tag = f"checkpoint-000020-{land.folder_digest(train / 'checkpoint-000020')[:12]}"
    assert scored == {
        f"eval-{tag}": (20, None, 0),
        f"eval-shipped-{shipped_digest}": (0, None, 0),
    }
    assert record["landed"] is landed
    assert json.loads((tmp_path / "land" / "land.json").read_text())["landed"] is landed
    assert _step(shipped) == (20 if landed else 0)
    assert not (shipped / STATE_DIR).exists()
    candidate_index = json.loads((tmp_path / "land" / tag / "model_index.json").read_text())
    assert record["candidate"] == str(tmp_path / "land" / tag)
    assert candidate_index["default_guidance_scale"] == 1.0


def test_the_guidance_scale_is_chosen_on_other_scenes_and_saved(tmp_path, monkeypatch):
    train, shipped = _folders(tmp_path)
    compared_at = {}

    def fake_scores(model, config, out, guidance_scale=None, world_seed=0):
        if _step(model) == 0:
            return rows([0.3, 0.3], [0.2, 0.2])
        if world_seed == 1:  # the selection: fidelity + direction 0.9 at scale 1, 1.1 at 3, 1.0 at 5
            total = {1.0: 0.9, 3.0: 1.1, 5.0: 1.0}[guidance_scale]
            return rows([0.4, 0.4], [total - 0.4, total - 0.4])
        compared_at["scale"] = json.loads((model / "model_index.json").read_text())["default_guidance_scale"]
        return rows([0.5, 0.6], [0.5, 0.6])

    monkeypatch.setattr(land, "_scores", fake_scores)
    record = run_toy_land(
        ToyLandConfig(
            train_dir=train, out=tmp_path / "land", shipped=shipped, guidance_scales=[1.0, 3.0, 5.0]
        )
    )
    assert record["guidance_selection"]["chosen"] == 3.0 and compared_at["scale"] == 3.0
    assert sorted(record["guidance_selection"]["means"]) == ["1.0", "3.0", "5.0"]
    assert json.loads((shipped / "model_index.json").read_text())["default_guidance_scale"] == 3.0  # landed


def test_a_new_checkpoint_of_the_same_name_is_exported_and_scored_again(tmp_path, monkeypatch):
    """Each part's anneal ends in a checkpoint-000400: the next landing must judge the new weights."""
    train, shipped = _folders(tmp_path)
    scored = []

    def fake_scores(model, config, out, guidance_scale=None, world_seed=0):
        scored.append((_step(model), out.name))
        return rows([0.3, 0.3], [0.2, 0.2])  # never better: nothing lands

    monkeypatch.setattr(land, "_scores", fake_scores)
    config = ToyLandConfig(train_dir=train, out=tmp_path / "land", shipped=shipped)
    first = run_toy_land(config)
    (train / "checkpoint-000020" / "model_index.json").write_text(json.dumps({"step": 21}))
    second = run_toy_land(config)
    assert first["candidate"] != second["candidate"]
    assert _step(Path(second["candidate"])) == 21
    candidate_runs = [(step, name) for step, name in scored if step != 0]
    assert [step for step, _ in candidate_runs] == [20, 21]
    assert candidate_runs[0][1] != candidate_runs[1][1]  # scored into another folder, not reused


def test_the_shipped_scores_are_keyed_by_its_files(tmp_path):
    _, shipped = _folders(tmp_path)
    before = land.folder_digest(shipped)
    assert land.folder_digest(shipped) == before
    (shipped / "model_index.json").write_text(json.dumps({"step": 1}))
    assert land.folder_digest(shipped) != before


@pytest.mark.parametrize(
    ("field", "value"), [("guidance_scales", []), ("guidance_scales", [0.5]), ("num_samples", 1)]
)
def test_bad_settings_are_refused_before_any_work(tmp_path, field, value):
    train, shipped = _folders(tmp_path)
    config = ToyLandConfig(train_dir=train, out=tmp_path / "land", shipped=shipped, **{field: value})
    with pytest.raises(ValueError, match=field.replace("_", "-")):
        run_toy_land(config)
    assert not (tmp_path / "land").exists()
