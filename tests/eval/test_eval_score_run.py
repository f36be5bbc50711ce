"""``run_score`` end to end: synthetic videos, MotionAmplitude and a mock NaturalScore judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from bindweave.eval.score import EvalScoreConfig, format_table, run_score  # noqa: E402
from bindweave.eval.scorers.base import MissingModelFileError  # noqa: E402
from bindweave.io.video import write_video  # noqa: E402


def _moving_texture(n: int, dx: int, h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((h, w + n * dx + 20)).astype(np.float32), (0, 0), 3.0)
    texture = ((texture - texture.min()) / (texture.max() - texture.min()) * 255).astype(np.uint8)
    x0 = 10 + n * dx
    return np.stack([np.repeat(texture[:, x0 - t * dx : x0 - t * dx + w, None], 3, -1) for t in range(n)])


@pytest.fixture
def eval_case(tmp_path):
    """Three cases; videos for two of them (one moving 2 px/frame to the right, one static)."""
    videos = tmp_path / "videos"
    write_video(_moving_texture(8, 2), videos / "singleobj_1.mp4", fps=16, quality=10)
    write_video(_moving_texture(8, 0), videos / "singleface_1.mp4", fps=16, quality=10)
    manifest = tmp_path / "cases.json"
    manifest.write_text(
        json.dumps(
            {
                "singleobj_1": {"img_paths": ["Images/cup.jpg"], "prompt": "a cup", "class_label": ["Cup"]},
                "singleface_1": {"img_paths": ["Images/man.png"], "prompt": "a man", "class_label": ["Man"]},
                "singleobj_2": {"img_paths": ["Images/cup.jpg"], "prompt": "a cup", "class_label": ["Cup"]},
            }
        )
    )
    return tmp_path, videos, manifest


def test_run_score_motion_and_judge(eval_case, chat_server, capsys):
    root, videos, manifest = eval_case
    server = chat_server(["4", "5", "3"])  # per video: 4, 5, 3 then (repeated) 3, 3, 3
    config = EvalScoreConfig(
        videos_dir=videos,
        manifest=manifest,
        output_dir=root / "out",
        judge_endpoint=server.url,
        judge_retries=0,
    )
    summary = run_score(config)

    records = {p.stem: json.loads(p.read_text()) for p in (root / "out" / "per_video").glob("*.json")}
    assert set(records) == {"singleobj_1", "singleface_1"}
    moving, static = records["singleobj_1"], records["singleface_1"]
    assert moving["scores"]["motion_amplitude"] == pytest.approx(1.0, abs=0.1)  # (2 + 0) / 2
    assert static["scores"]["motion_amplitude"] == pytest.approx(0.0, abs=0.02)
    natural = sorted([moving["scores"]["natural"], static["scores"]["natural"]])
    assert natural == pytest.approx([3.0, 4.0])
    assert len(server.requests) == 6

    assert summary["missing_videos"] == ["singleobj_2"]
    assert set(summary["unavailable_metrics"]) == {
        "aesthetic",
        "motion_smoothness",
        "facesim_cur",
        "gme",
        "nexus",
    }
    overall = summary["overall"]
    assert overall["normalized"]["aesthetic"] is None  # missing, never 0
    expected_amp = (min(moving["scores"]["motion_amplitude"], 1) + static["scores"]["motion_amplitude"]) / 2
    assert overall["normalized"]["motion_amplitude"] == pytest.approx(expected_amp)
    assert overall["normalized"]["natural"] == pytest.approx((3.5 - 1) / 4)
    total = overall["total"]
    assert total["partial"] and total["included"] == ["motion_amplitude", "natural"]
    assert total["value"] == pytest.approx((0.02 * expected_amp + 0.24 * 2.5 / 4) / 0.26)
    assert set(summary["categories"]) == {"singleobj", "singleface"}

    written = json.loads((root / "out" / "summary.json").read_text())
    assert written["overall"] == overall
    markdown = (root / "out" / "summary.md").read_text()
    assert "| overall |" in markdown and "partial TotalScore" in markdown
    printed = capsys.readouterr().out
    assert "overall" in printed and "MotionAmplitude" in printed
    assert format_table(summary).splitlines()[0].startswith("category")
    # No --judge-prompt: our paraphrase was used, and the summary says what that means.
    assert summary["natural_prompt"] == "paraphrase"
    assert "NaturalScore: paraphrased prompt: not comparable to the leaderboard" in printed
    assert "paraphrased prompt: not comparable to the leaderboard" in markdown


def test_run_score_with_the_benchmark_prompt_is_not_marked(eval_case, chat_server, capsys):
    root, videos, manifest = eval_case
    script = root / "get_naturalscore.py"
    script.write_text('import openai\n\nprompt = """\nRate the realism 1-5.\n"""\n')
    server = chat_server(["4"])
    config = EvalScoreConfig(
        videos,
        manifest,
        root / "out",
        metrics=["natural"],
        judge_endpoint=server.url,
        judge_prompt_file=script,
    )
    summary = run_score(config)
    assert server.requests[0]["messages"][0]["content"][-1]["text"] == "\nRate the realism 1-5.\n"
    assert summary["natural_prompt"].startswith("sha256:")
    assert "paraphrased" not in capsys.readouterr().out


def test_skipped_videos_are_counted_per_metric_and_not_rescored(eval_case):
    """FaceSim skips a video whose reference has no face, Nexus drops one whose computation fails: both
    are left out of their metric's mean (as absent from the benchmark's JSON) and counted in the summary."""
    from bindweave.eval.scorers.base import SkipVideo

    root, videos, manifest = eval_case
    calls = []

    def facesim(sample):
        calls.append(sample.id)
        if sample.id == "singleface_1":
            raise SkipVideo("no face in the human reference: Images/man.png")
        return 0.5

    def nexus(sample):
        raise SkipVideo("computation failed: FileNotFoundError: Images/cup.jpg")

    config = EvalScoreConfig(videos, manifest, root / "out", metrics=["facesim_cur", "nexus"])
    summary = run_score(config, scorers={"facesim_cur": facesim, "nexus": nexus})
    record = json.loads((root / "out" / "per_video" / "singleface_1.json").read_text())
    assert record["skipped"] == {
        "facesim_cur": "no face in the human reference: Images/man.png",
        "nexus": "computation failed: FileNotFoundError: Images/cup.jpg",
    }
    assert "facesim_cur" not in record["scores"]
    assert summary["skipped"]["facesim_cur"]["count"] == 1
    assert summary["skipped"]["facesim_cur"]["reasons"] == {"no face in the human reference": 1}
    assert summary["skipped"]["nexus"]["count"] == 2
    assert summary["overall"]["normalized"]["facesim_cur"] == 0.5  # the skipped video is left out
    assert summary["overall"]["normalized"]["nexus"] is None
    table = format_table(summary)
    assert "FaceSim: 1 video(s) skipped, as the benchmark does (no face in the human reference: 1)" in table
    assert "NexusScore: 2 video(s) skipped, as the benchmark does (computation failed: 2)" in table
    assert sorted(calls) == ["singleface_1", "singleobj_1"]
    run_score(config, scorers={"facesim_cur": facesim, "nexus": nexus})  # resumed: nothing recomputed
    assert sorted(calls) == ["singleface_1", "singleobj_1"]


def test_run_score_resumes_without_recomputing(eval_case, chat_server):
    root, videos, manifest = eval_case
    server = chat_server(["4"])
    config = EvalScoreConfig(
        videos, manifest, root / "out", metrics=["motion_amplitude", "natural"], judge_endpoint=server.url
    )
    first = run_score(config)
    assert len(server.requests) == 6

    def must_not_run(sample):
        raise AssertionError(f"{sample.id} was scored again")

    second = run_score(config, scorers={"motion_amplitude": must_not_run})
    assert len(server.requests) == 6
    assert second["overall"] == first["overall"]

    # A regenerated video is scored again.
    write_video(_moving_texture(8, 2, seed=5), videos / "singleface_1.mp4", fps=16, quality=10)
    third = run_score(config, scorers={"motion_amplitude": lambda sample: 0.25})
    record = json.loads((root / "out" / "per_video" / "singleface_1.json").read_text())
    assert record["scores"]["motion_amplitude"] == 0.25
    assert len(server.requests) == 9
    assert third["num_videos"] == 2


def test_not_applicable_metrics_are_recorded(eval_case):
    root, videos, manifest = eval_case

    class FaceOnly:
        name = "facesim_cur"

        def applies_to(self, sample):
            return sample.category == "singleface"

        def __call__(self, sample):
            return 0.5

    config = EvalScoreConfig(videos, manifest, root / "out", metrics=["facesim_cur"])
    summary = run_score(config, scorers={"facesim_cur": FaceOnly()})
    record = json.loads((root / "out" / "per_video" / "singleobj_1.json").read_text())
    assert record["not_applicable"] == ["facesim_cur"]
    assert summary["categories"]["singleobj"]["total"]["not_applicable"] == ["facesim_cur"]
    assert summary["categories"]["singleface"]["normalized"]["facesim_cur"] == 0.5
    assert summary["overall"]["normalized"]["facesim_cur"] == 0.5


def test_configured_models_dir_with_missing_files_fails_up_front(eval_case):
    root, videos, manifest = eval_case
    models = root / "models"
    models.mkdir()
    (models / "aesthetic-model.pth").write_bytes(b"")
    config = EvalScoreConfig(
        videos, manifest, root / "out", models_dir=models, metrics=["motion_amplitude", "aesthetic", "nexus"]
    )
    with pytest.raises(MissingModelFileError) as info:
        run_score(config)
    message = str(info.value)
    assert "clip-vit-large-patch14 (from openai/clip-vit-large-patch14)" in message
    assert "aesthetic-model.pth" not in message  # present
    assert (
        "yolo_world_v2_l_image_prompt_adapter-719a7afb.pth" in message
        and "gme-Qwen2-VL-7B-Instruct" in message
    )
    assert not (root / "out" / "per_video").exists() or not any((root / "out" / "per_video").iterdir())


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown metric"):
        EvalScoreConfig(tmp_path, tmp_path / "m.json", tmp_path / "o", metrics=["fid"])
    with pytest.raises(KeyError, match="v9"):
        EvalScoreConfig(tmp_path, tmp_path / "m.json", tmp_path / "o", weights_version="v9")


def test_cli_options_derive_from_the_config():
    import argparse

    from bindweave.config import add_arguments, from_namespace

    parser = argparse.ArgumentParser()
    add_arguments(parser, EvalScoreConfig)
    args = parser.parse_args(
        [
            "--videos",
            "v",
            "--manifest",
            "m.json",
            "--output-dir",
            "o",
            "--metrics",
            "motion_amplitude",
            "natural",
            "--judge-endpoint",
            "http://x/v1",
            "--judge-prompt",
            "get_naturalscore.py",
        ]
    )
    config = from_namespace(EvalScoreConfig, args)
    assert config.judge_prompt_file == Path("get_naturalscore.py")
    assert config.metrics == ["motion_amplitude", "natural"] and config.judge_runs == 3
    assert config.videos_dir == Path("v") and config.models_dir is None


def test_a_run_failing_before_any_result_leaves_no_output_folder(eval_case):
    root, videos, manifest = eval_case

    def broken_scorer(sample):
        raise RuntimeError("CUDA out of memory")

    config = EvalScoreConfig(videos, manifest, root / "out", metrics=["motion_amplitude"])
    with pytest.raises(RuntimeError, match="out of memory"):
        run_score(config, scorers={"motion_amplitude": broken_scorer})
    assert not (root / "out").exists()
