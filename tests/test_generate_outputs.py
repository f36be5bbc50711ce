"""What the generation jobs leave on disk: no folders from failed runs, no killed writes' temporary files,
and no silent mixing of settings when a manifest run is resumed (the run record check)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave import cli, generate
from bindweave.io.video import write_video
from bindweave.testing import build_tiny_random_pipeline

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_random_pipeline(tmp_path_factory.mktemp("model") / "pipeline")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two reference images, a garbage ``.png``, a two-entry manifest and a one-entry one."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / name)
    (folder / "garbage.png").write_bytes(b"not an image")
    manifest = {
        "one": {"img_paths": ["a.png"], "prompt": "a cat"},
        "two": {"img_paths": ["a.png", "b.png"], "prompt": "a cat and a dog"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "one.json").write_text(json.dumps({"one": manifest["one"]}))
    return folder


def _manifest_args(model_dir, inputs, out, manifest="one.json"):
    return ["run-manifest", "--model", str(model_dir), "--manifest", str(inputs / manifest),
            "--images-dir", str(inputs), "--out", str(out), *SMALL]  # fmt: skip


def _fails(args) -> bool:
    """The job fails, by a non-zero exit or an exception (who reports which failure is not tested here)."""
    try:
        return cli.main(args) != 0
    except Exception:
        return True


# ---------------------------------------------------------------------------- no folders from failures


def test_failed_runs_create_no_output_folder(model_dir, inputs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"one": {"img_paths": ["missing.png"], "prompt": "a cat"}}))
    out = tmp_path / "new" / "deeper"
    jobs = {
        "missing image": ["generate", "--model", str(model_dir), "--refs", str(inputs / "missing.png"),
                          "--prompt", "a cat", "--out", str(out / "v.mp4"), *SMALL],
        "unreadable image": ["generate", "--model", str(model_dir), "--refs", str(inputs / "garbage.png"),
                             "--prompt", "a cat", "--out", str(out / "v.mp4"), *SMALL],
        "run-manifest": _manifest_args(model_dir, tmp_path, out, manifest="bad.json"),
        "eval generate": ["eval", "generate", *_manifest_args(model_dir, tmp_path, out, manifest="bad.json")[1:]],
        "extract-mllm": ["extract-mllm", "--model", str(model_dir), "--manifest", str(bad),
                         "--images-dir", str(inputs), "--out", str(out)],
        "demo, missing model": ["demo", "--model", str(tmp_path / "missing"), "--out", str(out)],
    }  # fmt: skip
    if not torch.cuda.is_available():
        jobs["--device cuda without CUDA"] = ["demo", "--device", "cuda", "--out", str(out)]
    for name, args in jobs.items():
        assert _fails(args), name
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"], name


# ------------------------------------------------------------------------------- stale temporary files


def test_run_manifest_removes_temporaries_of_killed_writes(model_dir, inputs, tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    killed = out / f".one.mp4.tmp-{host}-{_dead_pid()}-0123abcd.mp4"  # what SIGKILL mid-encode leaves
    other = out / f".gone.mp4.tmp-{host}-{_dead_pid()}-0123abcd.mp4"  # of a video no rerun rewrites
    live = out / f".one.mp4.tmp-{host}-{os.getpid()}-0123abcd.mp4"  # a running writer's (another rank)
    for path in (killed, other, live):
        path.write_bytes(b"partial")
    assert cli.main(_manifest_args(model_dir, inputs, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([live.name, "one.mp4", "run_record.json"])

    # generate sweeps the folder it writes to (demo does the same with its --out).
    killed.write_bytes(b"partial")
    args = ["generate", "--model", str(model_dir), "--refs", str(inputs / "a.png"), "--prompt", "a cat",
            "--out", str(out / "single.mp4"), *SMALL]  # fmt: skip
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [live.name, "one.mp4", "run_record.json", "single.mp4"]
    )


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------------------------- run record


def _videos(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.mp4"))}


def test_rerun_with_other_settings_is_refused(model_dir, inputs, tmp_path, monkeypatch, caplog):
    out = tmp_path / "videos"
    args = _manifest_args(model_dir, inputs, out)
    assert cli.main(args) == 0
    first = _videos(out)
    assert list(first) == ["one.mp4"]
    record = json.loads((out / "run_record.json").read_text())
    assert record["video_settings"]["steps"] == 1 and record["video_settings"]["dtype"] == "float32"

    with monkeypatch.context() as patch:
        patch.setattr(generate, "load_pipeline", _refuse_to_load)
        # Same settings (the model named by another relative path, another device spelling): nothing to do.
        patch.chdir(model_dir.parent)
        same = [*args[:2], model_dir.name, *args[3:], "--device", "cpu", "--no-batch-cfg"]
        assert cli.main(same) == 0
        for change, message in [
            (["--steps", "2"], "--steps 1 -> 2"),
            (["--seed", "7"], "--seed 42 -> 7"),
            (["--height", "48"], "--height 32 -> 48"),
            (["--fps", "8"], "--fps 16 -> 8"),
            (["--dtype", "bfloat16"], "--dtype 'float32' -> 'bfloat16'"),
            (["--cache", "first-block"], "--cache 'none' -> 'first-block'"),
            (["--precision", "released"], "--precision 'float32' -> 'released'"),
        ]:
            caplog.clear()
            assert cli.main([*args, *change]) == 1, change
            assert (
                message in caplog.text and "run_record.json" in caplog.text and "--overwrite" in caplog.text
            )
        caplog.clear()
        assert cli.main([*args, "--steps", "2", "--seed", "7"]) == 1
        assert "--steps 1 -> 2" in caplog.text and "--seed 42 -> 7" in caplog.text
        assert cli.main(["eval", "generate", *args[1:], "--steps", "2"]) == 1
    assert _videos(out) == first

    # --overwrite regenerates every video; a rerun with the new settings then has nothing to do.
    assert cli.main([*args, "--steps", "2", "--overwrite"]) == 0
    second = _videos(out)
    assert list(second) == ["one.mp4"] and second["one.mp4"] != first["one.mp4"]
    record = json.loads((out / "run_record.json").read_text())
    assert record["video_settings"]["steps"] == 2 and list(record["seconds_per_video"]) == ["one"]
    monkeypatch.setattr(generate, "load_pipeline", _refuse_to_load)
    assert cli.main([*args, "--steps", "2"]) == 0
    assert cli.main(args) == 1  # the old settings are now the other ones


def _refuse_to_load(config):
    raise AssertionError("a pipeline was loaded")


def test_videos_without_a_record_are_kept_with_a_warning(model_dir, inputs, tmp_path, caplog):
    out = tmp_path / "videos"
    # As left by a version that wrote no run record: one of the two videos made.
    kept = write_video(np.zeros((5, 32, 48, 3), np.uint8), out / "two.mp4").read_bytes()
    with caplog.at_level(logging.WARNING):
        assert (
            cli.main([*_manifest_args(model_dir, inputs, out, manifest="manifest.json"), "--steps", "2"]) == 0
        )
    assert "no run record" in caplog.text
    assert (out / "two.mp4").read_bytes() == kept and (out / "one.mp4").is_file()
    assert json.loads((out / "run_record.json").read_text())["video_settings"]["steps"] == 2


def test_records_without_videos_are_replaced(model_dir, inputs, tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    (out / "run_record.rank3.json").write_text(json.dumps({"video_settings": {"steps": 50}}))
    assert cli.main(_manifest_args(model_dir, inputs, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["one.mp4", "run_record.json"]


def test_torchrun_ranks_compare_against_every_rank_record(model_dir, inputs, tmp_path, monkeypatch, caplog):
    """Data parallel: rank N writes run_record.rankN.json; a rerun with another world size still checks."""
    out = tmp_path / "videos"
    args = _manifest_args(model_dir, inputs, out, manifest="manifest.json")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):  # the two ranks, one after the other
        monkeypatch.setenv("RANK", rank)
        assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "one.mp4", "run_record.rank0.json", "run_record.rank1.json", "two.mp4"
    ]  # fmt: skip
    monkeypatch.setattr(generate, "load_pipeline", _refuse_to_load)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(args) == 0
    assert cli.main([*args, "--seed", "3"]) == 1
    assert "run_record.rank0.json, run_record.rank1.json" in caplog.text and "--seed 42 -> 3" in caplog.text
