"""toy-eval's sampler x steps sweep: one row each, its cost, its resume file, and the table's cost columns."""

from __future__ import annotations

import json

import pytest

from bindweave import cli
from bindweave.toy.config import ToyEvalConfig
from bindweave.toy.evaluate import _plan, format_table, toy_eval_rows


@pytest.fixture(scope="module")
def cfg_pipe(toy_pipe):
    """The shared toy pipeline's components as a model with CFG on by default (guidance 3); it stays as is."""
    defaults = {k: v for k, v in toy_pipe.config.items() if k.startswith("default_")}
    return type(toy_pipe)(**toy_pipe.components, **{**defaults, "default_guidance_scale": 3.0})


def test_the_rows_of_a_sweep():
    config = ToyEvalConfig(
        model="m", variants=["trained", "ground-truth"], steps=[4, 20], samplers=["unipc", "lightx2v"]
    )
    rows = _plan(config, model_guidance=3.0)
    assert [(r.label, r.guidance_scale, r.dit_forwards) for r in rows] == [
        ("trained unipc 4", 3.0, 8), ("trained unipc 20", 3.0, 40),  # the model's guidance: CFG, 2 forwards a step
        ("trained lightx2v 4", 1.0, 4), ("trained lightx2v 20", 1.0, 20),  # no CFG: 1 forward a step
        ("ground-truth", None, None),
    ]  # fmt: skip


def test_each_sampler_is_a_row_with_its_cost_and_resumes(cfg_pipe, tmp_path):
    config = ToyEvalConfig(
        model=tmp_path, variants=["trained", "ground-truth"], num_samples=1, steps=[1],
        samplers=["unipc", "lightx2v"], out=tmp_path,
    )  # fmt: skip
    forwards = []
    handle = cfg_pipe.transformer.register_forward_hook(lambda *_: forwards.append(1))
    try:
        rows = toy_eval_rows(cfg_pipe, config)
    finally:
        handle.remove()
    assert [(r.label, r.dit_forwards) for r in rows] == [
        ("trained unipc 1", 2), ("trained lightx2v 1", 1), ("ground-truth", None),
    ]  # fmt: skip
    assert len(forwards) == 2 + 1  # the cost column counts the forwards that ran
    assert all(r.dit_seconds_per_clip > 0 for r in rows[:2]) and rows[2].dit_seconds_per_clip is None
    saved = json.loads((tmp_path / "trained.lightx2v.1.json").read_text())
    assert saved["settings"] | {"model": None} == {
        "model": None, "num_samples": 1, "world_seed": 0, "split": "heldout", "init_seed": 0,
        "sampler": "lightx2v", "steps": 1, "guidance_scale": 1.0,
    }  # fmt: skip
    table = format_table({r.label: r.scores for r in rows}, {r.label: r for r in rows})
    lines = table.splitlines()
    assert lines[0].endswith("| DiT forwards/clip | DiT s/clip |")
    assert lines[3].startswith("| trained lightx2v 1 | ") and " | 1 | " in lines[3]
    assert lines[4].endswith("| - | - |")
    again = toy_eval_rows(cfg_pipe, config)  # every row reused from disk: equal, JSON keeps floats exactly
    assert [r.scores for r in again] == [r.scores for r in rows]
    assert [r.dit_seconds_per_clip for r in again] == [r.dit_seconds_per_clip for r in rows]


def test_a_guidance_given_applies_to_every_sampler():
    config = ToyEvalConfig(
        model="m", variants=["trained"], steps=[1], samplers=["lightx2v"], guidance_scale=2.0
    )
    (row,) = _plan(config, model_guidance=1.0)
    assert (row.label, row.guidance_scale, row.dit_forwards) == ("trained", 2.0, 2)  # no sweep: the variant
    rows = _plan(ToyEvalConfig(model="m", variants=["no-clip"], steps=[2, 4], guidance_scale=1.0), 3.0)
    assert [(r.label, r.guidance_scale, r.dit_forwards) for r in rows] == [
        ("no-clip unipc 2", 1.0, 2), ("no-clip unipc 4", 1.0, 4)
    ]  # fmt: skip


def test_sweep_options_on_the_command_line():
    args = cli.build_parser(argv=["toy-eval"]).parse_args(
        ["toy-eval", "--model", "m", "--steps", "4", "20", "--samplers", "unipc", "lightx2v"]
    )
    assert args.steps == [4, 20] and args.samplers == ["unipc", "lightx2v"]
    with pytest.raises(ValueError, match=r"--samplers: unknown \['dpm'\]"):
        ToyEvalConfig(model="m", samplers=["dpm"]).validate()
    assert ToyEvalConfig(model="m", steps=15).steps == [15]
