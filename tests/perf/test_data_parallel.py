"""Data-parallel manifest generation under torchrun on CPU: every output once, per-rank records, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from bindweave import cli, generate

WORLD = 2
IDS = ["case_a", "case_b", "case_c", "case_d"]


@pytest.fixture(scope="module")
def job(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """The tiny pipeline folder and a 4-entry manifest of small synthetic images."""
    root = tmp_path_factory.mktemp("dp")
    model = tiny_model_dir
    rng = np.random.default_rng(0)
    manifest = {}
    for i, entry_id in enumerate(IDS):
        path = root / "images" / f"{entry_id}.png"
        path.parent.mkdir(exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 255, (24 + 4 * i, 32, 3), dtype=np.uint8)).save(path)
        manifest[entry_id] = {
            "img_paths": [path.name],
            "prompt": f"subject {i} walks",
            "class_label": ["thing"],
        }
    (root / "manifest.json").write_text(json.dumps(manifest))
    args = ["-m", "bindweave.cli", "run-manifest", "--model", str(model), "--manifest", str(root / "manifest.json"),
            "--images-dir", str(root / "images"), "--out", str(root / "out"),
            "--height", "32", "--width", "48", "--num-frames", "5", "--steps", "1"]  # fmt: skip
    return root / "out", args


def test_torchrun_generates_each_entry_once_and_resumes(job, monkeypatch, torchrun):
    out, args = job
    torchrun(args, out.parent)
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"{i}.mp4" for i in IDS]
    records = [json.loads((out / f"run_record.rank{rank}.json").read_text()) for rank in range(WORLD)]
    made = [set(record["seconds_per_video"]) for record in records]
    assert made[0].isdisjoint(made[1]) and made[0] | made[1] == set(IDS)  # each entry by exactly one rank
    assert [(r["rank"], r["world_size"]) for r in records] == [(0, WORLD), (1, WORLD)]
    assert not (out / "run_record.json").exists()

    # The rerun, rank by rank in this process with torchrun's environment: nothing loaded or rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for rank in range(WORLD):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(WORLD))
        monkeypatch.setattr(generate, "load_pipeline", fail_if_called)
        assert cli.main(args[2:]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def fail_if_called(config):
    raise AssertionError("a finished manifest must not load any model")
