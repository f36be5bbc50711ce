"""Ctrl-C: one line saying what was saved and how to continue, exit code 130, and nothing else swallowed."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from bindweave import cli
from bindweave.interrupt import Interrupted, interrupt_message

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "1"]


def test_interrupt_message_is_computed_when_the_interrupt_comes():
    state = {"done": 0}

    @interrupt_message(lambda config: f"{state['done']} of {config} done")
    def job(config):
        state["done"] = 2
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="^2 of 5 done$"):
        job(5)


def test_interrupt_message_keeps_an_inner_message_and_every_other_exception():
    @interrupt_message(lambda config: "outer")
    def outer(inner):
        return inner(None)

    @interrupt_message(lambda config: "inner")
    def inner(config):
        raise KeyboardInterrupt

    def fails(config):
        raise RuntimeError("a bug")

    with pytest.raises(Interrupted, match="^inner$"):
        outer(inner)
    with pytest.raises(RuntimeError, match="a bug"):
        outer(fails)
    assert outer(lambda config: 7) == 7


def test_any_command_interrupted_prints_one_line_and_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr("bindweave.generate.load_pipeline", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["bindweave demo: interrupted"]


def test_other_exceptions_are_not_swallowed(monkeypatch, tmp_path):
    def bug(config):
        raise RuntimeError("a bug, with its traceback")

    monkeypatch.setattr("bindweave.generate.load_pipeline", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["demo", "--out", str(tmp_path)])


def test_run_manifest_interrupted_says_how_many_videos_are_done_and_how_to_resume(
    tmp_path, monkeypatch, capsys
):
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    manifest = tmp_path / "cases.json"
    manifest.write_text(json.dumps({k: {"img_paths": ["ref.png"], "prompt": k} for k in ("a cat", "a dog")}))

    from bindweave.pipeline import BindWeavePipeline

    real_call, calls = BindWeavePipeline.__call__, []

    def second_call_interrupted(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(BindWeavePipeline, "__call__", second_call_interrupted)
    out = tmp_path / "videos"
    code = cli.main(["run-manifest", "--manifest", str(manifest), "--images-dir", str(tmp_path),
                     "--out", str(out), *SMALL])  # fmt: skip
    assert code == 130 and calls == ["a cat", "a dog"]
    err = capsys.readouterr().err
    line = (
        f"bindweave run-manifest: interrupted; 1 of 2 videos are in {out}; run the same command again to make "
        "the rest (finished videos are skipped)"
    )
    assert "Traceback" not in err and err.splitlines()[-1] == line
    assert [text for text in err.splitlines() if text.startswith("bindweave")] == [line]
    assert (out / "a cat.mp4").is_file() and not (out / "a dog.mp4").exists()
