"""What the generation jobs leave on disk: no folders from failed runs, no killed writes' temporary files."""

from __future__ import annotations

import json
import os
import re
import socket

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave import cli
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
