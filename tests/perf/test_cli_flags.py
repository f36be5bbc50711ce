"""The speed and memory flags on ``bindweave generate``: parsed, validated before loading, result-preserving."""

from __future__ import annotations

import re

import numpy as np
import PIL.Image
import pytest

from bindweave import cli
from bindweave.io import video
from bindweave.io.video import probe_video
from bindweave.testing import assert_close_to_float32_rounding

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "2"]
FLAGS = ["--memory", "--fp8-weights", "--vae-tiling", "--attention-backend", "--compile", "--batch-cfg",
         "--context-kv-cache", "--cache", "--cache-threshold", "--cache-interval", "--mag-ratios",
         "--context-parallel", "--precision"]  # fmt: skip


@pytest.fixture(scope="module")
def job(tiny_model_dir, tmp_path_factory) -> list[str]:
    ref = tmp_path_factory.mktemp("cli-perf") / "ref.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(ref)
    return ["generate", "--model", str(tiny_model_dir), "--refs", str(ref), "--prompt", "a cat", *SMALL]


@pytest.mark.parametrize("command", ["generate", "run-manifest"])
def test_generation_commands_take_the_flags(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    help_text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in help_text, flag
    assert "--offload" not in help_text  # replaced by --memory model-offload


def test_exact_options_give_the_same_video(job, tmp_path, monkeypatch):
    """The frames both runs hand to the encoder agree up to float32 rounding.

    Two loads, one with offload hooks: not provably the same storage layout, so not bitwise; and not the
    decoded files, as a rounding difference can flip an 8-bit level, which H.264 then spreads.
    """
    encoded = []
    real_encode = video._encode_h264
    monkeypatch.setattr(
        video, "_encode_h264", lambda frames, *a: encoded.append(frames) or real_encode(frames, *a)
    )
    plain, fast = tmp_path / "plain.mp4", tmp_path / "fast.mp4"
    assert cli.main([*job, "--out", str(plain)]) == 0
    exact = [
        "--memory",
        "group-offload",
        "--context-kv-cache",
        "--cache",
        "first-block",
        "--cache-threshold",
        "0",
    ]
    assert cli.main([*job, *exact, "--out", str(fast)]) == 0
    assert len(encoded) == 2 and encoded[0].shape == (5, 32, 48, 3)
    assert_close_to_float32_rounding(encoded[1], encoded[0])
    assert probe_video(plain).num_frames == probe_video(fast).num_frames == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cache", "mag"], "mag-ratios"),
        (["--cache-threshold", "0.1"], "needs --cache"),
        (["--compile", "--context-kv-cache"], "without --compile"),
        (["--context-parallel", "ring"], "log-sum-exp"),
        ([], "--model .*no-model: no such folder"),
    ],
)
def test_impossible_combinations_fail_before_loading(tmp_path, caplog, flags, message):
    args = ["generate", "--model", str(tmp_path / "no-model"), "--refs", str(tmp_path / "x.png"), "--prompt", "x",
            "--out", str(tmp_path / "v.mp4"), *flags]  # fmt: skip
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert cli.main(args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and re.search(message, errors[0])
