"""The evaluation and refinement subcommands, through ``bindweave.cli.main``."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest

from bindweave import cli
from bindweave.io.manifest import load_manifest
from bindweave.io.video import write_video

REFINED = "A red disc rolls slowly to the left across a wooden table while the camera stays still."


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # the session's tiny pipeline folder (read only)


@pytest.fixture
def case(tmp_path):
    (tmp_path / "Images").mkdir()
    PIL.Image.new("RGB", (40, 30), (200, 40, 30)).save(tmp_path / "Images" / "disc.png")
    manifest = tmp_path / "cases.json"
    manifest.write_text(
        json.dumps({"singleobj_1": {"img_paths": ["Images/disc.png"], "prompt": "a disc rolls"}})
    )
    return tmp_path, manifest


def test_eval_score_cli_motion_only(case, capsys):
    root, manifest = case
    rng = np.random.default_rng(0)
    write_video(rng.integers(0, 255, (6, 32, 48, 3), dtype=np.uint8), root / "videos" / "singleobj_1.mp4")
    code = cli.main(["eval", "score", "--videos", str(root / "videos"), "--manifest", str(manifest),
                     "--output-dir", str(root / "scores"), "--metrics", "motion_amplitude"])  # fmt: skip
    assert code == 0
    record = json.loads((root / "scores" / "per_video" / "singleobj_1.json").read_text())
    assert record["scores"]["motion_amplitude"] >= 0
    total = json.loads((root / "scores" / "summary.json").read_text())["overall"]["total"]
    # Only MotionAmplitude was computed: the total says so, and nothing missing is counted as 0.
    assert total["included"] == ["motion_amplitude"] and total["partial"]
    assert "natural" in total["missing"] and total["weight_covered"] == pytest.approx(0.02)
    assert total["value"] == pytest.approx(min(abs(record["scores"]["motion_amplitude"]), 1.0))


def test_refine_cli_keeps_the_original_prompt(case, chat_server):
    root, manifest = case
    server = chat_server([REFINED])
    out = root / "refined.json"
    code = cli.main(["refine", "--manifest", str(manifest), "--output", str(out), "--endpoint", server.url,
                     "--images-dir", str(root)])  # fmt: skip
    assert code == 0
    entry = load_manifest(out)["singleobj_1"]
    assert entry.prompt == REFINED and entry.extra["prompt_original"] == "a disc rolls"
    content = server.requests[0]["messages"][1]["content"]
    assert any(part.get("type") == "image_url" for part in content)


def test_generate_with_endpoint_refinement(case, chat_server, model_dir, caplog):
    root, _ = case
    server = chat_server([REFINED])
    out = root / "video.mp4"
    caplog.set_level(logging.INFO, logger="bindweave")
    code = cli.main(["generate", "--model", str(model_dir), "--refs", str(root / "Images" / "disc.png"),
                     "--prompt", "a disc rolls", "--out", str(out), "--refine", "endpoint",
                     "--refine-endpoint", server.url, "--height", "32", "--width", "48", "--num-frames", "5",
                     "--steps", "1"])  # fmt: skip
    assert code == 0 and out.is_file()
    assert len(server.requests) == 1
    assert REFINED in caplog.text


def test_generate_refine_endpoint_needs_a_url(case, model_dir, caplog):
    root, _ = case
    code = cli.main(["generate", "--model", str(model_dir), "--refs", str(root / "Images" / "disc.png"),
                     "--prompt", "x", "--out", str(root / "v.mp4"), "--refine", "endpoint"])  # fmt: skip
    assert code == 1 and "--refine-endpoint" in caplog.text
